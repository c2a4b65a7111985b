"""Moving the bytes between the instance and Cloud Storage by signed URL (never logged), with retries:
uploads from a file or memory, downloads checked for size and sha256."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from spotleash.instance_agent.snapshot.common import (
    CHUNK,
    RETRY_STATUSES,
    CorruptSnapshot,
    SnapshotError,
)
from spotleash.log import get_logger
from spotleash.wire.snapshot import (
    ManifestObject,
    Transfer,
)

log = get_logger(__name__)


def send(http: httpx.Client, t: Transfer, what: str, *, content: Any = None, size: int | None = None,
          retry_budget_s: float, sleep: Callable[[float], None]) -> httpx.Response:
    """One request, retried on connection errors and 408/429/5xx within the budget."""
    give_up_at = time.monotonic() + retry_budget_s
    pause = 0.5
    while True:
        headers = dict(t.headers)
        if size is not None:
            headers["Content-Length"] = str(size)
        body = content() if callable(content) else content
        try:
            r = http.request(t.method, t.url, content=body, headers=headers)
            if r.status_code not in RETRY_STATUSES:
                return r
            why = f"HTTP {r.status_code}"
        except httpx.TransportError as e:
            why = type(e).__name__
        if time.monotonic() + pause > give_up_at:
            raise SnapshotError(f"{what}: Cloud Storage unavailable ({why}) after retries")
        log.warning("snapshot transfer failed; retrying", object=what, reason=why, pause_s=pause)
        sleep(pause)
        pause = min(pause * 2, 15.0)


def _file_chunks(path: Path) -> Callable[[], Iterator[bytes]]:
    def chunks() -> Iterator[bytes]:
        with path.open("rb") as f:
            while data := f.read(CHUNK):
                yield data
    return chunks


def upload(http: httpx.Client, t: Transfer, name: str, *, path: Path | None = None, data: bytes | None = None,
            retry_budget_s: float, sleep: Callable[[float], None]) -> None:
    if path is not None:
        r = send(http, t, name, content=_file_chunks(path), size=path.stat().st_size,
                  retry_budget_s=retry_budget_s, sleep=sleep)
    else:
        r = send(http, t, name, content=data, retry_budget_s=retry_budget_s, sleep=sleep)
    if r.status_code == 412:  # create-only: it is there already (a retry whose first answer was lost)
        log.info("snapshot object already uploaded", object=name)
        return
    if not 200 <= r.status_code < 300:
        raise SnapshotError(f"upload {name}: HTTP {r.status_code}")


def download(http: httpx.Client, t: Transfer, name: str, dest: Path, want: ManifestObject, *,
              retry_budget_s: float, sleep: Callable[[float], None]) -> None:
    give_up_at = time.monotonic() + retry_budget_s
    pause = 0.5
    while True:
        h, size = hashlib.sha256(), 0
        try:
            with http.stream(t.method, t.url, headers=t.headers) as r:
                if r.status_code == 404:
                    raise CorruptSnapshot(f"{name}: missing from the bucket")
                if r.status_code in RETRY_STATUSES:
                    raise httpx.TransportError(f"HTTP {r.status_code}")
                if r.status_code != 200:
                    raise SnapshotError(f"download {name}: HTTP {r.status_code}")
                with dest.open("wb") as f:
                    for chunk in r.iter_bytes(CHUNK):
                        size += len(chunk)
                        if size > want.size:
                            raise CorruptSnapshot(f"{name}: larger than the manifest's {want.size} bytes")
                        h.update(chunk)
                        f.write(chunk)
            break
        except httpx.TransportError as e:
            if time.monotonic() + pause > give_up_at:
                raise SnapshotError(f"download {name}: Cloud Storage unavailable ({e}) after retries") from e
            sleep(pause)
            pause = min(pause * 2, 15.0)
    if size != want.size or h.hexdigest() != want.sha256:
        raise CorruptSnapshot(f"{name}: sha256 {h.hexdigest()[:16]}… ({size} bytes) is not the manifest's "
                              f"{want.sha256[:16]}… ({want.size} bytes)")
