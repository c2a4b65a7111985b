"""Bring a fresh instance from nothing to a verified, installed package — Python standard library only.

On a new VM or VAST box nothing of spotleash is installed yet, so this one file runs on the system
``python3`` (the GCE startup script and the VAST onstart embed its source text):

    python3 bootstrap.py --provider gce|vast --work-dir DIR

1. read the instance agent's config (GCE: instance metadata ``spotleash-config`` / ``spotleash-token``;
   VAST: ``$SPOTLEASH_AGENT_CONFIG`` / ``$SPOTLEASH_HEARTBEAT_TOKEN``);
2. fetch ``package_sha256`` — the archive the launch pinned (so a publish during a launch cannot mix
   versions) — from Cloud Storage: the JSON API media download with the VM service account's token
   from the metadata server (GCE), the same request against ``STORAGE_EMULATOR_HOST`` (local stack),
   or ``package_url``, a V4 signed URL the launcher signs for that one object (VAST has no Google
   identity; the URL is a bearer secret, never logged). Transient errors (connection, timeout,
   408/429/5xx) are retried with backoff; the bytes are hashed as they stream and kept only when the
   sha256 is the pinned one;
3. verify every member against ``manifest.json`` (regular files with safe relative paths only) —
   before anything is extracted: an unverified archive is never extracted or run;
4. extract into a fresh directory (checking each member again as it is written), create a venv,
   ``pip install --no-index --no-compile --find-links wheels/`` (``Installer``: with this interpreter's
   own pip when it is 22.3+, into a venv made without pip; otherwise with the venv's ensurepip'd pip);
5. exec ``<venv>/bin/python -m spotleash.instance_agent --package-root <root>``, which starts,
   probes and reports the components.

A layered package (format 2, ``packages/<sha256>.json``) is a manifest of blobs fetched in parallel into a
cache: the app tree, each wheel, uv's wheel, and each file of an ``[[app.artifacts]]`` entry (laid out under
``<root>/artifacts/<name>``; the agent names it to the components in ``SPOTLEASH_ARTIFACT_<NAME>``).
``[app] image_provides`` requirements are not in the package: the venv sees the image's packages and each is
checked there (``image_lacks_requirement`` when the image lacks it).

While it works it beats (every component ``starting``), so the reaper does not take a box that is
busy installing; when it fails it beats once more with the failure (``package_missing``,
``package_forbidden``, ``package_unavailable``, ``package_unverified``, ``package_install_failed``,
``image_lacks_requirement``)
and the control plane deletes the instance with that reason.

A config that pins no package (the control plane has no package bucket) means heartbeats only: the
bootstrap then execs ``python3 -m spotleash.instance_agent`` if this interpreter has spotleash (an
image built with it), and otherwise says so and exits 2.

The instance agent uses the same functions when it is started without ``--package-root``. Names
shared with the rest of spotleash (config keys, the Heartbeat's shape, the archive layout) are
checked against their one definition by the unit tests.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import http.client
import importlib
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, Protocol

CONFIG_KEY = "spotleash-config"
TOKEN_KEY = "spotleash-token"
CONFIG_ENV = "SPOTLEASH_AGENT_CONFIG"
TOKEN_ENV = "SPOTLEASH_HEARTBEAT_TOKEN"
SECRET_ENV = (CONFIG_ENV, TOKEN_ENV)  # never handed to pip or to the app
EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
GCS_BASE = "https://storage.googleapis.com"
METADATA_HOST_ENV = "GCE_METADATA_HOST"
METADATA_DEFAULT_HOST = "metadata.google.internal"
TOKEN_PATH = "instance/service-accounts/default/token"
MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
CHUNK = 1 << 20
SHA256_LEN = 64
TIMINGS_ENV = "SPOTLEASH_BOOT_TIMINGS"  # JSON {"started_at": ISO time, "fetch_s": …, "install_s": …} for the agent
STARTED_AT = _dt.datetime.now(_dt.UTC)  # when this instance's own software started (the agent's heartbeat says it)


class PackageFailure(Exception):
    """The instance cannot run its package; ``reason`` is the code its heartbeat carries."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


_LOG_LOCK = threading.Lock()


def _log(message: str, **fields: object) -> None:
    """One JSON line on stderr, as the agent's own logs (never a URL query or a token)."""
    entry = {"severity": fields.pop("severity", "INFO"), "logger": "spotleash.instance_agent.bootstrap",
             "message": message, **fields}
    line = json.dumps(entry, default=str) + "\n"
    with _LOG_LOCK:  # blobs are fetched on threads: one whole line each, never two interleaved
        sys.stderr.write(line)
        sys.stderr.flush()


def is_sha256(text: str) -> bool:
    return len(text) == SHA256_LEN and all(c in "0123456789abcdef" for c in text)


# --------------------------------------------------------------------------- where the bytes come from


class Response(Protocol):
    status: int

    def read(self, n: int = -1) -> bytes: ...


Opener = Callable[[urllib.request.Request, float], Any]  # urllib.request.urlopen's shape (a context manager)


def _urlopen(req: urllib.request.Request, timeout: float) -> Any:
    # No proxies from the environment: the metadata server and the emulator are reached directly.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return opener.open(req, timeout=timeout)


class _Kept:
    """A response read from a kept connection (``urlopen``'s shape: a context manager with ``read``, ``status``,
    ``headers``); leaving it gives the connection back, or closes it when the body was not read to its end."""

    def __init__(self, response: http.client.HTTPResponse, release: Callable[[bool], None]) -> None:
        self._r = response
        self._release = release
        self.status = response.status
        self.headers = response.headers

    def read(self, n: int = -1) -> bytes:
        return self._r.read(None if n < 0 else n)

    def __enter__(self) -> _Kept:
        return self

    def __exit__(self, *exc: object) -> None:
        self._release(self._r.isclosed() and not self._r.will_close and exc[0] is None)


