"""Taking a snapshot: pack, ask for upload URLs, upload the parts then the manifest, report it and
wait for the control plane's verdict (only ``verified`` means it exists)."""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import zstandard

from spotleash.clock import utcnow
from spotleash.instance_agent.snapshot.channel import Channel, expect
from spotleash.instance_agent.snapshot.common import (
    WORKERS,
    SnapshotError,
)
from spotleash.instance_agent.snapshot.packing import PART_BYTES, ZSTD_LEVEL, pack
from spotleash.instance_agent.snapshot.transfer import upload
from spotleash.log import get_logger
from spotleash.wire.snapshot import (
    MANIFEST_OBJECT,
    AbandonedAsk,
    SnapshotManifest,
    SnapshotTrigger,
    UploadAsk,
    UploadedAsk,
    UploadGrant,
    Verdict,
    object_names,
)

log = get_logger(__name__)


@dataclass(frozen=True)
class SnapshotOutcome:
    snapshot_id: str
    verified: bool
    detail: str
    files: int = 0
    raw_bytes: int = 0
    size_bytes: int = 0
    skipped: tuple[str, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)


def take_snapshot(
    roots: list[Path],
    *,
    snapshot_id: str,
    lease_id: str,
    instance_id: str,
    channel: Channel,
    spool: Path,
    http: httpx.Client | None = None,
    part_bytes: int = PART_BYTES,
    level: int = ZSTD_LEVEL,
    retry_budget_s: float = 120.0,
    sleep: Callable[[float], None] = time.sleep,
    trigger: SnapshotTrigger = "manual",
    request_id: str | None = None,
    leave_out: list[Path] | None = None,
) -> SnapshotOutcome:
    """Pack, upload and have the control plane verify one snapshot. Never raises for a failed step:
    the outcome says what happened (and the control plane was told, if it could be reached)."""
    client = http or httpx.Client(timeout=120.0, trust_env=False)
    work = spool / snapshot_id
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    try:
        packed = pack(roots, work, part_bytes=part_bytes, level=level, leave_out=leave_out or [])
        timings["pack_s"] = time.monotonic() - t0
        manifest = SnapshotManifest(
            snapshot_id=snapshot_id, lease_id=lease_id, instance_id=instance_id, created_at=utcnow(),
            roots=[str(r) for r in roots], objects=[p.info for p in packed.parts], files=packed.files,
            raw_bytes=packed.raw_bytes, skipped=packed.skipped[:1000])
        manifest_bytes = manifest.model_dump_json().encode()
        t1 = time.monotonic()
        grant: UploadGrant = expect(channel.ask(UploadAsk(snapshot_id=snapshot_id, parts=len(packed.parts),
                                                               trigger=trigger, request_id=request_id),
                                                     retry_budget_s), UploadGrant, "upload")
        timings["grant_s"] = time.monotonic() - t1
        if set(grant.objects) != set(object_names(len(packed.parts))):
            raise SnapshotError("upload: the grant does not name this snapshot's objects")
        t2 = time.monotonic()
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            for f in [pool.submit(upload, client, grant.objects[p.info.name], p.info.name, path=p.path,
                                  retry_budget_s=retry_budget_s, sleep=sleep) for p in packed.parts]:
                f.result()
        upload(client, grant.objects[MANIFEST_OBJECT], MANIFEST_OBJECT, data=manifest_bytes,
                retry_budget_s=retry_budget_s, sleep=sleep)
        timings["upload_s"] = time.monotonic() - t2
        t3 = time.monotonic()
        verdict: Verdict = expect(channel.ask(UploadedAsk(
            snapshot_id=snapshot_id, manifest_sha256=hashlib.sha256(manifest_bytes).hexdigest()), retry_budget_s),
            Verdict, "uploaded")
        timings["verify_s"] = time.monotonic() - t3
    except (SnapshotError, OSError, zstandard.ZstdError, tarfile.TarError) as e:
        detail = str(e)[:400]
        log.error("snapshot failed", snapshot_id=snapshot_id, reason=detail)
        try:
            channel.ask(AbandonedAsk(snapshot_id=snapshot_id, detail=detail), retry_budget_s)
        except SnapshotError as told:
            log.warning("could not report the failed snapshot", snapshot_id=snapshot_id, reason=str(told))
        return SnapshotOutcome(snapshot_id, False, detail, timings={"total_s": time.monotonic() - t0})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    timings["total_s"] = time.monotonic() - t0
    log.info("snapshot taken", snapshot_id=snapshot_id, verified=verdict.verified, files=packed.files,
             raw_bytes=packed.raw_bytes, size_bytes=packed.size_bytes, parts=len(packed.parts),
             skipped=len(packed.skipped), **{k: round(v, 3) for k, v in timings.items()})
    return SnapshotOutcome(snapshot_id, verdict.verified, verdict.detail, packed.files, packed.raw_bytes,
                           packed.size_bytes, tuple(packed.skipped), timings)
