"""The package format: the one contract between ``spotleash publish`` and what runs on an instance.

A package is a gzip'd tar, byte-for-byte deterministic (same files → same bytes → same sha256):
sorted entries, regular files only, mtime 0, uid/gid 0, empty uname/gname, mode 0o755 for files
executable in the source tree and 0o644 otherwise, gzip header with mtime 0 and no file name.
Members:

- ``manifest.json`` — ``Manifest`` below: ``format`` (1), ``app`` (the validated ``[app]`` table of
  ``spotleash.toml``), ``files`` (every other member's archive path → its sha256), ``wheels`` (file
  names under ``wheels/``), ``requirements`` (what to install), ``python`` ("3.11"), ``platform``.
- ``app/…`` — the app tree (``[app].dir``), after ignore rules.
- ``wheels/*.whl`` — spotleash's own wheel and every wheel that ``spotleash[instance]`` plus the app's
  requirements resolve to for linux x86_64 CPython 3.11.

In Cloud Storage: ``packages/<sha256>.tar.gz`` (content-addressed, written once) and
``latest-<channel>.txt`` (the pointer; its text is the sha256 and a newline).

On the instance: verify the archive's sha256 against the one the launch pinned (``verify_archive``),
extract it into a fresh directory (``extract_archive``), create a venv and install ``requirements`` into
it offline from ``wheels/``, then start each component with ``cwd=<root>/app``, the venv's ``bin`` first
on ``PATH``, the component's ``env`` and ``PORT=<port>``. The venv and the install are defined once, in
``spotleash.instance_agent.bootstrap`` (``Installer``): it runs on a fresh instance's system python3
before anything is installed, so it keeps to the standard library and this module (pydantic) cannot be
its source.

The functions above the models use the standard library only, so the instance's bootstrap (which runs
before any wheel is installed) can copy them verbatim.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from spotleash.errors import BadInput

FORMAT_VERSION: Literal[1] = 1
PYTHON_VERSION = "3.11"
PLATFORM = "manylinux_2_28_x86_64"  # glibc 2.28+: Debian 12 (GCE image) and Ubuntu 22.04 (VAST images) are newer
MANIFEST_NAME = "manifest.json"
APP_PREFIX = "app/"
WHEELS_PREFIX = "wheels/"
PACKAGES_PREFIX = "packages/"
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
CHANNEL_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_CHUNK = 1 << 20


class PackageError(BadInput):
    """An archive that must not be run: wrong hash, unsafe member, manifest that does not match."""


# --------------------------------------------------------------------------- object names


def package_object(sha256: str) -> str:
    """``packages/<sha256>.tar.gz``: the content-addressed name of one archive in the bucket."""
    if not SHA256_RE.match(sha256):
        raise PackageError(f"not a sha256 (64 lowercase hex digits): {sha256!r}")
    return f"{PACKAGES_PREFIX}{sha256}.tar.gz"


def pointer_object(channel: str) -> str:
    """``latest-<channel>.txt``: the pointer a publish moves and a launch reads."""
    if not CHANNEL_RE.match(channel):
        raise PackageError(f"channel {channel!r} must match {CHANNEL_RE.pattern}")
    return f"latest-{channel}.txt"


def pointer_text(sha256: str) -> str:
    package_object(sha256)  # validates
    return sha256 + "\n"


def parse_pointer(text: str | bytes) -> str:
    """The sha256 a pointer names; ``PackageError`` when its text is anything else."""
    s = (text.decode("utf-8", "replace") if isinstance(text, bytes) else text).strip()
    if not SHA256_RE.match(s):
        raise PackageError(f"pointer does not name a package (expected a sha256, got {s[:80]!r})")
    return s


# --------------------------------------------------------------------------- hashing, writing, verifying


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _check_member_name(name: str) -> None:
    p = PurePosixPath(name)
    if not name or p.is_absolute() or ".." in p.parts or "\\" in name or name != p.as_posix():
        raise PackageError(f"unsafe path in package: {name!r}")


def write_archive(out: Path, members: Mapping[str, Path | bytes], executable: frozenset[str] = frozenset()) -> str:
    """Write ``members`` (archive path → source file or bytes) deterministically; return the sha256.

    Paths in ``executable`` get mode 0o755, every other file 0o644.
    """
    raw = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name in sorted(members):
                _check_member_name(name)
                src = members[name]
                data = src if isinstance(src, bytes) else src.read_bytes()
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mtime = 0
                info.mode = 0o755 if name in executable else 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.type = tarfile.REGTYPE
                tar.addfile(info, io.BytesIO(data))
    out.write_bytes(raw.getvalue())
    return hashlib.sha256(raw.getvalue()).hexdigest()


def _read_verified(path: Path) -> tuple[dict[str, Any], list[str]]:
    """Open the archive, check every member is a safe regular file and matches the manifest."""
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            hashes: dict[str, str] = {}
            manifest_bytes: bytes | None = None
            names: list[str] = []
            for m in tar:
                _check_member_name(m.name)
                if not m.isreg():
                    raise PackageError(f"package member {m.name!r} is not a regular file")
                f = tar.extractfile(m)
                if f is None:
                    raise PackageError(f"package member {m.name!r} cannot be read")
                data = f.read()
                if m.name == MANIFEST_NAME:
                    manifest_bytes = data
                else:
                    hashes[m.name] = hashlib.sha256(data).hexdigest()
                    names.append(m.name)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise PackageError(f"{path} is not a readable package archive: {e}") from e
    if manifest_bytes is None:
        raise PackageError(f"{path} has no {MANIFEST_NAME}")
    try:
        manifest = json.loads(manifest_bytes)
    except ValueError as e:
        raise PackageError(f"{MANIFEST_NAME} is not JSON: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
        raise PackageError(f"{MANIFEST_NAME}: unsupported format (expected {FORMAT_VERSION})")
    listed = manifest.get("files")
    if listed != hashes:
        missing = sorted(set(listed or {}) - set(hashes))
        extra = sorted(set(hashes) - set(listed or {}))
        changed = sorted(k for k in hashes if isinstance(listed, dict) and k in listed and listed[k] != hashes[k])
        raise PackageError(
            f"package content does not match its manifest (missing {missing[:5]}, unlisted {extra[:5]}, "
            f"changed {changed[:5]})"
        )
    return manifest, names


def verify_archive(path: Path, expected_sha256: str) -> dict[str, Any]:
    """Check the archive's sha256, then every member against the manifest; return the manifest (as JSON).

    Raises ``PackageError`` on any mismatch: an unverified archive is never extracted or run.
    """
    got = sha256_file(path)
    if got != expected_sha256:
        raise PackageError(f"package sha256 mismatch: expected {expected_sha256}, got {got} ({path})")
    manifest, _ = _read_verified(path)
    return manifest


def extract_archive(path: Path, dest: Path) -> None:
    """Extract a verified archive into the empty or missing directory ``dest`` (data filter: no links,
    no absolute paths, no escapes)."""
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise PackageError(f"extract target {dest} is not empty")
    with tarfile.open(path, mode="r:gz") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
            return
        # Python before 3.11.4 (Debian 12's 3.11.2) has no extraction filters: the same refusals by hand
        root = dest.resolve()
        for member in tar.getmembers():
            target = (root / member.name).resolve()
            if not (member.isfile() or member.isdir()) or member.name.startswith("/") \
                    or not target.is_relative_to(root):
                raise PackageError(f"archive member {member.name!r} is not a plain file or folder inside the package")
        tar.extractall(dest)  # every member checked above


# --------------------------------------------------------------------------- spotleash.toml: the app spec

_NAME = r"^[a-z][a-z0-9_-]{0,39}$"


# Whether the agent may move a component off the user's machine (spotleash.decide.placement):
# default: when memory runs short; keep: a remote copy may serve it but the local copy keeps running
# (it frees nothing, so memory relief never picks it); never: it stays on the user's machine.
Offload = Literal["default", "keep", "never"]


class ComponentSpec(BaseModel):
    """One ``[[app.components]]`` entry: a process the instance starts and health-checks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_NAME, description="component name (what a demand names)")
    command: list[str] = Field(min_length=1, description="argv, run with cwd=<package>/app, venv bin on PATH")
    port: int = Field(ge=1024, le=65535, description="TCP port the component listens on (also given as PORT)")
    health_path: str = Field("/healthz", pattern=r"^/", description="HTTP path answering 200 when healthy")
    ram_gb: float = Field(4.0, gt=0, le=1024, description="RAM the component needs: sizes its instance; placement "
                          "weighs it by this until its local copy's footprint is measured")
    gpu: bool = Field(False, description="needs a GPU (a demand naming it goes to VAST)")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment of the process")
    local_url: str | None = Field(None, description="URL of the copy running on the user's machine")
    local_copy: Literal["agent", "user"] = Field(
        "agent", description="who runs the copy at local_url: the agent (`spotleash agent` starts it from command "
                             "and env, with PORT the local_url's port) or the user (the agent only routes to it)")
    route_port: int | None = Field(
        None, ge=1024, le=65535,
        description="stable loopback port of the router for this component: the app talks to it and the "
                    "router sends each request to the local copy or a remote one (unset: not routed)")
    state_paths: list[str] = Field(default_factory=list, description="paths (relative to app) kept across moves")
    start_timeout_s: float = Field(300.0, gt=0, description="healthy by this long after start, or the launch fails")
    offload: Offload = Field(
        "default", description='when memory runs short: "default" may move it (heaviest first), "keep" also '
                               'serves it remotely but its local copy keeps running (frees nothing, so memory '
                               'relief never picks it), "never" stays on this machine')

    @field_validator("command")
    @classmethod
    def _argv(cls, v: list[str]) -> list[str]:
        if any(not a for a in v):
            raise ValueError("argv entries must be non-empty strings")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [k for k in v if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k)]
        if bad:
            raise ValueError(f"not valid environment variable names: {bad}")
        return v

    @field_validator("local_url")
    @classmethod
    def _local_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            parts = urlsplit(v)
            parts.port  # noqa: B018 - raises on a port that is not a number or out of range
        except ValueError as e:
            raise ValueError(f"not a URL with a valid port: {e}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL such as http://127.0.0.1:8101")
        return v

    @property
    def local_port(self) -> int | None:
        """The port of ``local_url`` (its scheme's default when it names none)."""
        if self.local_url is None:
            return None
        parts = urlsplit(self.local_url)
        return parts.port or (443 if parts.scheme == "https" else 80)