class KeepAlive:
    """An ``Opener`` that keeps one HTTP/1.1 connection per thread and host, so fetching 75 blobs costs 8
    connections, not 75 (on a fast link a new TCP + TLS handshake per small wheel was half the fetch's time).

    Same answers as ``_urlopen``: an ``HTTPError`` for a 4xx/5xx, no proxies; a redirect is left to
    ``_urlopen``. A kept connection the server closed while idle is retried once on a new one (a GET)."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: set[http.client.HTTPConnection] = set()

    def _conns(self) -> dict[tuple[str, str], http.client.HTTPConnection]:
        conns: dict[tuple[str, str], http.client.HTTPConnection] | None = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
        return conns

    def _drop(self, key: tuple[str, str], conn: http.client.HTTPConnection) -> None:
        conn.close()
        self._conns().pop(key, None)
        with self._lock:
            self._open.discard(conn)

    def _connection(self, key: tuple[str, str], timeout: float) -> http.client.HTTPConnection:
        conn = self._conns().get(key)
        if conn is None:
            cls = http.client.HTTPSConnection if key[0] == "https" else http.client.HTTPConnection
            conn = self._conns()[key] = cls(key[1], timeout=timeout)
            with self._lock:
                self._open.add(conn)
        elif conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def _send(self, req: urllib.request.Request, key: tuple[str, str], target: str,
              timeout: float) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        headers = dict(req.header_items())
        for attempt in (1, 2):
            conn = self._connection(key, timeout)
            kept = conn.sock is not None
            try:
                conn.request(req.get_method(), target, headers=headers)
                return conn, conn.getresponse()
            except (OSError, http.client.HTTPException):
                self._drop(key, conn)
                if not (kept and attempt == 1):
                    raise
        raise AssertionError("unreachable")

    def __call__(self, req: urllib.request.Request, timeout: float) -> Any:
        url = urllib.parse.urlsplit(req.full_url)
        if url.scheme not in ("http", "https") or not url.netloc:
            return _urlopen(req, timeout)
        key = (url.scheme, url.netloc)
        conn, r = self._send(req, key, (url.path or "/") + (f"?{url.query}" if url.query else ""), timeout)
        if r.status >= 300:
            body = r.read()
            self._drop(key, conn)
            if r.status < 400:
                return _urlopen(req, timeout)
            raise urllib.error.HTTPError(req.full_url, r.status, r.reason, r.headers, io.BytesIO(body))

        def release(reusable: bool) -> None:
            if not reusable:
                self._drop(key, conn)

        return _Kept(r, release)

    def close(self) -> None:
        with self._lock:
            conns, self._open = self._open, set()
        for conn in conns:
            conn.close()


class Source:
    def __init__(self, url: str, token: Callable[[], str] | None = None) -> None:
        self.url = url
        self.token = token  # a fresh bearer token per attempt (they expire)

    @property
    def safe_url(self) -> str:
        """The URL without its query (a signed URL's signature is a secret)."""
        return self.url.split("?", 1)[0]


def parse_gs_uri(uri: str) -> tuple[str, str]:
    parsed = urllib.parse.urlsplit(uri)
    bucket, obj = parsed.netloc, parsed.path.lstrip("/")
    if parsed.scheme != "gs" or not bucket or not obj:
        raise PackageFailure("package_missing", f"package_uri {uri!r} is not gs://<bucket>/<object>")
    return bucket, obj


def media_url(base: str, bucket: str, obj: str) -> str:
    """The JSON API media download URL (as google-cloud-storage builds it)."""
    q = urllib.parse.quote
    return f"{base.rstrip('/')}/download/storage/v1/b/{q(bucket, safe='')}/o/{q(obj, safe='')}?alt=media"


def metadata_get(path: str, env: Mapping[str, str], opener: Opener = _urlopen, timeout: float = 10.0) -> str | None:
    """A metadata server value (None on 404). Raises OSError when the server cannot be reached."""
    host = env.get(METADATA_HOST_ENV) or METADATA_DEFAULT_HOST
    req = urllib.request.Request(f"http://{host}/computeMetadata/v1/{path}", headers={"Metadata-Flavor": "Google"})
    try:
        with opener(req, timeout) as r:
            return bytes(r.read()).decode()
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise OSError(f"metadata server answered {e.code} for {path}") from e


def metadata_token(env: Mapping[str, str], opener: Opener = _urlopen) -> Callable[[], str]:
    def token() -> str:
        raw = metadata_get(TOKEN_PATH, env, opener)
        if raw is None:
            raise PackageFailure("package_forbidden", "the VM has no service account (no token from its metadata "
                                                      "server): it cannot read the package bucket")
        try:
            return str(json.loads(raw)["access_token"])
        except (ValueError, KeyError, TypeError) as e:
            raise OSError(f"unreadable token answer from the metadata server: {e}") from e

    return token


def source_for(package_uri: str, package_url: str, *, env: Mapping[str, str],
               token: Callable[[], str] | None) -> Source:
    if package_url:
        return Source(package_url)
    bucket, obj = parse_gs_uri(package_uri)
    emulator = env.get(EMULATOR_ENV)
    if emulator:  # the VM's token goes along as it would to Cloud Storage (the emulator does not check it)
        return Source(media_url(emulator if "://" in emulator else f"http://{emulator}", bucket, obj), token)
    if token is None:
        raise PackageFailure("package_forbidden", "no credentials for Cloud Storage on this instance "
                                                  "(no metadata server token and no signed package_url)")
    return Source(media_url(GCS_BASE, bucket, obj), token)


# --------------------------------------------------------------------------- download


class _Retry(Exception):
    pass


def _content_length(r: Any) -> int | None:
    headers = getattr(r, "headers", None)
    raw = headers.get("Content-Length") if headers is not None else None
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def _download_once(source: Source, part: Path, opener: Opener, timeout_s: float) -> str:
    h = hashlib.sha256()
    try:
        headers = {"Authorization": f"Bearer {source.token()}"} if source.token else {}
        req = urllib.request.Request(source.url, headers=headers)
        with opener(req, timeout_s) as r, part.open("wb") as f:
            got = 0
            while chunk := r.read(CHUNK):
                h.update(chunk)
                f.write(chunk)
                got += len(chunk)
            # urllib's read(n) ends quietly at a connection closed mid-body: the length says it was cut
            expected = _content_length(r)
            if expected is not None and got != expected:
                raise _Retry(f"body cut short: {got} of {expected} bytes")
    except urllib.error.HTTPError as e:
        if e.code in RETRY_STATUSES:
            raise _Retry(f"HTTP {e.code}") from e
        if e.code == 404:
            raise PackageFailure("package_missing", f"no such package object: {source.safe_url}") from e
        if e.code in (401, 403):
            raise PackageFailure("package_forbidden",
                                 f"HTTP {e.code} reading {source.safe_url}: the instance may not read it") from e
        raise PackageFailure("package_unavailable", f"HTTP {e.code} reading {source.safe_url}") from e
    except (OSError, urllib.error.URLError, http.client.HTTPException) as e:  # URLError is an OSError; said
        # for the reader. HTTPException: IncompleteRead, a body cut mid-download (the store went away).
        raise _Retry(f"{type(e).__name__}: {e}") from e
    return h.hexdigest()


def download(
    source: Source,
    dest: Path,
    expected_sha256: str,
    *,
    opener: Opener = _urlopen,
    retry_budget_s: float = 300.0,
    timeout_s: float = 60.0,
    sleep: Callable[[float], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    what: str = "package",
    stop: threading.Event | None = None,
) -> int:
    """Download to ``dest`` (via ``dest.part``), keeping it only if its sha256 is ``expected_sha256``; the
    number of attempts it took.

    A 404 on the first attempt is final (``package_missing``). A 404 *after* a transient failure is retried
    within the budget: a store coming back (a restarted Cloud Storage emulator, a bucket being restored)
    answers 404 for a moment before its objects are there again. ``stop`` set: give up at the next retry
    (another blob of the same package failed for good)."""
    part = dest.with_name(dest.name + ".part")
    give_up_at = clock() + retry_budget_s
    pause, attempt = 1.0, 0
    while True:
        attempt += 1
        try:
            got = _download_once(source, part, opener, timeout_s)
        except (_Retry, PackageFailure) as e:
            part.unlink(missing_ok=True)
            if isinstance(e, PackageFailure) and not (e.reason == "package_missing" and attempt > 1):
                raise
            detail = str(e)[:300]
            if clock() + pause > give_up_at:
                if isinstance(e, PackageFailure):
                    raise
                raise PackageFailure("package_unavailable",
                                     f"{source.safe_url} unreachable after {attempt} attempts: {detail}") from e
            if stop is not None and stop.is_set():
                raise PackageFailure("package_unavailable", f"{source.safe_url}: stopped retrying (another "
                                                            f"part of the package failed): {detail}") from e
            _log("package download failed; retrying", severity="WARNING", what=what, attempt=attempt,
                 pause_s=pause, reason=detail)
            (sleep or time.sleep)(pause)
            pause = min(pause * 2, 30.0)
            continue
        if got != expected_sha256:
            part.unlink(missing_ok=True)
            raise PackageFailure("package_unverified",
                                 f"sha256 of {source.safe_url} is {got}, the launch pinned {expected_sha256} ({what})")
        part.replace(dest)
        _log("package downloaded", what=what, url=source.safe_url, bytes=dest.stat().st_size, attempts=attempt)
        return attempt


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def fetch(source: Source, sha256: str, cache_dir: Path, suffix: str = ".tar.gz", **kw: Any) -> Path:
    """The object named by ``sha256``, checked, in ``cache_dir`` (reused when already there and intact: a
    verified blob is never fetched twice)."""
    if not is_sha256(sha256):
        raise PackageFailure("package_unverified", f"the pinned sha256 {sha256!r} is not a sha256")
    cache_dir.mkdir(parents=True, exist_ok=True)
    dest = cache_dir / f"{sha256}{suffix}"
    if dest.exists():
        if sha256_file(dest) == sha256:
            _log("package found in the cache", path=str(dest))
            return dest
        dest.unlink()  # a damaged copy: fetch it again
    download(source, dest, sha256, **kw)
    return dest


# --------------------------------------------------------------------------- verify, extract


def check_member_name(name: str) -> None:
    p = PurePosixPath(name)
    if not name or p.is_absolute() or ".." in p.parts or "\\" in name or name != p.as_posix():
        raise PackageFailure("package_unverified", f"unsafe path in package: {name!r}")


def _hash_stream(f: IO[bytes]) -> str:
    h = hashlib.sha256()
    while chunk := f.read(CHUNK):
        h.update(chunk)
    return h.hexdigest()


def verify_archive(path: Path, expected_sha256: str) -> dict[str, Any]:
    """The archive's sha256, then every member against ``manifest.json``; returns the manifest.

    Raises ``PackageFailure("package_unverified", …)`` on any mismatch, before anything is extracted.
    """
    got = sha256_file(path)
    if got != expected_sha256:
        raise PackageFailure("package_unverified", f"package sha256 mismatch: expected {expected_sha256}, got {got}")
    hashes: dict[str, str] = {}
    manifest_bytes: bytes | None = None
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            for m in tar:
                check_member_name(m.name)
                if not m.isreg():
                    raise PackageFailure("package_unverified", f"package member {m.name!r} is not a regular file")
                f = tar.extractfile(m)
                if f is None:
                    raise PackageFailure("package_unverified", f"package member {m.name!r} cannot be read")
                if m.name == MANIFEST_NAME:
                    manifest_bytes = f.read(4 * CHUNK + 1)
                else:
                    hashes[m.name] = _hash_stream(f)  # chunked: a 750 MB wheel needs no 750 MB of RAM
    except (tarfile.TarError, OSError, EOFError) as e:
        raise PackageFailure("package_unverified", f"not a readable package archive: {e}") from e
    if manifest_bytes is None:
        raise PackageFailure("package_unverified", f"the archive has no {MANIFEST_NAME}")
    try:
        manifest = json.loads(manifest_bytes)
    except ValueError as e:
        raise PackageFailure("package_unverified", f"{MANIFEST_NAME} is not JSON: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
        raise PackageFailure("package_unverified", f"{MANIFEST_NAME}: unsupported format (expected {FORMAT_VERSION})")
    listed = manifest.get("files")
    if listed != hashes:
        listed = listed if isinstance(listed, dict) else {}
        missing = sorted(set(listed) - set(hashes))
        extra = sorted(set(hashes) - set(listed))
        changed = sorted(k for k in hashes if k in listed and listed[k] != hashes[k])
        raise PackageFailure("package_unverified", f"package content does not match its manifest (missing "
                                                   f"{missing[:5]}, unlisted {extra[:5]}, changed {changed[:5]})")
    return manifest


def extract_archive(path: Path, dest: Path, files: Mapping[str, str]) -> None:
    """Extract a verified archive into the empty directory ``dest``, member by member: each must again be a
    regular file with a safe relative path, and its bytes must hash to ``files[name]`` (the manifest) as
    they are written, so a file changed since it was verified is caught too. Done by hand, not with
    ``extractall(filter="data")``: Debian 12's python3 (3.11.2), which a fresh VM runs this on, has no
    extraction filters."""
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise PackageFailure("package_unverified", f"extract target {dest} is not empty")
    base = dest.resolve()
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            for m, f, target in _safe_files(tar, base, "package"):
                if m.name == MANIFEST_NAME:
                    expected = None
                elif m.name in files:
                    expected = files[m.name]
                else:
                    raise PackageFailure("package_unverified", f"package member {m.name!r} is not in the manifest")
                h = hashlib.sha256()
                with target.open("xb") as out:  # "x": never through a file or link already there
                    while chunk := f.read(CHUNK):
                        h.update(chunk)
                        out.write(chunk)
                if expected is not None and h.hexdigest() != expected:
                    raise PackageFailure("package_unverified", f"package member {m.name!r} changed since it was verified")
                target.chmod(0o755 if m.mode & 0o111 else 0o644)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise PackageFailure("package_unverified", f"cannot extract: {e}") from e


# --------------------------------------------------------------------------- venv + install


PIP_PYTHON_OPTION = (22, 3)  # the pip release that added ``--python``: install into another interpreter
_PIP_PROBE = ("import importlib.metadata as m, importlib.util as u; "
              "print(m.version('pip') if u.find_spec('pip') else '')")


def pip_version_of(python: str, timeout_s: float = 60.0) -> str | None:
    """The version of the pip ``python`` can run (``python -m pip``), or None: none there (Debian's
    python3 without python3-pip), or the probe failed."""
    try:
        done = subprocess.run(  # noqa: S603 - our own fixed argv
            [python, "-c", _PIP_PROBE], stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s,
            env={k: v for k, v in os.environ.items() if k not in SECRET_ENV}, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    version = done.stdout.decode(errors="replace").strip()
    return version if done.returncode == 0 and version else None


def _release(version: str) -> tuple[int, ...]:
    """The leading numbers of a version: "23.0.1" → (23, 0), "22.3b1" → (22, 3), "x" → ()."""
    numbers: list[int] = []
    for piece in version.split(".")[:2]:
        digits = piece[:len(piece) - len(piece.lstrip("0123456789"))]
        if not digits:
            break
        numbers.append(int(digits))
    return tuple(numbers)


def has_python_option(pip_version: str | None) -> bool:
    """Whether a pip of ``pip_version`` (None: no pip) can install into another interpreter's venv."""
    return pip_version is not None and _release(pip_version) >= PIP_PYTHON_OPTION


def venv_command(python: str, venv: Path, *, with_pip: bool, system_site: bool = False) -> list[str]:
    """``python -m venv``: without pip (0.05 s) when another pip installs into it, else with ensurepip (3–4 s);
    ``system_site``: the venv sees the image's packages (``[app] image_provides``)."""
    return [python, "-m", "venv", *([] if with_pip else ["--without-pip"]),
            *(["--system-site-packages"] if system_site else []), str(venv)]


# --------------------------------------------------------------------------- image_provides
#
# ``[app] image_provides = ["torch>=2.4"]``: the image's python must already have these; the package does not
# ship them and the venv sees the image's site-packages. Checked once the venv is made, before anything is
# installed into it: the versions the venv's own python sees (importlib.metadata, in that interpreter), each
# compared with the requirement by ``packaging`` when the bootstrap's python has it, else by
# ``version_satisfies`` (standard library only). Such a package installs with pip, not uv (see ``plan``).

IMAGE_LACKS = "image_lacks_requirement"
_PROVIDED_PROBE = ("import json, sys, importlib.metadata as m\n"
                   "def v(n):\n"
                   "    try:\n"
                   "        return m.version(n)\n"
                   "    except m.PackageNotFoundError:\n"
                   "        return None\n"
                   "print(json.dumps({n: v(n) for n in json.loads(sys.argv[1])}))")
_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*(?:\[[^\]]*\])?\s*([^;]*?)\s*(?:;(.*))?$")
_CLAUSE = re.compile(r"^\s*(===|~=|==|!=|<=|>=|<|>)\s*([A-Za-z0-9.*+!_-]+)\s*$")


def _release_of(version: str) -> tuple[int, ...]:
    """The release numbers of a version, epoch, pre/post/dev and local parts dropped: "2.4.1+cu121" → (2, 4, 1)."""
    v = version.strip().lower().lstrip("v").split("!")[-1].split("+")[0]
    m = re.match(r"\d+(?:\.\d+)*", v)
    return tuple(int(x) for x in m.group(0).split(".")) if m else ()


def _cmp(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = max(len(a), len(b))
    a, b = a + (0,) * (n - len(a)), b + (0,) * (n - len(b))
    return (a > b) - (a < b)


def version_satisfies(version: str, specifier: str) -> bool:
    """``version`` against a PEP 440 specifier (``>=2.4,<3``, ``==2.4.*``, ``~=2.4``) by release numbers only: the
    fallback for an image whose python has no ``packaging`` (pre-releases count as their release)."""
    have = _release_of(version)
    for clause in filter(None, (c.strip() for c in specifier.split(","))):
        m = _CLAUSE.match(clause)
        if not m:
            raise ValueError(f"cannot read the version clause {clause!r}")
        op, want_text = m.groups()
        if op == "===":
            ok = version.strip() == want_text
        elif want_text.endswith(".*"):
            prefix = _release_of(want_text[:-2])
            same = (have + (0,) * len(prefix))[:len(prefix)] == prefix
            ok = same if op == "==" else not same if op == "!=" else False
        else:
            want = _release_of(want_text)
            c = _cmp(have, want)
            ok = {"==": c == 0, "!=": c != 0, "<=": c <= 0, ">=": c >= 0, "<": c < 0, ">": c > 0,
                  "~=": c >= 0 and len(want) > 1 and have[:len(want) - 1] == want[:-1]}[op]
        if not ok:
            return False
    return True


def _parse_requirement(requirement: str) -> tuple[str, Callable[[str], bool], bool]:
    """(distribution name, does a version satisfy it, does it apply here (its environment marker)): by
    ``packaging`` when this python has it, else by hand (a marker is then taken to apply)."""
    try:  # by name, not an import statement: the bootstrap imports the standard library only
        requirements = importlib.import_module("packaging.requirements")
    except ImportError:
        m = _REQUIREMENT.match(requirement)
        if not m:
            raise ValueError(f"not a requirement: {requirement!r}") from None
        name, spec = m.group(1), m.group(2)
        return name, lambda v: version_satisfies(v, spec), True
    try:
        req = requirements.Requirement(requirement)
    except requirements.InvalidRequirement as e:
        raise ValueError(f"not a requirement: {requirement!r}: {e}") from e
    applies = req.marker is None or bool(req.marker.evaluate())
    return req.name, lambda v: req.specifier.contains(v, prereleases=True), applies


def unmet_provided(requirements: list[str], installed: Mapping[str, str | None]) -> list[str]:
    """Which of ``requirements`` (``image_provides``) the image's installed versions do not meet, each with why."""
    out = []
    for r in requirements:
        try:
            name, ok, applies = _parse_requirement(r)
        except ValueError as e:
            out.append(str(e))
            continue
        if not applies:
            continue
        have = installed.get(name)
        if have is None:
            out.append(f"{r} (the image has no {name})")
        elif not ok(have):
            out.append(f"{r} (the image has {name} {have})")
    return out


def probe_installed(python: str, names: list[str], timeout_s: float = 60.0) -> dict[str, str | None]:
    """name → the version ``python`` has installed (None: not there), asked of that interpreter itself."""
    try:
        done = subprocess.run(  # noqa: S603 - our own fixed probe
            [python, "-c", _PROVIDED_PROBE, json.dumps(names)], stdin=subprocess.DEVNULL, capture_output=True,
            timeout=timeout_s, env={k: v for k, v in os.environ.items() if k not in SECRET_ENV}, check=False)
        got = json.loads(done.stdout) if done.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError) as e:
        raise PackageFailure(IMAGE_LACKS, f"cannot ask {python} which packages it has: {e}") from e
    if not isinstance(got, dict):
        tail = done.stderr.decode(errors="replace").strip()[-300:]
        raise PackageFailure(IMAGE_LACKS, f"cannot ask {python} which packages it has: {tail}")
    return {str(k): (str(v) if v is not None else None) for k, v in got.items()}


def check_image_provides(python: str, manifest: Mapping[str, Any]) -> None:
    """``PackageFailure(image_lacks_requirement)`` naming each ``image_provides`` requirement ``python`` (the new
    venv's, made with the image's site packages) lacks."""
    wanted = [str(r) for r in (manifest.get("app") or {}).get("image_provides") or []]
    if not wanted:
        return
    names = []
    for r in wanted:
        m = _REQUIREMENT.match(r)
        names.append(m.group(1) if m else r)
    unmet = unmet_provided(wanted, probe_installed(python, names))
    if unmet:
        raise PackageFailure(IMAGE_LACKS, "the image lacks what [app] image_provides declares: " + "; ".join(unmet)
                             + f" — use an image that has it, or ship it as a requirement instead (asked of {python}, "
                             "which sees the image's packages)")
    _log("the image provides what the package declares", image_provides=wanted, python=python)


def _requirements(manifest: Mapping[str, Any], no_deps: bool) -> list[str]:
    return [str(r) for r in manifest.get("no_deps" if no_deps else "requirements", [])]


def install_command(python: str, root: Path, manifest: Mapping[str, Any], *, pip_of: str | None = None,
                    no_deps: bool = False) -> list[str]:
    """The offline install of an extracted package into the venv whose interpreter is ``python``: with its
    own pip, or with ``pip_of``'s (22.3+, ``--python``), so the venv needs no pip of its own.
    ``--no-compile``: byte-compiling every installed file was ~10 s of a ~13 s install (numpy, Pillow);
    the first imports compile what they import, into the writable venv. ``no_deps``: the manifest's
    ``no_deps`` (spotleash itself) instead of its ``requirements``, without their dependencies."""
    pip = [pip_of, "-m", "pip", "--python", python] if pip_of else [python, "-m", "pip"]
    return [*pip, "install", "--no-index", "--no-compile", *(["--no-deps"] if no_deps else []),
            "--find-links", str(root / "wheels"), *_requirements(manifest, no_deps)]


AGENT_MODULE = "spotleash.instance_agent.__main__"
FRONT_MODULE = "spotleash.instance_agent.front"  # the agent imports it only when its config names a route credential
# the install's steps, each timed (``Installer.steps``; the heartbeat's ``timings`` carry them to the READY audit entry)
INSTALL_STEPS = {
    "assemble_s": "the root laid out from the verified blobs (app blob extracted, wheels linked, uv ready)",
    "venv_s": "the venv made",
    "deps_s": "the requirements installed offline",
    "own_s": "spotleash installed without its core dependencies",
    "warm_s": "the instance agent imported once (its .pyc files written)",
    "app_s": "the app's own requirements installed, beside the agent's import",
}


def warm_command(python: str, manifest: Mapping[str, Any], also: tuple[str, ...] = ()) -> list[str] | None:
    """Import the instance agent once in the new venv, so its modules are compiled before it starts; None when
    the package does not carry spotleash. Why: the install skips byte-compiling (``--no-compile``), and the
    agent is exec'd right after the bootstrap's last beat — compiling its imports there (seconds on a busy
    box, at every start where ``PYTHONDONTWRITEBYTECODE`` is set, as in many images) is a gap without beats
    that a short heartbeat timeout counts as a lost instance. Here the bootstrap still beats. ``also``: modules
    the agent imports only for some configs (``FRONT_MODULE``), when this instance's config is one of them."""
    names = {m.group(1).lower() for r in [*manifest.get("requirements", []), *manifest.get("no_deps", [])]
             if (m := re.match(r"\s*([A-Za-z0-9._-]+)", str(r)))}
    return [python, "-c", f"import {', '.join([AGENT_MODULE, *also])}"] if "spotleash" in names else None


@dataclass(frozen=True)
class InstallPlan:
    path: str  # which way, and why (the install log and the bootstrap's log say it)
    make_venv: list[str]
    install: list[str]
    warm: list[str] | None = None  # see ``warm_command``
    install_no_deps: list[str] | None = None  # the manifest's ``no_deps``, after ``install``
    excludes: tuple[str, ...] | None = None  # ``core_excludes``: written to ``EXCLUDES_FILE`` before ``install``
    # the app's own requirements (``split_requirements``), installed beside the agent's import
    install_beside: list[str] | None = None


Step = tuple[list[str], str, tuple[str, ...], str]  # argv, what it is, environment variables dropped, timing key


class Installer:
    """Verify → extract → venv → offline install; each step a subprocess that ``cancel`` can end."""

    def __init__(self, python: str = sys.executable, timeout_s: float = 900.0,
                 pip_version: Callable[[str], str | None] = pip_version_of, warm_also: tuple[str, ...] = (),
                 leave_rest: bool = False, warm: bool = True) -> None:
        self.python = python
        # the venv's agent imported once to write its .pyc files, for the agent an exec starts from the venv; an
        # agent that installs in its own process (``Workload`` without a bootstrap) runs already: nothing would
        self.warm = warm
        # the bootstrap's, which execs the agent: the app's requirements are left to the agent's process (``REST_FILE``)
        self.leave_rest = leave_rest
        self.warm_also = warm_also  # modules the warm import loads beside the agent's own (``warm_command``)
        self.timeout_s = timeout_s
        self._pip_version = pip_version  # which pip ``python`` has decides how the venv is made
        self._procs: set[subprocess.Popen[bytes]] = set()  # what runs now (two beside each other at most)
        self._lock = threading.Lock()
        self._cancelled = False
        self._beside_failed = False  # a step of ``_run_beside`` failed: no step beside it starts after that
        self.steps: dict[str, float] = {}  # the last install's step → seconds (the heartbeat's timings carry them)

    def _run(self, argv: list[str], step: str, log_path: Path, drop_env: tuple[str, ...] = (),
             key: str | None = None) -> None:
        t0 = time.monotonic()
        try:
            self._run_once(argv, step, log_path, drop_env)
        finally:
            if key is not None:
                took = round(time.monotonic() - t0, 3)
                self.steps[key] = round(self.steps.get(key, 0.0) + took, 3)
                with log_path.open("a") as log:
                    log.write(f"spotleash: {step}: {took:.3f} s\n")

    def _run_once(self, argv: list[str], step: str, log_path: Path, drop_env: tuple[str, ...] = ()) -> None:
        with self._lock:
            if self._cancelled:
                raise PackageFailure("package_install_failed", f"{step}: cancelled")
            if self._beside_failed:
                raise PackageFailure("package_install_failed", f"{step}: not started, a step beside it failed")
            with log_path.open("ab") as out:
                proc = subprocess.Popen(  # noqa: S603 - our own fixed argv
                    argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, process_group=0,
                    env={k: v for k, v in os.environ.items() if k not in SECRET_ENV and k not in drop_env},
                )
            self._procs.add(proc)
        try:
            code = proc.wait(timeout=self.timeout_s)
        except subprocess.TimeoutExpired as e:
            self._kill(proc)
            raise PackageFailure("package_install_failed", f"{step} took longer than {self.timeout_s:g} s") from e
        finally:
            with self._lock:
                self._procs.discard(proc)
        if code != 0:
            tail = " | ".join(log_path.read_text(errors="replace").strip().splitlines()[-4:])
            raise PackageFailure("package_install_failed", f"{step} exited with code {code}: {tail}"[:480])

    def _run_beside(self, steps: list[Step], log_path: Path) -> None:
        """Every step at once; the first that fails ends the others and is the failure."""
        failures: list[PackageFailure] = []
        self._beside_failed = False

        def one(argv: list[str], step: str, drop_env: tuple[str, ...], key: str) -> None:
            try:
                self._run(argv, step, log_path, drop_env, key)
            except PackageFailure as e:
                with self._lock:  # a step whose thread had not started its process yet must not start it
                    failures.append(e)
                    self._beside_failed = True
                    others = [p for p in self._procs if p.poll() is None]
                for p in others:
                    self._kill(p)

        threads = [threading.Thread(target=one, args=s, name=f"install-{s[3]}", daemon=True) for s in steps[1:]]
        for t in threads:
            t.start()
        one(*steps[0])
        for t in threads:
            t.join()
        self._beside_failed = False
        if failures:
            raise failures[0]

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes]) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            procs = list(self._procs)
        for proc in procs:
            if proc.poll() is None:
                self._kill(proc)

    def plan(self, root: Path, manifest: Mapping[str, Any], uv: Path | None = None) -> InstallPlan:
        """How ``root/venv`` gets made and the package installed into it: with ``uv`` when the package ships it
        (and it runs here), else from the pip ``self.python`` has."""
        venv = root / "venv"
        venv_python = str(venv / "bin" / "python")
        site = bool((manifest.get("app") or {}).get("image_provides"))  # the venv sees the image's packages
        own = bool(manifest.get("no_deps"))
        if uv is not None and site:
            # uv does not count a system site package as installed (astral-sh/uv#7358: "we don't really support
            # --system-site-packages"): a wheel depending on torch would want torch from the package. pip does.
            _log("the package relies on the image's packages (image_provides): pip installs, not uv")
            uv = None
        if uv is not None:
            excludes = core_excludes(root / "wheels", manifest) if own else None
            warm = warm_command(venv_python, manifest, self.warm_also)
            if excludes is not None:  # one resolution: spotleash with the rest, its core left out
                agent, app = split_requirements(manifest, front=FRONT_MODULE in self.warm_also)
                if warm is None or not app:
                    agent, app = agent + app, []
                return InstallPlan(
                    f"uv ({uv}) makes the venv and installs offline, spotleash without its core dependencies "
                    f"({len(excludes)} left out) in the same resolution"
                    + (f", the app's {len(app)} requirements beside the agent's import" if app else ""),
                    uv_venv_command(uv, self.python, venv, root, system_site=site),
                    uv_install_command(uv, venv_python, root, manifest, excludes=excludes,
                                       only=[*agent, *_requirements(manifest, True)]),
                    warm, excludes=tuple(excludes),
                    install_beside=uv_install_command(uv, venv_python, root, manifest, excludes=excludes, only=app)
                    if app else None)
            return InstallPlan(f"uv ({uv}) makes the venv and installs offline",
                               uv_venv_command(uv, self.python, venv, root, system_site=site),
                               uv_install_command(uv, venv_python, root, manifest),
                               warm_command(venv_python, manifest, self.warm_also),
                               uv_install_command(uv, venv_python, root, manifest, no_deps=True) if own else None)
        version = self._pip_version(self.python)
        if has_python_option(version):
            return InstallPlan(
                f"the pip {version} of {self.python} installs into a venv made without pip (--python)",
                venv_command(self.python, venv, with_pip=False, system_site=site),
                install_command(venv_python, root, manifest, pip_of=self.python), warm_command(venv_python, manifest, self.warm_also),
                install_command(venv_python, root, manifest, pip_of=self.python, no_deps=True) if own else None)
        needs = ".".join(map(str, PIP_PYTHON_OPTION))
        return InstallPlan(
            f"{self.python} has {f'pip {version}' if version else 'no pip'} (--python needs pip {needs}+): "
            "the venv gets a pip of its own (ensurepip), which installs",
            venv_command(self.python, venv, with_pip=True, system_site=site), install_command(venv_python, root, manifest),
            warm_command(venv_python, manifest, self.warm_also), install_command(venv_python, root, manifest, no_deps=True) if own else None)

    def install(self, root: Path, manifest: Mapping[str, Any], uv: Path | None = None) -> None:
        """venv + offline install of the extracted package in ``root`` (its wheels in ``root/wheels``)."""
        log_path = root / "install.log"
        plan = self.plan(root, manifest, uv)
        uv = uv if plan.path.startswith("uv") else None
        with log_path.open("a") as log:
            log.write(f"spotleash: {plan.path}\n")
        _log("installing the package", path=plan.path)
        self.steps = {}
        self._run(plan.make_venv, "uv venv" if uv else "python -m venv", log_path, key="venv_s")
        # what the new venv sees of the image (a venv made from a venv sees its base's packages, not the venv's):
        # asked of the venv's own python, before the install, so a lacking image is a clear reason, not a pip error
        check_image_provides(str(root / "venv" / "bin" / "python"), manifest)
        if plan.excludes:
            (root / EXCLUDES_FILE).write_text("".join(f"{n}\n" for n in plan.excludes))
        self._run(plan.install, "uv pip install (offline)" if uv else "pip install (offline)", log_path, key="deps_s")
        if plan.install_no_deps is not None:  # after its dependencies: pip then checks nothing it left out
            self._run(plan.install_no_deps, "installing spotleash without its core dependencies", log_path,
                      key="own_s")
        if self.leave_rest and plan.install_beside is not None:
            write_rest(root, plan.install_beside)
            return
        steps: list[Step] = []
        if plan.warm is not None and self.warm:  # the agent's .pyc files, even where the image forbids them
            steps.append((plan.warm, "importing the instance agent", ("PYTHONDONTWRITEBYTECODE",), "warm_s"))
        if plan.install_beside is not None:
            steps.append((plan.install_beside, REST_STEP, (), "app_s"))
        if steps:
            self._run_beside(steps, log_path)

    def prepare(self, archive: Path, sha256: str, work_dir: Path) -> tuple[Path, dict[str, Any]]:
        """(root, manifest) of a single-archive package (format 1): verified, extracted into a fresh ``root``,
        installed in ``root/venv``."""
        manifest = verify_archive(archive, sha256)
        work_dir.mkdir(parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix=f"pkg-{sha256[:12]}-", dir=work_dir))
        extract_archive(archive, root, manifest["files"])
        self.install(root, manifest)
        return root, manifest


