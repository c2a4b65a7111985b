"""Restoring a snapshot before components start: ask which one, download and check its manifest and
parts, extract safely into staging beside each state path, swap in; fall back past corrupt ones."""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
import tarfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import httpx
import zstandard
from pydantic import ValidationError

from spotleash.instance_agent.snapshot.channel import Channel, expect, tell
from spotleash.instance_agent.snapshot.common import (
    WORKERS,
    CorruptSnapshot,
    SnapshotError,
)
from spotleash.instance_agent.snapshot.transfer import download, send
from spotleash.log import get_logger
from spotleash.wire.snapshot import (
    MANIFEST_OBJECT,
    MAX_MANIFEST_BYTES,
    RestoreAsk,
    RestoredAsk,
    RestoreGrant,
    RestoreWait,
    SnapshotManifest,
)

log = get_logger(__name__)

MAX_RESTORE_ATTEMPTS = 8
MAX_RESTORE_WAIT_S = 120.0  # told to wait (RestoreWait) this long in all, the restore takes what it is granted


@dataclass(frozen=True)
class RestoreOutcome:
    snapshot_id: str | None  # None: nothing was restorable (a first start, or every snapshot corrupt)
    fell_back: dict[str, str]  # snapshots found corrupt on the way, with why
    seconds: float = 0.0
    raw_bytes: int = 0
    files: int = 0


def _manifest(http: httpx.Client, grant: RestoreGrant, *, retry_budget_s: float,
              sleep: Callable[[float], None]) -> SnapshotManifest:
    t = grant.objects.get(MANIFEST_OBJECT)
    if t is None:
        raise SnapshotError("restore: the grant has no manifest URL")
    r = send(http, t, MANIFEST_OBJECT, retry_budget_s=retry_budget_s, sleep=sleep)
    if r.status_code == 404:
        raise CorruptSnapshot("manifest.json: missing from the bucket")
    if r.status_code != 200:
        raise SnapshotError(f"download manifest.json: HTTP {r.status_code}")
    data = r.content[:MAX_MANIFEST_BYTES + 1]
    if hashlib.sha256(data).hexdigest() != grant.manifest_sha256:
        raise CorruptSnapshot("manifest.json: its sha256 is not the one verified at upload")
    try:
        return SnapshotManifest.model_validate_json(data)
    except ValidationError as e:
        raise CorruptSnapshot(f"manifest.json: not a snapshot manifest ({e.error_count()} errors)") from e


def _split_member(name: str, roots: int) -> tuple[int, str]:
    """``r<i>/<rest>`` → (i, rest); anything else is unsafe."""
    head, _, rest = name.partition("/")
    if not (head.startswith("r") and head[1:].isdigit() and int(head[1:]) < roots and str(int(head[1:])) == head[1:]):
        raise CorruptSnapshot(f"unsafe member {name!r}: not under a state root")
    p = PurePosixPath(rest) if rest else PurePosixPath(".")
    if p.is_absolute() or ".." in p.parts or "\\" in name:
        raise CorruptSnapshot(f"unsafe member {name!r}")
    return int(head[1:]), rest or "."