ARTIFACT_ENV_PREFIX = "SPOTLEASH_ARTIFACT_"
_ARTIFACT_NAME = r"^[a-z][a-z0-9_]{0,39}$"  # upper-cased, it ends an environment variable's name


def artifact_env_name(name: str) -> str:
    """``SPOTLEASH_ARTIFACT_<NAME>``: the variable that names an artifact's local path in every component."""
    return ARTIFACT_ENV_PREFIX + name.upper()


class ArtifactSpec(BaseModel):
    """One ``[[app.artifacts]]`` entry: a file or directory (model weights, typically) published as blobs
    beside the package, not inside the app blob, and fetched on the instance beside the install."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_ARTIFACT_NAME, description="artifact name: lower-case letters, digits and _; "
                      "components see its local path in SPOTLEASH_ARTIFACT_<NAME>")
    path: str = Field(min_length=1, description="a file or directory on this machine: absolute, ~/..., or "
                      "relative to spotleash.toml; inside or outside the app tree")


def requirement_name(requirement: str) -> str:
    """The normalised distribution name of a PEP 508 requirement (``Torch_X>=2`` → ``torch-x``)."""
    m = re.match(r"\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)", requirement)
    if not m:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", m.group(1)).lower()


class AppSpec(BaseModel):
    """The ``[app]`` table of ``spotleash.toml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_NAME, description="app name")
    dir: str = Field(".", description="app directory, relative to spotleash.toml")
    requirements: list[str] = Field(default_factory=list, description="PEP 508 requirements the app needs")
    include: list[str] = Field(
        default_factory=list, description="files (relative to dir) packaged although they look like secrets"
    )
    exclude: list[str] = Field(default_factory=list, description="extra gitignore-style patterns to leave out")
    components: list[ComponentSpec] = Field(min_length=1, description="the components")
    state_paths: list[str] = Field(
        default_factory=list, max_length=16,
        description="absolute directories an instance snapshots and restores (unset: /workspace on VAST, none on GCE)",
    )
    artifacts: list[ArtifactSpec] = Field(
        default_factory=list, description="files or directories (model weights) published as blobs and fetched "
                                          "on the instance; each component sees SPOTLEASH_ARTIFACT_<NAME>")
    image_provides: list[str] = Field(
        default_factory=list, description="requirements the instance image already has (torch>=2.4): not shipped; "
                                          "the venv sees the image's packages and the install checks each one")

    @field_validator("image_provides")
    @classmethod
    def _provides(cls, v: list[str]) -> list[str]:
        for r in v:
            if not re.fullmatch(r"\s*[A-Za-z0-9][A-Za-z0-9._-]*\s*(\[[^\]]*\])?\s*([<>=!~][^;@]*)?(;.*)?", r):
                raise ValueError(f"{r!r} is not a requirement such as \"torch>=2.4\" (no URLs)")
        return v

    @model_validator(mode="after")
    def _unique(self) -> AppSpec:
        seen_artifacts: set[str] = set()
        for a in self.artifacts:
            if a.name in seen_artifacts:
                raise ValueError(f"two artifacts are named {a.name!r}: each needs its own name "
                                 f"(its variable is {artifact_env_name(a.name)})")
            seen_artifacts.add(a.name)
        provided = [requirement_name(r) for r in self.image_provides]
        if len(set(provided)) != len(provided):
            raise ValueError(f"image_provides names a package twice: {self.image_provides}")
        for p in self.state_paths:
            if not p.startswith("/") or ".." in p.split("/"):
                raise ValueError(f"state_paths: {p!r} must be an absolute path without '..'")
        for attr in ("name", "port", "route_port"):
            seen: set[object] = set()
            for c in self.components:
                v = getattr(c, attr)
                if v in seen:
                    raise ValueError(f"two components share the {attr} {v!r}")
                if v is not None:
                    seen.add(v)
        # The router listens on route_port on the user's machine, where the local copies already listen.
        taken = {c.port: f"{c.name}.port" for c in self.components}
        taken |= {c.local_port: f"{c.name}.local_url" for c in self.components if c.local_port is not None}
        for c in self.components:
            if c.route_port is not None and c.route_port in taken:
                raise ValueError(f"{c.name}.route_port {c.route_port} is also {taken[c.route_port]}: the router "
                                 "needs a port of its own, the app then talks to it instead")
        return self

    def component(self, name: str) -> ComponentSpec:
        for c in self.components:
            if c.name == name:
                return c
        raise KeyError(name)