# In the package root: the install's last step, left to the agent (``RestInstall``), which runs its argv. Only the
# bootstrap writes there: nothing of the package lands in the root itself (the app is under app/, weights under
# artifacts/), and the root is the bootstrap's own mkdtemp (0700).
REST_FILE = "install-rest.json"
REST_STEP = "uv pip install of the app's requirements (offline)"


def write_rest(root: Path, argv: list[str]) -> None:
    (root / REST_FILE).write_text(json.dumps({"argv": argv, "handed_over": time.monotonic()}))


class RestInstall:
    """The install's last step (the app's requirements, ``InstallPlan.install_beside``) run in the instance
    agent's own process, beside its first import, instead of beside a throwaway import in the bootstrap: the
    agent's modules are imported (and their exec paid) once, while uv installs. ``python -m
    spotleash.instance_agent`` starts it before its own imports (``start_rest``); the workload waits for it before
    the components start (``finish_rest``). The step's time and the install's whole (from the bootstrap's start of
    it to this step's end: the monotonic clock is the machine's, shared across the exec) go to the timings."""

    def __init__(self, root: Path) -> None:
        spec = json.loads((root / REST_FILE).read_text())
        self.root, self.argv, self.handed_over = root, [str(a) for a in spec["argv"]], float(spec["handed_over"])
        self.installer = Installer()
        self.error: PackageFailure | None = None
        self.ended_at: float | None = None
        self._thread = threading.Thread(target=self._run, name="install-rest", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.installer._run(self.argv, REST_STEP, self.root / "install.log", key="app_s")
            (self.root / REST_FILE).unlink(missing_ok=True)  # a restarted agent does not install it again
        except PackageFailure as e:
            self.error = e
        except Exception as e:  # noqa: BLE001 - whatever it is, it is this install's failure, reported
            self.error = PackageFailure("package_install_failed", f"{REST_STEP}: {type(e).__name__}: {e}"[:480])
        finally:
            self.ended_at = time.monotonic()

    def wait(self) -> dict[str, float]:
        """This step's timings (``app_s``; ``since_handover_s``: the bootstrap's hand-over to the step's end), or
        its failure raised."""
        self._thread.join()
        if self.error is not None:
            raise self.error
        assert self.ended_at is not None
        return {**self.installer.steps, "since_handover_s": round(max(self.ended_at - self.handed_over, 0.0), 3)}


_rest: dict[Path, RestInstall] = {}
_rest_lock = threading.Lock()


def start_rest(root: Path) -> None:
    """Start the install's last step of ``root`` if the bootstrap left one (and it is not running already)."""
    with _rest_lock:
        if root not in _rest and (root / REST_FILE).is_file():
            _rest[root] = RestInstall(root)


def finish_rest(root: Path) -> dict[str, float]:
    """Wait for the install's last step of ``root`` (started now if it was not); its timings ({} when there was
    none), or its failure raised."""
    start_rest(root)
    with _rest_lock:
        rest = _rest.get(root)
    return rest.wait() if rest is not None else {}


def cancel_rest() -> None:
    with _rest_lock:
        rests = list(_rest.values())
    for rest in rests:
        rest.installer.cancel()


def uv_venv_command(uv: Path, python: str, venv: Path, root: Path, *, system_site: bool = False) -> list[str]:
    return [str(uv), "venv", "--no-config", "--offline", "--quiet", "--python", python,
            "--python-preference", "only-system", *(["--system-site-packages"] if system_site else []),
            "--cache-dir", str(root.parent / "uv-cache"), str(venv)]


def _dist_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_requires(wheel: Path) -> list[str]:
    """The ``Requires-Dist`` lines of a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as z:
        meta = next((n for n in z.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")), None)
        if meta is None:
            raise ValueError(f"{wheel.name} has no METADATA")
        text = z.read(meta).decode("utf-8", errors="replace")
    head = text.split("\n\n", 1)[0]  # the headers; the long description follows the first empty line
    return [line.split(":", 1)[1].strip() for line in head.splitlines() if line.lower().startswith("requires-dist:")]


def core_excludes(wheels_dir: Path, manifest: Mapping[str, Any]) -> list[str] | None:
    """What uv leaves out so the manifest's ``no_deps`` (spotleash) installs in the same resolution as its
    ``requirements``: the names of the ``no_deps`` wheels' own (not extra) dependencies that no wheel of the
    package provides. The package's wheels are the resolution of ``requirements`` at publish, so a dependency
    without a wheel here is one of spotleash's core (the control plane's) no requirement needs; one with a wheel
    stays in, and uv checks it like every other. None when a ``no_deps`` wheel cannot be found or read (then
    two installs, the second ``--no-deps``, as pip does)."""
    names = {_dist_name(w.name.split("-")[0]): w for w in wheels_dir.glob("*.whl")}
    out: set[str] = set()
    for r in manifest.get("no_deps") or []:
        m = _REQUIREMENT.match(str(r))
        wheel = names.get(_dist_name(m.group(1))) if m else None
        if wheel is None:
            return None
        try:
            requires = wheel_requires(wheel)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            return None
        for line in requires:
            req, _, marker = line.partition(";")
            dep = _REQUIREMENT.match(req)
            if dep is None:
                return None
            if "extra" not in marker and _dist_name(dep.group(1)) not in names:
                out.add(_dist_name(dep.group(1)))
    return sorted(out)


EXCLUDES_FILE = "uv-excludes.txt"  # in the package root: ``core_excludes``, one name a line


# What the instance extra lists for the TLS front alone (``FRONT_MODULE``): nothing else spotleash runs on an
# instance imports them (tests/unit/instance_agent/test_install_one_resolution.py checks the agent's start), so an
# instance without a front does not install them unless the app names them (0.18 s of uv's work, measured).
FRONT_ONLY = frozenset({"aiohttp", "cryptography", "yarl", "multidict", "prometheus-client"})


def split_requirements(manifest: Mapping[str, Any], *, front: bool = False) -> tuple[list[str], list[str]]:
    """(before the agent's import, beside it) of the manifest's ``requirements``: beside it the app's own (those
    its ``[app] requirements`` name); before it the rest of the ``instance`` extra's list (a line the app names
    too, twice in the manifest, goes first), without the front's packages (``FRONT_ONLY``) unless the agent runs
    a ``front``: an instance whose config names no route credential never imports them."""
    app = {str(r) for r in (manifest.get("app") or {}).get("requirements") or []}
    every = _requirements(manifest, False)

    def unused(r: str) -> bool:
        m = _REQUIREMENT.match(r)
        return not front and r not in app and m is not None and _dist_name(m.group(1)) in FRONT_ONLY

    def later(r: str) -> bool:
        return r in app and every.count(r) == 1

    wanted = [r for r in every if not unused(r)]
    return list(dict.fromkeys(r for r in wanted if not later(r))), list(dict.fromkeys(r for r in wanted if later(r)))


def uv_install_command(uv: Path, python: str, root: Path, manifest: Mapping[str, Any], *,
                       no_deps: bool = False, excludes: list[str] | None = None,
                       only: list[str] | None = None) -> list[str]:
    """uv installs offline from the package's wheels only (``--no-config``: no index or find-links of the
    image's own uv settings); uv does not byte-compile unless asked, as ``pip --no-compile``. ``no_deps``: as
    ``install_command``. ``excludes`` (``core_excludes``, written to ``EXCLUDES_FILE`` by ``Installer.install``):
    the manifest's ``no_deps`` install in this same resolution, those names left out (no second install).
    ``only``: these requirements instead of the manifest's ``requirements``."""
    wanted = [*(_requirements(manifest, no_deps) if only is None else only),
              *(_requirements(manifest, True) if excludes is not None and only is None else [])]
    return [str(uv), "pip", "install", "--no-config", "--offline", "--no-index", "--quiet",
            *(["--no-deps"] if no_deps else []), *(["--excludes", str(root / EXCLUDES_FILE)] if excludes else []),
            "--cache-dir", str(root.parent / "uv-cache"), "--find-links", str(root / "wheels"),
            "--python", python, *wanted]