def _extract(part: Path, staging: list[Path]) -> tuple[int, int]:
    """Extract one verified part into the staging roots; (files, bytes). Unsafe members: CorruptSnapshot."""
    files = raw = 0
    with part.open("rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as z, \
            tarfile.open(fileobj=z, mode="r|") as tar:
        for m in tar:
            i, rest = _split_member(m.name, len(staging))
            if not (m.isreg() or m.isdir() or m.issym()):
                raise CorruptSnapshot(f"unsafe member {m.name!r}: links, devices and FIFOs are never restored"
                                      if m.islnk() else f"unsafe member {m.name!r}: not a file, dir or symlink")
            if rest == ".":
                continue
            tar.extract(_checked_member(m, rest, staging[i]), staging[i], set_attrs=True)
            if m.isreg():
                files += 1
                raw += m.size
    return files, raw


def _checked_member(m: tarfile.TarInfo, rest: str, root: Path) -> tarfile.TarInfo:
    """The data filter's refusals by hand (Debian 12's Python 3.11.2 has no tarfile filters): no
    absolute name, nothing that lands outside ``root`` (also through a symlink already extracted), no
    symlink pointing outside it; no setuid bits, no group/other write, no owner from the archive."""
    top = root.resolve()
    if rest.startswith("/") or os.path.isabs(rest):
        raise CorruptSnapshot(f"unsafe member {m.name!r}: absolute path")
    target = (top / rest).resolve()
    if not target.is_relative_to(top):
        raise CorruptSnapshot(f"unsafe member {m.name!r}: lands outside its root")
    if m.issym():
        if os.path.isabs(m.linkname) or not (target.parent / m.linkname).resolve().is_relative_to(top):
            raise CorruptSnapshot(f"unsafe member {m.name!r}: symlink points outside its root")
    safe = copy.copy(m)  # TarInfo.replace() is 3.11.4+ too
    safe.name = rest
    safe.mode = m.mode & 0o755
    safe.uid, safe.gid, safe.uname, safe.gname = os.getuid(), os.getgid(), "", ""
    return safe


def _swap_in(staging: Path, root: Path) -> None:
    """Replace ``root``'s content by ``staging``'s (root itself may be a mount point: it stays)."""
    root.mkdir(parents=True, exist_ok=True)
    for child in list(root.iterdir()):
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    for child in list(staging.iterdir()):
        child.rename(root / child.name)
    staging.rmdir()


def _restore_one(http: httpx.Client, grant: RestoreGrant, roots: list[Path], spool: Path, *,
                 retry_budget_s: float, sleep: Callable[[float], None]) -> tuple[int, int]:
    manifest = _manifest(http, grant, retry_budget_s=retry_budget_s, sleep=sleep)
    if len(manifest.roots) != len(roots):
        raise CorruptSnapshot(f"the snapshot has {len(manifest.roots)} state paths, this instance {len(roots)}")
    missing = [o.name for o in manifest.objects if o.name not in grant.objects]
    if missing:
        raise SnapshotError(f"restore: the grant has no URL for {missing[:3]}")
    work = spool / f"restore-{grant.snapshot_id}"
    work.mkdir(parents=True, exist_ok=True)
    staging = [r.parent / f".{r.name}.restore-{grant.snapshot_id}" for r in roots]
    try:
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            for f in [pool.submit(download, http, grant.objects[o.name], o.name, work / o.name, o,
                                  retry_budget_s=retry_budget_s, sleep=sleep) for o in manifest.objects]:
                f.result()
        for s in staging:
            shutil.rmtree(s, ignore_errors=True)
            s.mkdir(parents=True)
        files = raw = 0
        for o in manifest.objects:  # every part verified before the first byte is extracted
            n, b = _extract(work / o.name, staging)
            files, raw = files + n, raw + b
        for s, r in zip(staging, roots, strict=True):
            _swap_in(s, r)
        return files, raw
    except (zstandard.ZstdError, tarfile.TarError, EOFError) as e:
        raise CorruptSnapshot(f"unreadable archive: {e}") from e
    finally:
        shutil.rmtree(work, ignore_errors=True)
        for s in staging:
            shutil.rmtree(s, ignore_errors=True)


def restore(
    roots: list[Path],
    *,
    channel: Channel,
    spool: Path,
    http: httpx.Client | None = None,
    retry_budget_s: float = 120.0,
    sleep: Callable[[float], None] = time.sleep,
) -> RestoreOutcome:
    """Restore the latest verified snapshot of the lease into ``roots``, falling back past corrupt ones.

    Raises ``SnapshotError`` when it cannot finish (control plane or Cloud Storage unreachable): the
    caller decides whether components may start without their state.
    """
    client = http or httpx.Client(timeout=120.0, trust_env=False)
    failed: dict[str, str] = {}
    t0 = time.monotonic()
    waited = 0.0
    for _ in range(MAX_RESTORE_ATTEMPTS):
        reply = channel.ask(RestoreAsk(failed=failed))
        while isinstance(reply, RestoreWait) and waited < MAX_RESTORE_WAIT_S:  # a newer snapshot is on its way
            log.info("restore waits for a newer snapshot", detail=reply.detail[:200], retry_after_s=reply.retry_after_s)
            pause = min(reply.retry_after_s, MAX_RESTORE_WAIT_S - waited)
            sleep(pause)
            waited += pause
            reply = channel.ask(RestoreAsk(failed=failed))
        grant: RestoreGrant = expect(reply, RestoreGrant, "restore")
        if grant.snapshot_id is None:
            break
        if grant.snapshot_id in failed:
            raise SnapshotError(f"restore: the control plane granted {grant.snapshot_id} again after it failed")
        try:
            files, raw = _restore_one(client, grant, roots, spool, retry_budget_s=retry_budget_s, sleep=sleep)
        except CorruptSnapshot as e:
            log.error("snapshot corrupt; falling back to the one before", snapshot_id=grant.snapshot_id,
                      reason=str(e)[:300])
            failed[grant.snapshot_id] = str(e)[:480]
            continue
        seconds = time.monotonic() - t0
        tell(channel, RestoredAsk(snapshot_id=grant.snapshot_id, seconds=seconds, raw_bytes=raw,
                                   waited_s=min(waited, seconds)))
        log.info("snapshot restored", snapshot_id=grant.snapshot_id, files=files, raw_bytes=raw,
                 seconds=round(seconds, 3), fell_back=sorted(failed))
        return RestoreOutcome(grant.snapshot_id, failed, seconds, raw, files)
    else:
        raise SnapshotError(f"restore: {MAX_RESTORE_ATTEMPTS} snapshots failed in a row: {sorted(failed)}")
    seconds = time.monotonic() - t0
    tell(channel, RestoredAsk(snapshot_id=None, seconds=seconds, waited_s=min(waited, seconds)))
    return RestoreOutcome(None, failed, time.monotonic() - t0)
