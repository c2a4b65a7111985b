"""The control plane's side of snapshots: issue URLs, verify and record, retention, restore choice,
and the hibernation guard.

It answers the ``snapshot`` ask a heartbeat carries (``answer``; ``spotleash.wire.snapshot`` has
the protocol and why signed URLs). It signs URLs and reads manifests (small); the bulk bytes move
between the instance and Cloud Storage only.

The decisions are pure functions of the records, in ``spotleash.decide.snapshots``.

A snapshot is VERIFIED only when its manifest's sha256 is the one the instance reported and every
part it lists is in the bucket with the manifest's size and MD5 (Cloud Storage computes the MD5 of
what it stored, so this checks the bytes without reading them).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta

from spotleash.adapters.storage import Storage, StorageError, StorageTransient
from spotleash.decide.preemption import restore_hold
from spotleash.decide.snapshots import check_manifest, choose_restore, retention_plan
from spotleash.errors import SpotleashError
from spotleash.log import get_logger
from spotleash.model import InstanceRecord, SnapshotRecord, SnapshotState, State
from spotleash.services.context import Context
from spotleash.wire.snapshot import (
    MANIFEST_OBJECT,
    AbandonedAsk,
    Noted,
    Refused,
    RestoreAsk,
    RestoredAsk,
    RestoreGrant,
    RestoreWait,
    SnapshotAsk,
    SnapshotReply,
    Transfer,
    UploadAsk,
    UploadedAsk,
    UploadGrant,
    Verdict,
    object_names,
    object_prefix,
)

log = get_logger(__name__)

_SNAPSHOT_WRITERS = (State.PROVISIONING, State.RUNNING, State.READY)  # PROVISIONING: restore runs before READY


# ------------------------------------------------------------------------------------------ the ask


def answer(ctx: Context, rec: InstanceRecord, ask: SnapshotAsk) -> SnapshotReply:
    """The reply to one heartbeat's snapshot ask from ``rec``'s instance (token already checked)."""
    if rec.state not in _SNAPSHOT_WRITERS:
        return Refused(detail=f"instance is {rec.state}")
    try:
        if isinstance(ask, UploadAsk):
            return _issue_upload(ctx, rec, ask)
        if isinstance(ask, UploadedAsk):
            return _verify(ctx, rec, ask)
        if isinstance(ask, AbandonedAsk):
            return _abandoned(ctx, rec, ask)
        if isinstance(ask, RestoreAsk):
            return _issue_restore(ctx, rec, ask)
        return _restored(ctx, rec, ask)
    except SpotleashError as e:  # Cloud Storage or Firestore unavailable: the instance asks again later
        log.warning("snapshot ask not answered", instance_id=rec.instance_id, op=ask.op, detail=str(e)[:300])
        return Refused(detail=f"try again later: {str(e)[:400]}")


def _owned(ctx: Context, rec: InstanceRecord, snapshot_id: str) -> SnapshotRecord | None:
    snap = ctx.store.get_snapshot(snapshot_id)
    if snap is None or snap.lease_id != rec.lease_id or snap.instance_id != rec.instance_id:
        return None
    return snap


def _transfers(storage: Storage, names: Iterable[str], method: str, ttl_s: float) -> dict[str, Transfer]:
    out: dict[str, Transfer] = {}
    for name in names:
        r = storage.signed_request(name, method, expires_s=ttl_s)
        out[name.rsplit("/", 1)[-1]] = Transfer(method=r.method, url=r.url, headers=r.headers)
    return out


def _issue_upload(ctx: Context, rec: InstanceRecord, ask: UploadAsk) -> SnapshotReply:
    now = ctx.now()
    existing = ctx.store.get_snapshot(ask.snapshot_id)
    if existing is not None and (existing.instance_id != rec.instance_id or existing.state is not SnapshotState.UPLOADING
                                 or existing.parts != ask.parts):
        return Refused(detail=f"snapshot {ask.snapshot_id} exists already ({existing.state})")
    prefix = object_prefix(rec.lease_id, ask.snapshot_id)
    names = [prefix + n for n in object_names(ask.parts)]
    if existing is None:  # recorded before any URL leaves: an abandoned upload is found and cleaned up
        ctx.store.put_snapshot(SnapshotRecord(
            snapshot_id=ask.snapshot_id, lease_id=rec.lease_id, instance_id=rec.instance_id,
            deployment_id=rec.deployment_id, state=SnapshotState.UPLOADING, created_at=now, updated_at=now,
            parts=ask.parts, objects=names, trigger=ask.trigger))
        ctx.store.audit("snapshot_started", "instance asked", now, instance_id=rec.instance_id,
                        lease_id=rec.lease_id, snapshot_id=ask.snapshot_id, parts=ask.parts)
    ttl = ctx.settings.snapshot_url_ttl_s
    return UploadGrant(snapshot_id=ask.snapshot_id, objects=_transfers(ctx.bucket(), names, "PUT", ttl),
                       expires_at=now + timedelta(seconds=ttl))


def _fail(ctx: Context, snap: SnapshotRecord, reason: str, action: str = "snapshot_failed") -> None:
    now = ctx.now()
    ctx.store.put_snapshot(snap.model_copy(update={"state": SnapshotState.FAILED, "reason": reason[:500],
                                                   "updated_at": now}))
    ctx.store.audit(action, reason[:500], now, instance_id=snap.instance_id, lease_id=snap.lease_id,
                    snapshot_id=snap.snapshot_id)
    ctx.store.audit("alert", "snapshot_failed", now, instance_id=snap.instance_id, lease_id=snap.lease_id,
                    snapshot_id=snap.snapshot_id, detail=reason[:500])
    log.error("snapshot failed; the instance keeps running", instance_id=snap.instance_id,
              lease_id=snap.lease_id, snapshot_id=snap.snapshot_id, reason=reason[:300])


def _verify(ctx: Context, rec: InstanceRecord, ask: UploadedAsk) -> SnapshotReply:
    snap = _owned(ctx, rec, ask.snapshot_id)
    if snap is None:
        return Refused(detail=f"no snapshot {ask.snapshot_id} of this instance")
    if snap.state is SnapshotState.VERIFIED and snap.manifest_sha256 == ask.manifest_sha256:
        return Verdict(snapshot_id=snap.snapshot_id, verified=True, detail="verified already")  # a retried ask
    if snap.state is not SnapshotState.UPLOADING:
        return Verdict(snapshot_id=snap.snapshot_id, verified=False, detail=f"snapshot is {snap.state}")
    storage = ctx.bucket()
    prefix = object_prefix(snap.lease_id, snap.snapshot_id)
    try:
        data, _ = storage.read_bytes(prefix + MANIFEST_OBJECT)
        manifest = check_manifest(data, ask.manifest_sha256, snap)
        for o in manifest.objects:
            info = storage.stat(prefix + o.name)
            if info is None:
                raise ValueError(f"{o.name} is not in the bucket")
            if info.size != o.size or (info.md5 is not None and info.md5 != o.md5):
                raise ValueError(f"{o.name} in the bucket ({info.size} bytes, md5 {info.md5}) is not the manifest's "
                                 f"({o.size} bytes, md5 {o.md5})")
    except StorageTransient:
        raise  # answered "try again later"; the snapshot stays UPLOADING
    except (ValueError, StorageError) as e:
        _fail(ctx, snap, f"verification failed: {e}")
        return Verdict(snapshot_id=snap.snapshot_id, verified=False, detail=str(e)[:500])
    now = ctx.now()
    done = snap.model_copy(update={
        "state": SnapshotState.VERIFIED, "verified_at": now, "updated_at": now, "manifest_sha256": ask.manifest_sha256,
        "size_bytes": manifest.size_bytes + len(data), "raw_bytes": manifest.raw_bytes, "files": manifest.files})
    ctx.store.put_snapshot(done)
    ctx.store.audit("snapshot_verified", "every part matches its manifest", now, instance_id=rec.instance_id,
                    lease_id=rec.lease_id, snapshot_id=snap.snapshot_id, size_bytes=done.size_bytes,
                    raw_bytes=done.raw_bytes, files=done.files, skipped=len(manifest.skipped))
    apply_retention(ctx, rec.lease_id)
    return Verdict(snapshot_id=snap.snapshot_id, verified=True)


def _abandoned(ctx: Context, rec: InstanceRecord, ask: AbandonedAsk) -> SnapshotReply:
    snap = _owned(ctx, rec, ask.snapshot_id)
    if snap is not None and snap.state is SnapshotState.UPLOADING:
        _fail(ctx, snap, f"the instance gave up: {ask.detail}" if ask.detail else "the instance gave up")
    elif snap is None:  # failed before it asked for URLs (packing): still an alert, nothing to clean
        now = ctx.now()
        ctx.store.audit("alert", "snapshot_failed", now, instance_id=rec.instance_id, lease_id=rec.lease_id,
                        snapshot_id=ask.snapshot_id, detail=ask.detail)
    return Noted()


def _issue_restore(ctx: Context, rec: InstanceRecord, ask: RestoreAsk) -> SnapshotReply:
    now = ctx.now()
    for sid, why in ask.failed.items():
        snap = ctx.store.get_snapshot(sid)
        if snap is None or snap.lease_id != rec.lease_id or snap.state is not SnapshotState.VERIFIED:
            continue
        ctx.store.put_snapshot(snap.model_copy(update={"state": SnapshotState.CORRUPT, "reason": why[:500],
                                                       "updated_at": now}))
        ctx.store.audit("snapshot_corrupt", why[:500], now, instance_id=rec.instance_id, lease_id=rec.lease_id,
                        snapshot_id=sid, detail="falling back to the snapshot before it")
        log.error("snapshot found corrupt at restore; falling back", lease_id=rec.lease_id, snapshot_id=sid,
                  reason=why[:300])
    snaps = ctx.store.snapshots_of_lease(rec.lease_id)
    hold = restore_hold(rec.instance_id, ctx.store.instances_of_lease(rec.lease_id) if snaps else [], snaps, now,
                        ctx.settings.preemption_grace_s)
    if hold is not None:
        log.info("restore waits for a preempted instance's snapshot", instance_id=rec.instance_id,
                 lease_id=rec.lease_id, waiting_for=hold.waiting_for, until=hold.until.isoformat())
        return RestoreWait(retry_after_s=hold.retry_after_s(now), detail=hold.detail)
    chosen = choose_restore(snaps, ask.failed)
    pin = ctx.store.get_restore_pin(rec.lease_id)
    pinned = next((s for s in snaps if pin is not None and s.snapshot_id == pin.snapshot_id
                   and s.state is SnapshotState.VERIFIED and s.snapshot_id not in ask.failed), None)
    if pin is not None and pinned is None:
        ctx.store.audit("alert", "restore_pin_unusable", now, instance_id=rec.instance_id, lease_id=rec.lease_id,
                        snapshot_id=pin.snapshot_id, detail="the pinned snapshot is not verified (or was found "
                        "corrupt): restoring the latest verified one instead")
    chosen = pinned or chosen
    if chosen is None:
        if ask.failed:
            ctx.store.audit("alert", "no_restorable_snapshot", now, instance_id=rec.instance_id,
                            lease_id=rec.lease_id, failed=sorted(ask.failed))
        return RestoreGrant()
    ttl = ctx.settings.snapshot_url_ttl_s
    ctx.store.audit("restore_granted", "pinned" if pinned else "fallback" if ask.failed else "latest verified", now,
                    instance_id=rec.instance_id, lease_id=rec.lease_id, snapshot_id=chosen.snapshot_id,
                    fell_back_from=sorted(ask.failed))
    return RestoreGrant(snapshot_id=chosen.snapshot_id, manifest_sha256=chosen.manifest_sha256,
                        objects=_transfers(ctx.bucket(), chosen.objects, "GET", ttl),
                        expires_at=now + timedelta(seconds=ttl))


def _restored(ctx: Context, rec: InstanceRecord, ask: RestoredAsk) -> SnapshotReply:
    took = round(ask.seconds, 3)
    ctx.store.update(rec.instance_id, lambda r: r.model_copy(update={"restore_s": took}) if r.live else None)
    pin = ctx.store.get_restore_pin(rec.lease_id) if ask.snapshot_id else None
    if pin is not None and pin.snapshot_id == ask.snapshot_id:
        ctx.store.delete_restore_pin(rec.lease_id)  # served: later instances restore the latest again
    ctx.store.audit("restored" if ask.snapshot_id else "restore_skipped",
                    "snapshot restored" if ask.snapshot_id else "no verified snapshot", ctx.now(),
                    instance_id=rec.instance_id, lease_id=rec.lease_id, snapshot_id=ask.snapshot_id,
                    seconds=round(ask.seconds, 3), raw_bytes=ask.raw_bytes, waited_s=round(ask.waited_s, 3))
    return Noted()


# ------------------------------------------------------------------------------------------ retention


def apply_retention(ctx: Context, lease_id: str) -> list[str]:
    """Delete what ``retention_plan`` names (objects first, then the record says DELETED); the ids.

    A Cloud Storage failure leaves the rest for the next verified snapshot's run."""
    settings = ctx.settings
    now = ctx.now()
    doomed = retention_plan(ctx.store.snapshots_of_lease(lease_id), settings.snapshot_keep, now,
                            timedelta(seconds=settings.snapshot_upload_timeout_s))
    storage = ctx.bucket()
    gone: list[str] = []
    for snap in doomed:
        try:  # the names it recorded (every URL it issued), not a listing: no list permission needed
            for name in snap.objects:
                storage.delete_if_present(name)
        except StorageError as e:
            log.warning("snapshot retention stopped; retried next time", lease_id=lease_id,
                        snapshot_id=snap.snapshot_id, detail=str(e)[:300])
            break
        ctx.store.put_snapshot(snap.model_copy(update={"state": SnapshotState.DELETED, "updated_at": now}))
        ctx.store.audit("snapshot_deleted", f"retention (keep {settings.snapshot_keep})" if snap.state is
                        SnapshotState.VERIFIED else f"retention ({str(snap.state).lower()})", now,
                        lease_id=lease_id, snapshot_id=snap.snapshot_id, instance_id=snap.instance_id)
        gone.append(snap.snapshot_id)
    return gone