# --------------------------------------------------------------------------- layered packages (format 2)
#
# ``packages/<sha256>.json`` names blobs (``blobs/<sha256>``): the app tree as a tar.gz, one per wheel, uv's
# wheel (kind "tool"). Each is fetched once into ``<work>/blobs/`` (in parallel), its sha256 checked
# before it is kept; the package root is then assembled from the verified blobs only.

LAYERED_FORMAT = 2
BLOB_KINDS = frozenset({"app", "wheel", "tool", "artifact"})
ARTIFACTS_DIR = "artifacts"  # <root>/artifacts/<name>: each artifact laid out from its verified blobs
_BLOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,200}$")
FETCH_THREADS = 8
# On. Kept connections first measured slower against the local stack's storage front (parallel 135 vs 368 MB/s,
# one stream 50 vs 342): the front wrote each answer's head and body separately without TCP_NODELAY, so Nagle held
# every answer's tail for the client's delayed ACK. With TCP_NODELAY there (as Cloud Storage answers), the example's
# 31 blobs (59 MB), 3 runs each at load ~8: one stream kept 180 MB/s (80 before the fix) vs 159 with a connection
# per blob; 8 at a time kept 184 vs 140, against 220 MB/s as one object (0.84x vs 0.64x). On real Cloud Storage
# a kept connection also saves a TLS handshake per blob.
FETCH_KEEP_ALIVE = True