class Manifest(BaseModel):
    """``manifest.json`` as a model (publish writes it; the instance agent may read it with this)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal[1] = FORMAT_VERSION
    app: AppSpec
    files: dict[str, str]
    wheels: list[str]
    requirements: list[str]
    python: str = PYTHON_VERSION
    platform: str = PLATFORM

    def to_bytes(self) -> bytes:
        return (json.dumps(self.model_dump(mode="json"), sort_keys=True, indent=1) + "\n").encode()


def build_package(
    out: Path,
    app: AppSpec,
    app_files: Mapping[str, Path],
    wheels: Sequence[Path],
    requirements: Sequence[str],
    executable: frozenset[str] = frozenset(),
) -> tuple[str, Manifest]:
    """Write the package (``app_files``: path relative to the app dir → source) and return (sha256, manifest)."""
    members: dict[str, Path | bytes] = {APP_PREFIX + rel: src for rel, src in app_files.items()}
    members.update({WHEELS_PREFIX + w.name: w for w in wheels})
    manifest = Manifest(
        app=app,
        files={name: (sha256_file(src) if isinstance(src, Path) else hashlib.sha256(src).hexdigest())
               for name, src in sorted(members.items())},
        wheels=sorted(w.name for w in wheels),
        requirements=list(requirements),
    )
    members[MANIFEST_NAME] = manifest.to_bytes()
    sha = write_archive(out, members, frozenset(APP_PREFIX + e for e in executable))
    return sha, manifest


# --------------------------------------------------------------------------- layered packages (format 2)
#
# A layered package is a manifest of content-addressed blobs. In Cloud Storage:
#   blobs/<sha256>            one wheel, the app tree (a deterministic tar.gz), or uv's own wheel
#   packages/<sha256>.json    the manifest (its sha256 is what the pointer names and the launch pins)
# Publish writes every blob first, then the manifest, then moves the pointer: a reader that finds a
# manifest finds every blob it names (until a GC collects blobs no kept manifest names).

LAYERED_FORMAT: Literal[2] = 2
BLOBS_PREFIX = "blobs/"
# tool: uv's wheel (the instance installs with it; not installed); artifact: one file of an [[app.artifacts]]
BlobKind = Literal["app", "wheel", "tool", "artifact"]
ArtifactKind = Literal["file", "dir"]


def blob_object(sha256: str) -> str:
    """``blobs/<sha256>``: where one blob lives in the bucket."""
    if not SHA256_RE.match(sha256):
        raise PackageError(f"not a sha256 (64 lowercase hex digits): {sha256!r}")
    return f"{BLOBS_PREFIX}{sha256}"


def manifest_object(sha256: str) -> str:
    """``packages/<sha256>.json``: the content-addressed name of one layered manifest."""
    package_object(sha256)  # validates
    return f"{PACKAGES_PREFIX}{sha256}.json"


class Blob(BaseModel):
    """One blob a manifest names: its content address, its size, what it is and the file name it takes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: str = Field(pattern=SHA256_RE.pattern)
    size: int = Field(ge=0)
    kind: BlobKind
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,200}$")  # a wheel's file name; "app.tar.gz"; the artifact's
    # name (kind "artifact"): the file's path inside the artifact (POSIX, relative), its base name for a file artifact
    path: str | None = None

    @model_validator(mode="after")
    def _artifact_path(self) -> Blob:
        if (self.kind == "artifact") != (self.path is not None):
            raise ValueError("an artifact blob, and only one, names its path inside the artifact")
        if self.path is not None:
            try:
                _check_member_name(self.path)
            except PackageError as e:
                raise ValueError(str(e)) from None
        return self


