"""on_heartbeat: the instance agent's beat. Token-checked in constant time; drives READY and failover.

A beat carries its components' states: the record becomes READY only when every component it was
launched for is healthy (an instance without a package: at its first beat), and keeps each one's
state and endpoint. A package that cannot run, or a component not healthy by its deadline, fails
the instance: it is deleted and its record ends FAILED with the reason. A beat carrying a preemption
notice launches the replacement and leaves the record live for the preemption grace, so the snapshot
the instance takes on the notice is still answered and verified (``spotleash.decide.preemption``).

The certificate fingerprint of the instance's TLS front is pinned at the first beat that carries one,
like the VAST SSH host key: only an authenticated beat can set it, and a later beat naming another
certificate is refused (409, audited) — the router keeps trusting the first one only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from spotleash.decide import failover, preemption
from spotleash.decide import hibernate as hibernation
from spotleash.decide.heartbeat import notices_preemption, record_beat
from spotleash.errors import SpotleashError, Transient
from spotleash.log import get_logger
from spotleash.model import ENDED, InstanceRecord, Readiness, State, readiness
from spotleash.providers.base import HostKeyLearner
from spotleash.services.context import Context, token_matches
from spotleash.services.launch import request_replacement
from spotleash.services.terminate import terminate
from spotleash.wire.events import Heartbeat
from spotleash.wire.snapshot import SnapshotRequest

log = get_logger(__name__)


@dataclass(frozen=True)
class BeatReply:
    status: int  # HTTP status
    action: str  # "continue" | "stop" | ""
    detail: str = ""
    snapshot: dict[str, Any] | None = None  # the answer to the beat's snapshot ask (spotleash.wire.snapshot)
    # "take a snapshot now": a SnapshotRequest, sent as the reply's SNAPSHOT_REQUEST_FIELD (spotleash.wire.snapshot)
    snapshot_request: SnapshotRequest | None = None


def handle_heartbeat(ctx: Context, beat: Heartbeat, token: str) -> BeatReply:
    """The guards (who beats, for what), the beat recorded in one transaction, then the reply."""
    rec = ctx.store.get(beat.instance_id)
    if rec is None:
        return BeatReply(404, "", "unknown instance")
    now = ctx.now()
    refused = _refused(ctx, rec, beat, token, now)
    if refused is not None:
        return refused
    verdict = readiness(rec.components, rec.package_sha256 is not None, beat.components, beat.failure)
    last_read, updated = _record(ctx, beat, verdict, now)
    if updated is not None and updated.tls_fingerprint and not rec.tls_fingerprint:
        log.info("TLS fingerprint pinned", instance_id=rec.instance_id, fingerprint=updated.tls_fingerprint)
    snap = _answer_snapshot(ctx, updated, beat)
    asked = _snapshot_request(ctx, rec, updated)
    if updated is None:  # the record went meanwhile
        return BeatReply(200, "continue")
    if updated.state == State.READY and rec.state != State.READY:
        _became_ready(ctx, rec, updated, beat, now)
    noticed = last_read is not None and notices_preemption(last_read, beat)
    return _reply(ctx, rec, updated, verdict, noticed=noticed, snap=snap, asked=asked)


def _refused(ctx: Context, rec: InstanceRecord, beat: Heartbeat, token: str, now: datetime) -> BeatReply | None:
    """The reply to a beat that must not be recorded (wrong token, ended instance, another certificate, a
    grace or a lease that is over); None for a beat to record."""
    if not token_matches(token, rec.token_hash) or rec.lease_id != beat.lease_id:
        log.warning("heartbeat with a wrong token", instance_id=beat.instance_id, lease_id=beat.lease_id)
        return BeatReply(401, "", "wrong token")
    if rec.state in ENDED or rec.state == State.TERMINATING:
        return BeatReply(200, "stop", f"instance is {rec.state}")
    if beat.tls_fingerprint and rec.tls_fingerprint and beat.tls_fingerprint != rec.tls_fingerprint:
        ctx.store.audit("tls_fingerprint_refused", "fingerprint differs from the pinned one", now,
                        instance_id=rec.instance_id, lease_id=rec.lease_id, pinned=rec.tls_fingerprint,
                        presented=beat.tls_fingerprint)
        log.warning("heartbeat with another TLS fingerprint than the pinned one; refused",
                    instance_id=rec.instance_id, lease_id=rec.lease_id, pinned=rec.tls_fingerprint,
                    presented=beat.tls_fingerprint)
        return BeatReply(409, "", "TLS fingerprint differs from the one pinned at first contact")
    if preemption.grace_over(rec, now, ctx.settings.preemption_grace_s):
        _end_preempted(ctx, rec)
        return BeatReply(200, "stop", "preempted; its grace is over")
    lease = ctx.store.get_lease(rec.lease_id)
    if lease is None or lease.expired(now):
        # The reaper finds expired leases by query; a lease whose document is gone (lost records) it
        # cannot see, so the instance's own beat is where that is caught.
        reason = "lease_missing" if lease is None else "lease_expired"
        log.warning("heartbeat from an instance whose lease is gone; deleting it", instance_id=rec.instance_id,
                    lease_id=rec.lease_id, reason=reason)
        try:
            terminate(ctx, rec.instance_id, reason, action="heartbeat")
        except Transient as e:  # the reaper retries a stalled delete
            log.warning("delete not yet confirmed", instance_id=rec.instance_id, detail=str(e))
        return BeatReply(200, "stop", reason)
    return None


def _record(ctx: Context, beat: Heartbeat, verdict: Readiness,
            now: datetime) -> tuple[InstanceRecord | None, InstanceRecord | None]:
    """Record the beat in one transaction: the record as the transaction last read it, and as it stands."""
    reads: list[InstanceRecord] = []

    def change(r: InstanceRecord) -> InstanceRecord | None:
        reads.append(r)  # a retried transaction reads again: the last read is the one that was written on
        return record_beat(r, beat, verdict, ctx.settings, now)

    updated = ctx.store.update(beat.instance_id, change)
    return (reads[-1] if reads else None), updated


def _became_ready(ctx: Context, rec: InstanceRecord, updated: InstanceRecord, beat: Heartbeat,
                  now: datetime) -> None:
    endpoints = {n: c.endpoint for n, c in updated.component_states.items()}
    ctx.store.audit("ready", "components healthy" if endpoints else "first heartbeat", now,
                    instance_id=rec.instance_id, lease_id=rec.lease_id, endpoints=endpoints,
                    instance_started_at=beat.started_at.isoformat() if beat.started_at else None,
                    timings=dict(beat.timings))
    _pin_host_key(ctx, updated)
    _awake(ctx, updated)


def _reply(ctx: Context, rec: InstanceRecord, updated: InstanceRecord, verdict: Readiness, *, noticed: bool,
           snap: dict[str, Any] | None, asked: SnapshotRequest | None) -> BeatReply:
    """What the recorded beat tells the instance: stop (preempted, or it cannot run), or continue."""
    if noticed and _failover(ctx, rec):
        return BeatReply(200, "stop", "preempted; a replacement is asked for", snapshot=snap)
    if updated.preempted:
        # "stop": the agent stops beating and, once its preemption snapshot is done (its asks are still
        # answered while the grace lasts), stops its components — the router sends them nothing any more.
        return BeatReply(200, "stop", "preempted; a replacement is asked for, snapshot asks are answered "
                         f"for {ctx.settings.preemption_grace_s:.0f} s", snapshot=snap)
    if verdict.failure is not None:
        reason, detail = verdict.failure
        _fail_unusable(ctx, updated, reason, detail)
        return BeatReply(200, "stop", reason, snapshot=snap)
    return BeatReply(200, "continue", snapshot=snap, snapshot_request=asked)


def _snapshot_request(ctx: Context, before: InstanceRecord, rec: InstanceRecord | None) -> SnapshotRequest | None:
    """Audit a request the beat opened or called off; the reply's ``snapshot_request`` while it is open."""
    if rec is None:
        return None
    old, new = before.snapshot_request, rec.snapshot_request
    now = ctx.now()
    if new is not None and (old is None or old.request_id != new.request_id):
        ctx.store.audit("snapshot_requested", new.reason, now, instance_id=rec.instance_id, lease_id=rec.lease_id,
                        request_id=new.request_id, idle_s=rec.idle_s)
        log.info("snapshot requested", instance_id=rec.instance_id, lease_id=rec.lease_id, reason=new.reason,
                 request_id=new.request_id, idle_s=rec.idle_s)
    elif old is not None and old.reason == "hibernate" and (new is None or new.reason != "hibernate"):
        ctx.store.audit("hibernation_called_off", "the instance is busy again", now, instance_id=rec.instance_id,
                        lease_id=rec.lease_id, request_id=old.request_id, idle_s=rec.idle_s)
    if new is None or new.served:
        return None
    if not hibernation.is_open(rec, ctx.store.snapshots_of_lease(rec.lease_id)):
        ctx.store.update(rec.instance_id, lambda r: r.model_copy(update={
            "snapshot_request": new.model_copy(update={"served": True})})
            if r.snapshot_request is not None and r.snapshot_request.request_id == new.request_id else None)
        return None
    return SnapshotRequest(request_id=new.request_id, reason=new.reason)