@dataclass(frozen=True)
class Origin:
    """Where a pinned package's bytes come from: ``package`` (the manifest, or a format-1 archive) and,
    for a layered package, ``blob(sha256)``."""

    package: Source
    blob: Callable[[str], Source] | None = None
    archive: Source | None = None  # where a package published before layers is, when its manifest is not there

    @property
    def layered(self) -> bool:
        return self.blob is not None


def origin_for(package_uri: str, package_url: str, blob_urls: Mapping[str, str], *, env: Mapping[str, str],
               token: Callable[[], str] | None) -> Origin:
    """GCE: the VM's token for the manifest and every blob; VAST: the signed URLs the launch issued."""
    package = source_for(package_uri, package_url, env=env, token=token)
    if not package_uri.endswith(".json"):
        return Origin(package)
    if package_url:
        def signed(sha: str) -> Source:
            url = blob_urls.get(sha)
            if not url:
                raise PackageFailure("package_forbidden", f"the launch issued no URL for blob {sha}")
            return Source(url)
        return Origin(package, signed)
    bucket, _ = parse_gs_uri(package_uri)
    return Origin(package, lambda sha: source_for(f"gs://{bucket}/blobs/{sha}", "", env=env, token=token),
                  source_for(package_uri.removesuffix(".json") + ".tar.gz", "", env=env, token=token))


