"""spotleash's own wheel for the instance: the very version this machine runs.

From a source tree (a clone, ``uv sync``) it is built, as always. From an installed distribution
(``pip install spotleash[cli]``, ``uv tool install``) it is rebuilt from the installed files: each file
the wheel carried is read back, its sha256 checked against the distribution's RECORD, and packed again.

Why rebuild rather than fetch the same version from the package index: an unreleased version (a
fork, a pre-release built locally, anything ``uv build`` made) is on no index, a publish should not
need the index to reach the instance's copy of the code it is already running, and the RECORD check
proves the bytes are the ones that were installed — an edited install is refused rather than shipped.
The rebuilt wheel is deterministic (sorted entries, fixed timestamps): the same install → the same
bytes → the same package sha256 on a re-publish.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import os
import shutil
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path, PurePosixPath

import spotleash
from spotleash.packaging.wheels import WheelError, run_tool

DIST_NAME = "spotleash"
# what an installer adds to a .dist-info beside what the wheel carried (PEP 376/610/627, uv's cache key)
_INSTALLER_FILES = frozenset({"INSTALLER", "REQUESTED", "direct_url.json", "uv_cache.json", "RECORD"})
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def source_root() -> Path | None:
    """The spotleash source tree this code runs from (its pyproject.toml), or None for an installed copy."""
    root = Path(spotleash.__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and 'name = "spotleash"' in pyproject.read_text():
        return root
    return None


def own_wheel(dest: Path) -> Path:
    """spotleash's wheel in ``dest``: built from the source tree, else rebuilt from the installed files."""
    dest.mkdir(parents=True, exist_ok=True)
    root = source_root()
    return build_from_source(root, dest) if root is not None else rebuild_installed(dest)


KEPT_BUILDS = 16  # built wheels kept under dest/by-source/ (each ~0.5 MB): a shared cache serves several checkouts