def _awake(ctx: Context, rec: InstanceRecord) -> None:
    """An instance of the lease is READY: a hibernated lease is awake; a replacement's phases are written down."""
    if ctx.store.get_hibernation(rec.lease_id) is not None:
        ctx.store.delete_hibernation(rec.lease_id)
        ctx.store.audit("woke", "an instance of the lease is ready", ctx.now(), instance_id=rec.instance_id,
                        lease_id=rec.lease_id)
    if rec.replaces:
        timings = failover.phases(rec)
        ctx.store.audit("failover_ready", "replacement ready", ctx.now(), instance_id=rec.instance_id,
                        lease_id=rec.lease_id, replaces=rec.replaces, **timings)
        log.info("failover complete", instance_id=rec.instance_id, replaces=rec.replaces, **timings)


def _answer_snapshot(ctx: Context, rec: InstanceRecord | None, beat: Heartbeat) -> dict[str, Any] | None:
    if beat.snapshot is None or rec is None:
        return None
    from spotleash.services.snapshots import answer  # Cloud Storage's client only when a beat asks

    return answer(ctx, rec, beat.snapshot).model_dump(mode="json")


def _fail_unusable(ctx: Context, rec: InstanceRecord, reason: str, detail: str) -> None:
    """The instance cannot do the job it was rented for: delete it (nobody pays for a broken box)."""
    ctx.store.audit("launch_failed", reason, ctx.now(), instance_id=rec.instance_id, lease_id=rec.lease_id,
                    provider=rec.provider, detail=detail)
    log.warning("instance cannot run its components; deleting it", instance_id=rec.instance_id,
                lease_id=rec.lease_id, reason=reason, detail=detail)
    end = State.TERMINATED if rec.state == State.READY else State.FAILED  # READY: it did work for a while
    try:
        terminate(ctx, rec.instance_id, f"{reason}: {detail}"[:600], action="launch_cleanup", end=end)
    except Transient as e:  # the reaper retries a stalled delete
        log.warning("delete not yet confirmed", instance_id=rec.instance_id, detail=str(e))


