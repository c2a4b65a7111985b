"""Hibernation, carried out by the reaper: destroy an idle instance once its snapshot is verified.

The heartbeat opens a ``hibernate`` request when an instance reports ``idle_s >= idle_after``
(``spotleash.decide.hibernate.after_beat``) and calls it off when it is busy again; the instance snapshots
and uploads; each reap then asks ``may_destroy_for_hibernation`` about every instance with such a
request. Verified → the lease is recorded HIBERNATED (``Hibernation``: the snapshot's id, size, age)
and the box destroyed. Failed → the box keeps running, an alert is raised and the request renewed, so
the next beat asks again. Never started (an instance that does not answer), or an upload unfinished
(an agent killed mid-upload) → the same, once the upload timeout has passed. Past the max-runtime deadline the reaper's own ``max_runtime`` decision wins.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from spotleash.decide.hibernate import is_idle, new_request
from spotleash.decide.snapshots import may_destroy_for_hibernation
from spotleash.errors import SpotleashError, Transient
from spotleash.log import get_logger
from spotleash.model import Hibernation, InstanceRecord, SnapshotRecord
from spotleash.services.context import Context
from spotleash.services.terminate import terminate

log = get_logger(__name__)


def run_hibernations(ctx: Context, skip: Iterable[str | None] = (),
                     pending: Iterable[InstanceRecord] | None = None) -> list[str]:
    """One pass over the instances asked to hibernate (``skip``: those the reap already decided on; ``pending``:
    ``Store.hibernation_pending()`` if the caller read it already). Returns the instance ids destroyed."""
    if ctx.settings.idle_after_s <= 0:
        return []
    done: list[str] = []
    skipped = set(skip)
    for rec in ctx.store.hibernation_pending() if pending is None else pending:
        if rec.instance_id in skipped:
            continue
        try:
            if hibernate_one(ctx, rec):
                done.append(rec.instance_id)
        except SpotleashError as e:  # one failure must not stop the others; the next reap retries
            log.warning("hibernation step failed; retried at the next reap", instance_id=rec.instance_id,
                        detail=str(e)[:300])
    return done


def hibernate_one(ctx: Context, rec: InstanceRecord) -> bool:
    """Destroy ``rec`` if its hibernation snapshot is verified (and it is still idle); True if destroyed."""
    req = rec.snapshot_request
    now = ctx.now()
    if req is None or req.reason != "hibernate" or not is_idle(rec.idle_s, ctx.settings):
        return False
    snaps = ctx.store.snapshots_of_lease(rec.lease_id)
    verdict = may_destroy_for_hibernation(rec, snaps, now, requested_at=req.requested_at)
    if verdict.reason == "max_runtime_cap":
        return False  # the reaper's max_runtime decision deletes it (the cap is not hibernation)
    if verdict.destroy and verdict.snapshot_id is not None:
        snap = next(s for s in snaps if s.snapshot_id == verdict.snapshot_id)
        _record_hibernation(ctx, rec, snap, now)
        try:
            terminate(ctx, rec.instance_id, "hibernated", action="hibernate")
        except Transient as e:  # TERMINATING: the reaper retries the stalled delete
            log.warning("hibernated instance not yet confirmed gone", instance_id=rec.instance_id, detail=str(e))
        return True
    limit = timedelta(seconds=ctx.settings.snapshot_upload_timeout_s)
    began = next((s.created_at for s in snaps if s.snapshot_id == verdict.snapshot_id), req.requested_at)
    stale = now - (began if verdict.reason == "snapshot_in_progress" else req.requested_at) > limit
    if verdict.reason == "snapshot_failed" or (verdict.reason in ("no_snapshot", "snapshot_in_progress") and stale):
        _retry(ctx, rec, verdict.reason, verdict.snapshot_id, now)
    return False


def _record_hibernation(ctx: Context, rec: InstanceRecord, snap: SnapshotRecord, now: datetime) -> None:
    ctx.store.put_hibernation(Hibernation(
        lease_id=rec.lease_id, deployment_id=rec.deployment_id, snapshot_id=snap.snapshot_id,
        instance_id=rec.instance_id, components=list(rec.components), snapshot_created_at=snap.created_at,
        size_bytes=snap.size_bytes, raw_bytes=snap.raw_bytes, hibernated_at=now))
    ctx.store.audit("hibernated", "idle; snapshot verified", now, instance_id=rec.instance_id, lease_id=rec.lease_id,
                    snapshot_id=snap.snapshot_id, size_bytes=snap.size_bytes, idle_s=rec.idle_s)
    log.info("hibernating: snapshot verified, destroying the instance", instance_id=rec.instance_id,
             lease_id=rec.lease_id, snapshot_id=snap.snapshot_id, size_bytes=snap.size_bytes)


def _retry(ctx: Context, rec: InstanceRecord, why: str, snapshot_id: str | None, now: datetime) -> None:
    """The box stays up; someone is told (the audit's alert, an error log line, and ``spotleash status`` through
    the renewed request's ``postponed``); the next beat asks for a snapshot again."""
    limit = f"{ctx.settings.snapshot_upload_timeout_s:.0f}s"
    detail = {"snapshot_failed": "its snapshot failed",
              "snapshot_in_progress": f"its snapshot's upload did not finish within {limit}"}.get(
                  why, f"no snapshot began within {limit} of the request")
    again = new_request(rec, "hibernate", now, by="reaper").model_copy(update={"postponed": detail})
    ctx.store.update(rec.instance_id, lambda r: r.model_copy(update={"snapshot_request": again})
                     if r.live and r.snapshot_request is not None and r.snapshot_request.reason == "hibernate"
                     else None)
    ctx.store.audit("alert", "hibernation_snapshot_failed", now, instance_id=rec.instance_id, lease_id=rec.lease_id,
                    snapshot_id=snapshot_id, detail=f"{detail}; the instance keeps running, asked again",
                    request_id=again.request_id)
    log.error("hibernation postponed: no verified snapshot; the instance keeps running", instance_id=rec.instance_id,
              lease_id=rec.lease_id, snapshot_id=snapshot_id, reason=why)