class LayeredManifest(BaseModel):
    """``packages/<sha256>.json``: what an instance needs, each part named by its sha256."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal[2] = LAYERED_FORMAT
    app: AppSpec
    requirements: list[str]
    # installed after ``requirements``, without their dependencies: spotleash itself, whose core dependencies
    # are the control plane's (``requirements`` carries its ``instance`` extra's list instead)
    no_deps: list[str] = Field(default_factory=list)
    blobs: list[Blob] = Field(min_length=1)
    # every [[app.artifacts]] name → whether it is one file or a directory (its files are the "artifact" blobs)
    artifacts: dict[str, ArtifactKind] = Field(default_factory=dict)
    python: str = PYTHON_VERSION
    platform: str = PLATFORM

    @model_validator(mode="after")
    def _one_app(self) -> LayeredManifest:
        if sum(1 for b in self.blobs if b.kind == "app") != 1:
            raise ValueError("a layered manifest names exactly one app blob")
        names = [(b.name, b.path) for b in self.blobs]
        if len(set(names)) != len(names):
            raise ValueError("two blobs share a file name")
        for b in self.blobs:
            if b.kind == "artifact" and b.name not in self.artifacts:
                raise ValueError(f"blob of undeclared artifact {b.name!r}")
        for name, kind in self.artifacts.items():
            files = [b for b in self.blobs if b.kind == "artifact" and b.name == name]
            if kind == "file" and (len(files) != 1 or "/" in (files[0].path or "/")):
                raise ValueError(f"file artifact {name!r} must name exactly one blob, by its base name")
        return self

    def artifact_blobs(self, name: str) -> list[Blob]:
        return [b for b in self.blobs if b.kind == "artifact" and b.name == name]

    def to_bytes(self) -> bytes:
        """Canonical bytes (sorted keys, blobs sorted by name): same content → same sha256."""
        data = self.model_dump(mode="json")
        data["blobs"] = sorted(data["blobs"], key=lambda b: (b["kind"], b["name"], b["path"] or ""))
        return (json.dumps(data, sort_keys=True, indent=1) + "\n").encode()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @property
    def total_bytes(self) -> int:
        return sum(b.size for b in self.blobs)


def parse_layered(data: bytes, expected_sha256: str | None = None) -> LayeredManifest:
    """A manifest from its bytes, its sha256 checked first when given; ``PackageError`` otherwise."""
    if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise PackageError(f"manifest sha256 is {hashlib.sha256(data).hexdigest()}, expected {expected_sha256}")
    try:
        return LayeredManifest.model_validate_json(data)
    except ValueError as e:
        raise PackageError(f"not a layered package manifest: {str(e)[:300]}") from e


def missing_blobs(manifest: LayeredManifest, present: Mapping[str, int | None]) -> list[Blob]:
    """The blobs to upload: those the bucket lacks (``present``: sha256 → size there, None when absent).

    A blob there with another size is a foreign object under a content address: ``PackageError``
    (never overwritten, never named by a new manifest)."""
    todo: list[Blob] = []
    seen: set[str] = set()
    for b in manifest.blobs:
        if b.sha256 in seen:
            continue
        seen.add(b.sha256)
        got = present.get(b.sha256)
        if got is None:
            todo.append(b)
        elif got != b.size:
            raise PackageError(f"{blob_object(b.sha256)} exists with {got} bytes, not {b.size}: the bucket holds a "
                               "foreign object under a content address; delete it")
    return todo