def _pin_host_key(ctx: Context, rec: InstanceRecord) -> None:
    """Learn the box's SSH host key at first contact and keep it with the record (never auto-add later)."""
    provider = ctx.provider(rec.provider)
    if rec.host_key or rec.provider_id is None or not isinstance(provider, HostKeyLearner):
        return
    try:
        inst = provider.get(rec.provider_id)
        if inst is None or not inst.ssh_host or not inst.ssh_port:
            return
        key = provider.learn_host_key(inst.ssh_host, inst.ssh_port, timeout_s=5.0)
    except (SpotleashError, OSError) as e:  # the next session can learn it; not fatal
        log.warning("could not learn the SSH host key", instance_id=rec.instance_id, detail=str(e))
        return
    ctx.store.update(rec.instance_id, lambda r: r.model_copy(update={
        "host_key": key, "ssh_host": inst.ssh_host, "ssh_port": inst.ssh_port}))
    log.info("SSH host key pinned", instance_id=rec.instance_id, key_type=key.split()[0])


def _failover(ctx: Context, rec: InstanceRecord) -> bool:
    """The provider is taking this instance back: record it, ask for a replacement if still wanted. The record
    lives on for the preemption grace (``spotleash.decide.preemption``) so the snapshot the instance takes on its
    notice can still be uploaded and verified. True when it was ended at once: no grace configured and the
    failover demand published (unpublished, it is left live: the reaper ends it and asks again)."""
    ctx.store.audit("preempted", "preemption notice", ctx.now(), instance_id=rec.instance_id,
                    lease_id=rec.lease_id, provider=rec.provider, grace_s=ctx.settings.preemption_grace_s)
    try:
        request_replacement(ctx, rec, "preempted")
    except SpotleashError as e:  # not the beat's failure: the reaper asks again when it ends this record
        log.warning("failover demand not published; the reaper will ask again", instance_id=rec.instance_id,
                    detail=str(e)[:300])
        return False
    if ctx.settings.preemption_grace_s > 0:
        return False
    _end_preempted(ctx, rec)
    return True


def _end_preempted(ctx: Context, rec: InstanceRecord) -> None:
    try:
        terminate(ctx, rec.instance_id, "preempted", action="preempted")
    except Transient as e:  # the provider deletes preempted instances itself; the reaper confirms later
        log.warning("preempted instance not yet confirmed gone", instance_id=rec.instance_id, detail=str(e))