def wheel_sources(root: Path) -> list[Path]:
    """Every file the wheel is built from, as pyproject.toml names them (not a second list to keep in step):
    pyproject.toml, its readme and license files, the wheel target's packages and force-included files.
    Compiled files are left out (importing the code rewrites them; the build ignores them)."""
    project = tomllib.loads((root / "pyproject.toml").read_text())
    target = project.get("tool", {}).get("hatch", {}).get("build", {}).get("targets", {}).get("wheel", {})
    meta = project["project"]
    named = ["pyproject.toml", *([meta["readme"]] if isinstance(meta.get("readme"), str) else []),
             *meta.get("license-files", []), *target.get("force-include", {})]
    files = {root / n for n in named}
    for package in target.get("packages", []):
        files |= {p for p in (root / package).rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    return sorted(files)


def source_digest(root: Path) -> str:
    """sha256 over the wheel's sources (each file's path and bytes): same digest → the same wheel, since
    hatchling builds are reproducible."""
    h = hashlib.sha256()
    for f in wheel_sources(root):
        data = f.read_bytes()
        h.update(f"{f.relative_to(root).as_posix()}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def build_from_source(root: Path, dest: Path) -> Path:
    """``uv build`` (or ``pip wheel``) of ``root``, once per content of its sources: a republish of an unchanged
    spotleash reuses the wheel built before (``dest/by-source/<digest>/``; building took ~0.9 s of a ~1.8 s
    one-line republish)."""
    digest = source_digest(root)
    cached_dir = dest / "by-source" / digest[:32]
    cached = sorted(cached_dir.glob("spotleash-*.whl"))
    if len(cached) == 1:
        os.utime(cached_dir)  # recently used: kept by the pruning below
        return cached[0]
    built = _build(root, dest)
    cached_dir.mkdir(parents=True, exist_ok=True)
    out = cached_dir / built.name
    os.replace(built, out)
    _prune(dest / "by-source")
    return out


def _prune(by_source: Path) -> None:
    dirs = sorted((d for d in by_source.iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime, reverse=True)
    for d in dirs[KEPT_BUILDS:]:
        shutil.rmtree(d, ignore_errors=True)


def _build(root: Path, dest: Path) -> Path:
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        uv = os.environ.get("UV") or shutil.which("uv")
        if uv:
            argv = [uv, "build", "--wheel", "--quiet", "--out-dir", tmp, str(root)]
        else:
            argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", tmp, str(root)]
        run_tool(argv, f"building spotleash's wheel from {root}")
        built = sorted(Path(tmp).glob("spotleash-*.whl"))
        if len(built) != 1:
            raise WheelError(f"building spotleash's wheel produced {[p.name for p in built]}")
        out = dest / built[0].name
        os.replace(built[0], out)
    return out


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _carried(rel: PurePosixPath, dist_info: str) -> bool:
    """Whether an installed path was in the wheel: not a script outside site-packages, not a compiled
    file, not what the installer added to the .dist-info."""
    if rel.parts[0] == ".." or "__pycache__" in rel.parts or rel.suffix == ".pyc":
        return False
    return not (rel.parts[0] == dist_info and len(rel.parts) == 2 and rel.name in _INSTALLER_FILES)


def rebuild_installed(dest: Path, dist: importlib.metadata.Distribution | None = None) -> Path:
    """The installed distribution's files, checked against its RECORD, packed as a wheel in ``dest``."""
    try:
        dist = dist or importlib.metadata.distribution(DIST_NAME)
    except importlib.metadata.PackageNotFoundError as e:
        raise WheelError("spotleash is neither a source tree nor an installed distribution here: "
                            "install it with `pip install 'spotleash[cli]'`") from e
    version = dist.version
    reinstall = f"reinstall it with `pip install --force-reinstall 'spotleash[cli]=={version}'`"
    record = dist.read_text("RECORD")
    wheel_meta = dist.read_text("WHEEL")
    if not record or not wheel_meta:
        raise WheelError(f"the installed spotleash {version} has no RECORD or WHEEL file: {reinstall}")
    tags = [ln.split(":", 1)[1].strip() for ln in wheel_meta.splitlines() if ln.startswith("Tag:")]
    if not tags:
        raise WheelError(f"the installed spotleash {version}'s WHEEL file names no tag: {reinstall}")
    name = f"spotleash-{version}-{tags[0]}.whl"
    files = dist.files or []
    dist_info = next((f.parts[0] for f in files if f.parts[0].endswith(".dist-info")), f"spotleash-{version}.dist-info")
    entries: dict[str, bytes] = {}
    for f in files:
        rel = PurePosixPath(str(f))
        if not _carried(rel, dist_info):
            continue
        if f.hash is None:
            raise WheelError(f"the installed spotleash's RECORD lists {rel} without a hash, so it cannot be "
                                f"checked: {reinstall}")
        path = Path(str(f.locate()))
        try:
            data = path.read_bytes()
        except FileNotFoundError as e:
            raise WheelError(f"the installed spotleash is missing {path}: {reinstall}") from e
        if _record_hash(data) != f"{f.hash.mode}={f.hash.value}":
            raise WheelError(f"{path} differs from the installed spotleash's RECORD (changed after install): "
                                f"{reinstall}")
        entries[str(rel)] = data
    record_name = f"{dist_info}/RECORD"
    lines = [f"{n},{_record_hash(d)},{len(d)}" for n, d in sorted(entries.items())] + [f"{record_name},,"]
    entries[record_name] = ("\n".join(lines) + "\n").encode()
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / name
    tmp = dest / f".{name}.tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        # the .dist-info last, RECORD at the very end, as the wheel spec recommends
        for n in sorted(entries, key=lambda n: (n.startswith(dist_info + "/"), n == record_name, n)):
            info = zipfile.ZipInfo(n, date_time=_ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, entries[n])
    os.replace(tmp, out)
    return out