def parse_layered(data: bytes) -> dict[str, Any]:
    """The manifest's JSON, each blob entry checked (the whole shape is ``wire.package.LayeredManifest``)."""
    try:
        manifest = json.loads(data)
    except ValueError as e:
        raise PackageFailure("package_unverified", f"the manifest is not JSON: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != LAYERED_FORMAT:
        raise PackageFailure("package_unverified", f"unsupported manifest format (expected {LAYERED_FORMAT})")
    blobs = manifest.get("blobs")
    if not isinstance(blobs, list) or not blobs:
        raise PackageFailure("package_unverified", "the manifest names no blobs")
    artifacts = manifest.get("artifacts", {})
    if not isinstance(artifacts, dict) or any(k not in ("file", "dir") for k in artifacts.values()) \
            or not all(isinstance(n, str) and _BLOB_NAME.match(n) for n in artifacts):
        raise PackageFailure("package_unverified", f"the manifest's artifacts are malformed: {str(artifacts)[:200]}")
    for b in blobs:
        if not (isinstance(b, dict) and is_sha256(str(b.get("sha256"))) and b.get("kind") in BLOB_KINDS
                and _BLOB_NAME.match(str(b.get("name"))) and isinstance(b.get("size"), int)
                and (b.get("path") is None) == (b.get("kind") != "artifact")
                and (b.get("kind") != "artifact" or b.get("name") in artifacts)):
            raise PackageFailure("package_unverified", f"the manifest names a malformed blob: {str(b)[:200]}")
        if b["kind"] == "artifact":
            check_member_name(str(b["path"]))
    if sum(1 for b in blobs if b["kind"] == "app") != 1:
        raise PackageFailure("package_unverified", "the manifest names no app blob, or more than one")
    return manifest


def fetch_blobs(origin: Origin, blobs: list[dict[str, Any]], cache_dir: Path, *, threads: int = FETCH_THREADS,
                on_blob: Callable[[dict[str, Any], Path], None] | None = None, keep_alive: bool = FETCH_KEEP_ALIVE,
                **kw: Any) -> dict[str, Path]:
    """sha256 → verified file in ``cache_dir`` of every blob, fetched in parallel (each retried on its own);
    the first blob that fails for good stops the others' retries and is the failure reported. ``on_blob(blob,
    path)``: work on a verified blob while the others still come (it failing is logged, never the fetch's
    failure: what it prepares is prepared again after the fetch)."""
    assert origin.blob is not None
    blob_source = origin.blob
    stop = threading.Event()
    wanted = {str(b["sha256"]): str(b["name"]) + (f"/{b['path']}" if b.get("path") else "") for b in blobs}
    size = {str(b["sha256"]): int(b["size"]) for b in blobs}
    got: dict[str, Path] = {}
    kept: KeepAlive | None = None
    if keep_alive and kw.get("opener", _urlopen) is _urlopen:  # ours, not a test's: one kept connection per thread
        kept = kw["opener"] = KeepAlive()

    entry = {str(b["sha256"]): b for b in blobs}

    def one(sha: str) -> Path:
        path = fetch(blob_source(sha), sha, cache_dir, suffix="", what=f"blob {wanted[sha]}", stop=stop, **kw)
        if on_blob is not None:
            try:
                on_blob(entry[sha], path)
            except Exception as e:  # noqa: BLE001 - an early start only; the assembly redoes it
                _log("early work on a fetched blob failed; done after the fetch", severity="WARNING",
                     blob=wanted[sha], reason=f"{type(e).__name__}: {e}"[:200])
        return path

    # the largest first: a big wheel started last would be the fetch's tail, the other threads idle
    with contextlib.closing(kept) if kept else contextlib.nullcontext(), \
            ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="blob") as pool:
        futures = {pool.submit(one, sha): sha for sha in sorted(wanted, key=lambda s: (-size[s], s))}
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in done if f.exception() is not None]
        if failed:
            stop.set()
            for f in futures:
                f.cancel()
            error = failed[0].exception()
            if isinstance(error, PackageFailure):
                raise error
            raise PackageFailure("package_unavailable", f"fetching blob {futures[failed[0]]}: {error}") from error
        wait(futures)
        for f, sha in futures.items():
            got[sha] = f.result()
    return got


