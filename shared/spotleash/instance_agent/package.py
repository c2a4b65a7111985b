"""Fetch, verify and install the package an instance was launched for.

The launch pins the archive's sha256 into the agent's config (``package_sha256``, with
``package_uri`` = ``gs://<bucket>/packages/<sha256>.tar.gz``), so a publish during a launch cannot
mix versions. Where the bytes come from:

- GCE: the Cloud Storage JSON API media download, with the VM service account's token from the
  metadata server (the VM's account has object read on the package bucket only);
- local stack: the same request against ``STORAGE_EMULATOR_HOST`` (no token);
- VAST (no Google identity on the box): ``package_url``, a V4 signed GET URL of that one object that
  the control plane signs at launch (IAM ``signBlob`` as the functions' service account), valid until
  the instance's deadline (at most 7 days, V4's limit), handed over in the instance's config. It is a
  bearer secret for one immutable object: never logged, never passed to the app.

Whatever the source, the bytes are hashed while they stream to a ``.part`` file, and only an archive
whose sha256 is the pinned one is kept; ``package_format.verify_archive`` then checks every member
against the manifest before anything is extracted. An unverified archive is never extracted or run.
Transient failures (connection errors, timeouts, 408/429/5xx) are retried with backoff.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
from pydantic import ValidationError

from spotleash.instance_agent.supervisor import SECRET_ENV, Launch
from spotleash.log import get_logger
from spotleash.package_format import (
    SHA256_RE,
    Manifest,
    PackageError,
    extract_archive,
    install_command,
    sha256_file,
    verify_archive,
)

log = get_logger("spotleash.instance_agent.package")

GCS_BASE = "https://storage.googleapis.com"
EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
CHUNK = 1 << 20


class PackageFailure(Exception):
    """The instance cannot run its package; ``reason`` is the code its heartbeat carries."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Source:
    url: str
    token: Callable[[], str] | None = None  # a fresh bearer token per attempt (they expire)

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


def source_for(
    package_uri: str,
    package_url: str,
    *,
    env: Mapping[str, str],
    token: Callable[[], str] | None,
) -> Source:
    if package_url:
        return Source(package_url)
    bucket, obj = parse_gs_uri(package_uri)
    emulator = env.get(EMULATOR_ENV)
    if emulator:
        base = emulator if "://" in emulator else f"http://{emulator}"
        return Source(media_url(base, bucket, obj))
    if token is None:
        raise PackageFailure("package_forbidden", "no credentials for Cloud Storage on this instance "
                                                  "(no metadata server token and no signed package_url)")
    return Source(media_url(GCS_BASE, bucket, obj), token)


def _download_once(http: httpx.Client, source: Source, part: Path) -> str:
    """Stream the object to ``part``; return its sha256. Raises httpx errors or PackageFailure."""
    headers = {"Authorization": f"Bearer {source.token()}"} if source.token else {}
    h = hashlib.sha256()
    with http.stream("GET", source.url, headers=headers) as r:
        if r.status_code in RETRY_STATUSES:
            raise httpx.HTTPStatusError(f"HTTP {r.status_code}", request=r.request, response=r)
        if r.status_code == 404:
            raise PackageFailure("package_missing", f"no such package object: {source.safe_url}")
        if r.status_code in (401, 403):
            raise PackageFailure("package_forbidden",
                                 f"HTTP {r.status_code} reading {source.safe_url}: the instance may not read it")
        if r.status_code != 200:
            raise PackageFailure("package_unavailable", f"HTTP {r.status_code} reading {source.safe_url}")
        with part.open("wb") as f:
            for chunk in r.iter_bytes(CHUNK):
                h.update(chunk)
                f.write(chunk)
    return h.hexdigest()