def _safe_files(tar: tarfile.TarFile, base: Path, what: str) -> Iterator[tuple[tarfile.TarInfo, IO[bytes], Path]]:
    """Each member of ``tar`` as (member, its bytes, where it goes under ``base``, parent made): regular files with
    safe relative paths only; anything else is ``package_unverified``."""
    for m in tar:
        check_member_name(m.name)
        f = tar.extractfile(m) if m.isreg() else None
        if f is None:
            raise PackageFailure("package_unverified", f"{what} member {m.name!r} is not a regular file")
        target = (base / m.name).resolve()
        if not target.is_relative_to(base) or target == base:
            raise PackageFailure("package_unverified", f"unsafe path in {what}: {m.name!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
        yield m, f, target


def extract_blob(path: Path, dest: Path) -> None:
    """Extract the (verified) app blob into the new directory ``dest``: regular files with safe relative
    paths only, never through anything already there."""
    dest.mkdir(parents=True)
    base = dest.resolve()
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            for m, f, target in _safe_files(tar, base, "the app blob"):
                with target.open("xb") as out:
                    shutil.copyfileobj(f, out, CHUNK)
                target.chmod(0o755 if m.mode & 0o111 else 0o644)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise PackageFailure("package_unverified", f"cannot extract the app blob: {e}") from e


def _place(blob: Path, target: Path) -> None:
    """The wheel file under its own name: a hard link to the cached blob (a copy across file systems)."""
    try:
        os.link(blob, target)
    except OSError:
        shutil.copyfile(blob, target)


_UV_RUNS: dict[Path, bool] = {}  # uv binary → whether ``uv --version`` ran, in this process


def uv_from_wheel(wheel: Path, tools_dir: Path) -> Path | None:
    """uv's static binary out of its PyPI wheel (cached by the wheel's name); None when it does not run here
    (then pip installs)."""
    dest = tools_dir / wheel.name / "uv"
    if not dest.exists():
        try:
            with zipfile.ZipFile(wheel) as z:
                member = next((n for n in z.namelist() if re.fullmatch(r"[^/]+\.data/scripts/uv", n)), None)
                if member is None:
                    _log("uv's wheel has no uv binary; pip installs", severity="WARNING", wheel=wheel.name)
                    return None
                dest.parent.mkdir(parents=True, exist_ok=True)
                part = dest.with_name("uv.part")
                with z.open(member) as src, part.open("wb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
                part.chmod(0o755)
                part.replace(dest)
        except (OSError, zipfile.BadZipFile) as e:
            _log("uv's wheel cannot be unpacked; pip installs", severity="WARNING", reason=str(e)[:200])
            return None
    if dest in _UV_RUNS:  # asked already (the early unpack during the fetch): once is enough
        return dest if _UV_RUNS[dest] else None
    try:
        ok = subprocess.run([str(dest), "--version"], capture_output=True, timeout=30,  # noqa: S603 - verified blob
                            check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        _log("uv does not run on this box; pip installs", severity="WARNING", uv=str(dest))
    _UV_RUNS[dest] = ok
    return dest if ok else None


def early_tool(blob: Mapping[str, Any], path: Path, work_dir: Path) -> None:
    """uv out of its wheel as soon as its blob is verified, while the other blobs still come (~0.4 s of unzipping
    a 40 MB binary taken off the install); ``prepare_layered`` finds it in the tools cache."""
    if blob["kind"] == "tool" and str(blob["name"]).startswith("uv-"):
        uv_from_wheel(_named(path, str(blob["name"]), work_dir), work_dir / "tools")


def prepare_layered(manifest_path: Path, sha256: str, work_dir: Path, blob_files: Mapping[str, Path],
                    installer: Installer) -> tuple[Path, dict[str, Any]]:
    """(root, manifest): a fresh root assembled from verified blobs only, installed in ``root/venv``."""
    data = manifest_path.read_bytes()
    manifest = parse_layered(data)
    work_dir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix=f"pkg-{sha256[:12]}-", dir=work_dir))
    (root / MANIFEST_NAME).write_bytes(data)
    wheels = root / "wheels"
    wheels.mkdir()
    uv: Path | None = None
    t0 = time.monotonic()
    for b in manifest["blobs"]:
        path = blob_files[b["sha256"]]
        if b["kind"] == "app":
            extract_blob(path, root / "app")
        elif b["kind"] == "wheel":
            _place(path, wheels / b["name"])
        elif b["kind"] == "tool" and b["name"].startswith("uv-"):
            uv = uv_from_wheel(_named(path, b["name"], work_dir), work_dir / "tools")
    lay_out_artifacts(root, manifest, blob_files)
    assembled = round(time.monotonic() - t0, 3)
    installer.install(root, manifest, uv)
    installer.steps["assemble_s"] = assembled
    return root, manifest


def artifact_path(root: Path, manifest: Mapping[str, Any], name: str) -> Path:
    """Where artifact ``name`` is on this instance (what ``SPOTLEASH_ARTIFACT_<NAME>`` says): its directory
    ``<root>/artifacts/<name>``, or for a file artifact the file in it."""
    base = root / ARTIFACTS_DIR / name
    if manifest.get("artifacts", {}).get(name) == "file":
        files = [b for b in manifest["blobs"] if b["kind"] == "artifact" and b["name"] == name]
        return base / str(files[0]["path"])
    return base


def lay_out_artifacts(root: Path, manifest: Mapping[str, Any], blob_files: Mapping[str, Path]) -> None:
    """Each artifact under ``<root>/artifacts/<name>/``: its files at their paths, hard links to the verified
    blobs in the cache (no second copy of gigabytes of weights; a copy across file systems)."""
    for name in manifest.get("artifacts", {}):
        base = (root / ARTIFACTS_DIR / name)
        base.mkdir(parents=True)
        top = base.resolve()
        for b in manifest["blobs"]:
            if b["kind"] != "artifact" or b["name"] != name:
                continue
            target = (top / str(b["path"])).resolve()
            if not target.is_relative_to(top) or target == top or target.exists():
                raise PackageFailure("package_unverified", f"artifact {name}: unsafe or repeated path {b['path']!r}")
            target.parent.mkdir(parents=True, exist_ok=True)
            _place(blob_files[b["sha256"]], target)


def _named(blob: Path, name: str, work_dir: Path) -> Path:
    """The blob under its file name (zipfile does not care, the tools cache is keyed by it)."""
    named = work_dir / "tools" / "wheels" / name
    if not named.exists():
        named.parent.mkdir(parents=True, exist_ok=True)
        _place(blob, named)
    return named


def obtain(origin: Origin, sha256: str, work_dir: Path, installer: Installer, *, retry_budget_s: float = 300.0,
           opener: Opener = _urlopen, threads: int = FETCH_THREADS) -> tuple[Path, dict[str, Any], dict[str, float]]:
    """The pinned package fetched, verified and installed: (root, manifest, {"fetch_s", "install_s"})."""
    t0 = time.monotonic()
    manifest_path: Path | None = None
    if origin.layered:
        try:
            manifest_path = fetch(origin.package, sha256, work_dir / "manifests", suffix=".json", opener=opener,
                                  retry_budget_s=retry_budget_s, what="manifest")
        except PackageFailure as e:
            if e.reason != "package_missing" or origin.archive is None:
                raise
            _log("no manifest: a package published before layers, read as one archive", sha256=sha256)
            origin = Origin(origin.archive)
    if manifest_path is None:
        archive = fetch(origin.package, sha256, work_dir / "archives", opener=opener, retry_budget_s=retry_budget_s)
        t1 = time.monotonic()
        root, manifest = installer.prepare(archive, sha256, work_dir)
    else:
        blobs = parse_layered(manifest_path.read_bytes())["blobs"]
        files = fetch_blobs(origin, blobs, work_dir / "blobs", threads=threads, opener=opener,
                            retry_budget_s=retry_budget_s, on_blob=lambda b, path: early_tool(b, path, work_dir))
        t1 = time.monotonic()
        root, manifest = prepare_layered(manifest_path, sha256, work_dir, files, installer)
    # the install's own steps beside the whole (a RecordingInstaller of the tests has none)
    steps = {k: v for k, v in getattr(installer, "steps", {}).items() if k in INSTALL_STEPS}
    return root, manifest, {"fetch_s": round(t1 - t0, 3), "install_s": round(time.monotonic() - t1, 3), **steps}


# --------------------------------------------------------------------------- heartbeats of the bootstrap


def heartbeat_body(cfg: Mapping[str, Any], components: Mapping[str, Mapping[str, Any]],
                   failure: Mapping[str, str] | None) -> bytes:
    """A ``spotleash.wire.events.Heartbeat`` as JSON (its shape is checked against the model by the tests)."""
    return json.dumps({
        "schema_version": 1, "kind": "heartbeat", "event_id": uuid.uuid4().hex,
        "created_at": _dt.datetime.now(_dt.UTC).isoformat(),
        "lease_id": cfg.get("lease_id", ""), "instance_id": cfg.get("instance_id", ""),
        "components": dict(components), "failure": dict(failure) if failure else None,
    }).encode()


def send_heartbeat(cfg: Mapping[str, Any], token: str, body: bytes, opener: Opener = _urlopen) -> str | None:
    """POST one beat; the control plane's ``action`` ("continue" / "stop"), or None if it did not get through."""
    url = str(cfg.get("heartbeat_url") or "")
    if not url:
        return None
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with opener(req, 10.0) as r:
            answer = json.loads(bytes(r.read()).decode() or "{}")
    except urllib.error.HTTPError as e:
        return "stop" if e.code in (401, 404, 410) else None
    except (OSError, ValueError):
        return None
    return str(answer.get("action", "continue")) if isinstance(answer, dict) else "continue"


# --------------------------------------------------------------------------- the whole bootstrap


def load_config(provider: str, env: Mapping[str, str], opener: Opener = _urlopen) -> tuple[dict[str, Any], str]:
    if provider == "gce":
        raw, token = metadata_get(f"instance/attributes/{CONFIG_KEY}", env, opener), \
            metadata_get(f"instance/attributes/{TOKEN_KEY}", env, opener)
    else:
        raw, token = env.get(CONFIG_ENV), env.get(TOKEN_ENV)
    if not raw:
        raise ValueError(f"no agent config ({CONFIG_KEY} metadata / ${CONFIG_ENV})")
    cfg = json.loads(raw)
    if not isinstance(cfg, dict):
        raise ValueError("the agent config is not a JSON object")
    return cfg, token or ""


def run(provider: str, work_dir: Path, env: Mapping[str, str], *, opener: Opener = _urlopen,
        python: str = sys.executable, timings: dict[str, float] | None = None, leave_rest: bool = True,
        ) -> tuple[Path, dict[str, Any]] | PackageFailure | None:
    """Fetch, verify, install, beating meanwhile; the prepared (root, manifest), the failure (reported), or
    None when the config pins no package. ``timings`` gets ``fetch_s`` and ``install_s``. ``leave_rest``: the
    app's requirements are left to the agent this process execs (``RestInstall``)."""
    cfg, token = load_config(provider, env, opener)
    sha = str(cfg.get("package_sha256") or "")
    if not sha:
        return None
    names = [str(n) for n in cfg.get("components") or []]
    done = threading.Event()

    def beat_while_working() -> None:
        interval = float(cfg.get("heartbeat_interval_s") or 30.0)
        while not done.is_set():
            send_heartbeat(cfg, token, heartbeat_body(cfg, {n: {"state": "starting"} for n in names}, None), opener)
            done.wait(interval)

    beater = threading.Thread(target=beat_while_working, name="bootstrap-beat", daemon=True)
    beater.start()
    try:
        md_token = metadata_token(env, opener) if provider == "gce" else None
        blob_urls = cfg.get("blob_urls") if isinstance(cfg.get("blob_urls"), dict) else {}
        origin = origin_for(str(cfg.get("package_uri") or ""), str(cfg.get("package_url") or ""),
                            {str(k): str(v) for k, v in (blob_urls or {}).items()}, env=env, token=md_token)
        front = (FRONT_MODULE,) if cfg.get("route_credential_sha256") else ()  # the agent will import it too
        installer = Installer(python, warm_also=front, leave_rest=leave_rest)
        root, manifest, steps = obtain(origin, sha, work_dir, installer, opener=opener,
                                       retry_budget_s=float(cfg.get("package_fetch_retry_s") or 300.0))
        if timings is not None:
            timings.update(steps)
        _log("package installed", sha256=sha, root=str(root), **steps)
        return root, manifest
    except PackageFailure as e:
        _log("the package cannot run; this instance is useless", severity="ERROR", reason=e.reason, detail=e.detail)
        failure = {"reason": e.reason, "detail": e.detail[:500]}
        error = f"{e.reason}: {e.detail}"[:500]
        body = heartbeat_body(cfg, {n: {"state": "failing", "error": error} for n in names}, failure)
        for pause in (0.0, 1.0, 2.0, 4.0):  # the reaper's heartbeat timeout is the backstop
            time.sleep(pause)
            if send_heartbeat(cfg, token, body, opener) is not None:
                break
        return e
    finally:
        done.set()


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    env = dict(os.environ if environ is None else environ)
    p = argparse.ArgumentParser(prog="python3 bootstrap.py", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--provider", choices=["gce", "vast"], required=True)
    p.add_argument("--work-dir", type=Path, required=True, help="cache, package roots and component logs")
    p.add_argument("--no-exec", action="store_true", help="stop after installing (print the package root)")
    args = p.parse_args(argv)
    timings: dict[str, float] = {}
    try:
        got = run(args.provider, args.work_dir, env, timings=timings, leave_rest=not args.no_exec)
    except (OSError, ValueError) as e:  # no config, no metadata server: nothing to report to
        _log("bootstrap cannot start", severity="ERROR", reason=str(e)[:300])
        return 2
    if isinstance(got, PackageFailure):
        return 1
    if got is None:  # no package pinned: heartbeats only, from an image that has spotleash
        if importlib.util.find_spec("spotleash") is None:
            _log("no package pinned and this python3 has no spotleash: publish a package (spotleash publish) "
                 "and set SPOTLEASH_PACKAGE_BUCKET, or use an image with spotleash installed", severity="ERROR",
                 python=sys.executable)
            return 2
        argv_plain = [sys.executable, "-m", "spotleash.instance_agent", "--provider", args.provider,
                      "--work-dir", str(args.work_dir)]
        _log("no package pinned: starting the instance agent of this image (heartbeats only)", argv=argv_plain)
        os.execve(sys.executable, argv_plain, env)  # noqa: S606 - this interpreter
    root, _ = got
    if args.no_exec:
        print(root)
        return 0
    python = str(root / "venv" / "bin" / "python")
    argv_agent = [python, "-m", "spotleash.instance_agent", "--provider", args.provider,
                  "--work-dir", str(args.work_dir), "--package-root", str(root)]
    _log("starting the instance agent", argv=argv_agent)
    env[TIMINGS_ENV] = json.dumps({"started_at": STARTED_AT.isoformat(), **timings})
    os.execve(python, argv_agent, env)  # noqa: S606 - our own venv's interpreter
    return 0  # pragma: no cover - execve does not return


if __name__ == "__main__":
    sys.exit(main())