def download(
    http: httpx.Client,
    source: Source,
    dest: Path,
    expected_sha256: str,
    *,
    retry_budget_s: float = 300.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Download to ``dest`` (via ``dest.part``), keeping it only if its sha256 is ``expected_sha256``."""
    part = dest.with_name(dest.name + ".part")
    give_up_at = clock() + retry_budget_s
    pause, attempt = 1.0, 0
    while True:
        attempt += 1
        try:
            got = _download_once(http, source, part)
        except (httpx.HTTPError, OSError) as e:
            part.unlink(missing_ok=True)
            detail = f"{type(e).__name__}: {e}"[:300]
            if clock() + pause > give_up_at:
                raise PackageFailure("package_unavailable",
                                     f"{source.safe_url} unreachable after {attempt} attempts: {detail}") from e
            log.warning("package download failed; retrying", attempt=attempt, pause_s=pause, reason=detail)
            sleep(pause)
            pause = min(pause * 2, 30.0)
            continue
        except PackageFailure:
            part.unlink(missing_ok=True)
            raise
        if got != expected_sha256:
            part.unlink(missing_ok=True)
            raise PackageFailure("package_unverified",
                                 f"sha256 of {source.safe_url} is {got}, the launch pinned {expected_sha256}")
        part.replace(dest)
        log.info("package downloaded", url=source.safe_url, bytes=dest.stat().st_size, attempts=attempt)
        return


def fetch(
    http: httpx.Client,
    source: Source,
    sha256: str,
    cache_dir: Path,
    *,
    retry_budget_s: float = 300.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Path:
    """The verified-by-hash archive in ``cache_dir`` (reused when already there, e.g. from a bootstrap)."""
    if not SHA256_RE.match(sha256):
        raise PackageFailure("package_unverified", f"the pinned package_sha256 {sha256!r} is not a sha256")
    cache_dir.mkdir(parents=True, exist_ok=True)
    dest = cache_dir / f"{sha256}.tar.gz"
    if dest.exists():
        if sha256_file(dest) == sha256:
            log.info("package found in the cache", path=str(dest))
            return dest
        dest.unlink()  # a damaged copy: fetch it again
    download(http, source, dest, sha256, retry_budget_s=retry_budget_s, sleep=sleep, clock=clock)
    return dest


@dataclass(frozen=True)
class Prepared:
    root: Path  # the fresh directory the archive was extracted into
    manifest: Manifest
    venv: Path

    @property
    def app_dir(self) -> Path:
        return self.root / "app"


class Installer:
    """Verify → extract → venv → offline install; each step a subprocess that ``cancel`` can end."""

    def __init__(self, python: str = sys.executable, timeout_s: float = 900.0) -> None:
        self.python = python
        self.timeout_s = timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._cancelled = False

    def _run(self, argv: list[str], step: str, log_path: Path) -> None:
        with self._lock:
            if self._cancelled:
                raise PackageFailure("package_install_failed", f"{step}: cancelled")
            with log_path.open("ab") as out:
                self._proc = subprocess.Popen(  # noqa: S603 - our own fixed argv
                    argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, process_group=0,
                    env={k: v for k, v in os.environ.items() if k not in SECRET_ENV},
                )
        proc = self._proc
        try:
            code = proc.wait(timeout=self.timeout_s)
        except subprocess.TimeoutExpired as e:
            self._kill(proc)
            raise PackageFailure("package_install_failed", f"{step} took longer than {self.timeout_s:g} s") from e
        if code != 0:
            tail = " | ".join(log_path.read_text(errors="replace").strip().splitlines()[-4:])
            raise PackageFailure("package_install_failed", f"{step} exited with code {code}: {tail}"[:480])

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
            proc = self._proc
        if proc is not None and proc.poll() is None:
            self._kill(proc)

    def prepare(self, archive: Path, sha256: str, work_dir: Path) -> Prepared:
        try:
            raw = verify_archive(archive, sha256)
            manifest = Manifest.model_validate(raw)
        except PackageError as e:
            raise PackageFailure("package_unverified", str(e)[:480]) from e
        except ValidationError as e:
            raise PackageFailure("package_unverified", f"manifest.json: {e}"[:480]) from e
        work_dir.mkdir(parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix=f"pkg-{sha256[:12]}-", dir=work_dir))
        try:
            extract_archive(archive, root)
        except (PackageError, tarfile.TarError, OSError) as e:  # the data filter's refusals are TarErrors
            raise PackageFailure("package_unverified", f"cannot extract: {e}"[:480]) from e
        venv = root / "venv"
        install_log = root / "install.log"
        self._run([self.python, "-m", "venv", str(venv)], "python -m venv", install_log)
        self._run(install_command(str(venv / "bin" / "python"), root, raw), "pip install (offline)", install_log)
        return Prepared(root=root, manifest=manifest, venv=venv)


def launches(manifest: Manifest, wanted: list[str]) -> list[Launch]:
    """The components this instance was launched for (all of the package's when ``wanted`` is empty)."""
    known = {c.name: c for c in manifest.app.components}
    missing = [n for n in wanted if n not in known]
    if missing:
        raise PackageFailure("component_unknown", f"the package has no component {', '.join(missing)} "
                                                  f"(it has {', '.join(sorted(known))})")
    chosen = [known[n] for n in wanted] if wanted else list(manifest.app.components)
    return [Launch(name=c.name, argv=tuple(c.command), port=c.port, health_path=c.health_path,
                   timeout_s=c.start_timeout_s, env=dict(c.env)) for c in chosen]
