"""Failover, in-process: every loss of an instance whose lease is alive is replaced; the old record says why
it ended and names its replacement; the replacement carries its phase timings.

Losses: deleted behind our back (``vanished``), silent (``heartbeat_lost``), outbid or stopped
(``stopped_at_provider``) — the provider's verdict ranking above silence — and preempted (heartbeat notice,
tested in test_heartbeat_service.py).
"""

from __future__ import annotations

from tests.support.builders import MakeCtx, actions, beat, launched, open_lease, record_of
from tests.support.clock import FakeClock
from tests.support.fake_provider import FakeProvider, FakeSshProvider
from tests.support.memory_store import MemoryStore

from spotleash.dashboard.status import as_json
from spotleash.decide.failover import phases
from spotleash.model import InstanceRecord, SnapshotRecord, SnapshotState, State
from spotleash.providers.base import ProviderStatus
from spotleash.services.context import Context
from spotleash.services.heartbeat import handle_heartbeat
from spotleash.services.reap import ReapReport, run_reap
from spotleash.wire.events import Heartbeat, ReapTick
from spotleash.wire.snapshot import RestoreAsk, RestoredAsk


def reap(ctx: Context) -> ReapReport:
    return run_reap(ctx, ReapTick(event_id="tick-1"))


def beaten(ctx: Context, rec: InstanceRecord) -> InstanceRecord:
    """The instance beats once (READY: no package), as a working instance does."""
    assert handle_heartbeat(ctx, beat(rec), ctx.heartbeat_token(rec.instance_id)).status == 200
    return record_of(ctx.store, rec.instance_id)


def replacement_of(store: MemoryStore, old: InstanceRecord) -> InstanceRecord:
    done = record_of(store, old.instance_id)
    assert done.replaced_by is not None, f"{old.instance_id} was not replaced ({done.state}, {done.reason})"
    new = record_of(store, done.replaced_by)
    assert new.replaces == old.instance_id and new.lease_id == old.lease_id
    return new


def test_a_vm_deleted_behind_our_back_is_replaced_at_the_next_reap(ctx: Context, store: MemoryStore,
                                                                   gce: FakeProvider, clock: FakeClock) -> None:
    rec = beaten(ctx, launched(ctx))
    clock.advance(70)  # two beats missed: well inside the 180 s heartbeat timeout
    open_lease(ctx)  # the agent is alive and still wants the capacity
    gce.vanish(rec.provider_id or "")  # `gcloud compute instances delete` by someone else
    report = reap(ctx)
    assert [(d.reason, d.instance_id) for d in report.plan.decisions] == [("vanished", rec.instance_id)]
    old = record_of(store, rec.instance_id)
    assert old.state is State.TERMINATED and old.reason == "vanished"
    new = replacement_of(store, rec)
    assert new.state is State.RUNNING and gce.by_instance_id(new.instance_id) is not None
    assert new.lost_at == rec.last_heartbeat  # detection runs from the lost one's last sign of life
    assert ("failover", "vanished") in actions(store, rec.instance_id)


def test_a_silent_instance_is_replaced_while_its_lease_wants_it(ctx: Context, store: MemoryStore,
                                                                gce: FakeProvider, clock: FakeClock) -> None:
    rec = beaten(ctx, launched(ctx))
    clock.advance(181)  # still listed RUNNING, but silent past the timeout (a hung agent)
    open_lease(ctx)
    reap(ctx)
    old = record_of(store, rec.instance_id)
    assert old.state is State.TERMINATED and old.reason == "heartbeat_lost"
    new = replacement_of(store, rec)
    assert gce.by_instance_id(rec.instance_id) is None and gce.by_instance_id(new.instance_id) is not None


def test_an_instance_that_never_beat_is_not_replaced(ctx: Context, store: MemoryStore, gce: FakeProvider,
                                                     clock: FakeClock) -> None:
    rec = launched(ctx)  # RUNNING, but its agent never reached us: a broken boot
    clock.advance(181)
    open_lease(ctx)
    reap(ctx)
    old = record_of(store, rec.instance_id)
    assert old.reason == "heartbeat_lost" and old.replaced_by is None and gce.instances == {}
    skipped = [e for e in store.audit_entries(rec.instance_id) if e["action"] == "failover_skipped"]
    assert len(skipped) == 1 and "never sent a heartbeat" in skipped[0]["detail"]


def test_an_outbid_box_silent_past_the_timeout_is_stopped_at_provider_and_replaced(
        ctx: Context, store: MemoryStore, vast: FakeSshProvider, clock: FakeClock) -> None:
    rec = beaten(ctx, launched(ctx, gpu=True))
    vast.take_back(rec.provider_id or "", ProviderStatus.STOPPED, "outbid")
    clock.advance(500)  # the reap came late: the silence is past the timeout too
    open_lease(ctx)
    report = reap(ctx)
    assert [d.reason for d in report.plan.decisions] == ["stopped_at_provider"]
    assert record_of(store, rec.instance_id).reason == "stopped_at_provider"
    assert replacement_of(store, rec).provider == "vast"


def test_no_replacement_once_the_lease_is_gone(ctx: Context, store: MemoryStore, gce: FakeProvider,
                                               clock: FakeClock) -> None:
    rec = beaten(ctx, launched(ctx))
    gce.vanish(rec.provider_id or "")
    clock.advance(100)  # the 90 s lease was not renewed: the agent is gone too
    reap(ctx)
    old = record_of(store, rec.instance_id)
    assert old.reason == "lease_expired" and old.replaced_by is None and gce.instances == {}


def test_the_lost_instance_does_not_count_against_the_lease_limit(make_ctx: MakeCtx, store: MemoryStore,
                                                                  gce: FakeProvider, clock: FakeClock) -> None:
    ctx = make_ctx(max_instances_per_lease=1)
    rec = beaten(ctx, launched(ctx))
    clock.advance(70)
    open_lease(ctx)
    gce.vanish(rec.provider_id or "")
    reap(ctx)
    assert replacement_of(store, rec).state is State.RUNNING


def test_the_replacement_records_its_phases(ctx: Context, store: MemoryStore, gce: FakeProvider,
                                            clock: FakeClock) -> None:
    rec = beaten(ctx, launched(ctx))
    clock.advance(70)
    open_lease(ctx)
    gce.vanish(rec.provider_id or "")
    reap(ctx)
    new = replacement_of(store, rec)
    clock.advance(12)  # boot: RUNNING → its agent's first beat, which asks what to restore
    handle_heartbeat(ctx, beat(new), ctx.heartbeat_token(new.instance_id))
    clock.advance(5)
    restored = Heartbeat(lease_id=new.lease_id, instance_id=new.instance_id,
                         snapshot=RestoredAsk(snapshot_id="s1", seconds=4.5, raw_bytes=10))
    handle_heartbeat(ctx, restored, ctx.heartbeat_token(new.instance_id))
    done = record_of(store, new.instance_id)
    assert done.restore_s == 4.5 and done.state is State.READY
    got = phases(done)
    assert got["detection_s"] == 70.0 and got["boot_s"] == 12.0 and got["restore_s"] == 4.5
    assert got["provisioning_s"] == 0.0  # the fake provider answers at once; a real one waits here
    assert got["total_s"] == 70.0 + 12.0 + 0.0  # READY at the first beat: no package to wait for
    assert as_json(done, clock.now)["failover_phases"] == got  # what `spotleash status --json` shows
    ready = [e for e in store.audit_entries(new.instance_id) if e["action"] == "failover_ready"]
    assert len(ready) == 1 and ready[0]["replaces"] == rec.instance_id and ready[0]["detection_s"] == 70.0



def test_a_replacement_restores_only_once_the_preempted_ones_snapshot_has_its_verdict(
        ctx: Context, store: MemoryStore, clock: FakeClock) -> None:
    """The adapter of ``spotleash.decide.preemption.restore_hold``: the replacement's restore ask is told to wait
    while its preempted predecessor is saving (the lease keeps state: it has a snapshot), then answered."""
    old = beaten(ctx, launched(ctx))
    store.put_snapshot(SnapshotRecord(snapshot_id="s-old", lease_id=old.lease_id, instance_id=old.instance_id,
                                      deployment_id=old.deployment_id, state=SnapshotState.FAILED,
                                      created_at=clock.now, updated_at=clock.now, trigger="periodic"))
    clock.advance(5)
    assert handle_heartbeat(ctx, beat(old, preempted=True), ctx.heartbeat_token(old.instance_id)).action == "stop"
    new = replacement_of(store, old)
    asking = beat(new).model_copy(update={"snapshot": RestoreAsk()})
    waiting = handle_heartbeat(ctx, asking, ctx.heartbeat_token(new.instance_id)).snapshot
    assert waiting is not None and waiting["kind"] == "restore_wait" and old.instance_id in waiting["detail"]
    store.put_snapshot(SnapshotRecord(snapshot_id="s-pre", lease_id=old.lease_id, instance_id=old.instance_id,
                                      deployment_id=old.deployment_id, state=SnapshotState.FAILED,
                                      created_at=clock.now, updated_at=clock.now, trigger="preempted"))
    answered = handle_heartbeat(ctx, asking, ctx.heartbeat_token(new.instance_id)).snapshot
    assert answered == {"kind": "restore_grant", "snapshot_id": None, "manifest_sha256": None, "objects": {},
                        "expires_at": None}  # nothing verified to restore: the components start empty


def test_a_preempted_one_ends_as_preempted_at_the_reap_once_its_vm_is_gone(
        ctx: Context, store: MemoryStore, gce: FakeProvider, clock: FakeClock) -> None:
    old = beaten(ctx, launched(ctx))
    handle_heartbeat(ctx, beat(old, preempted=True), ctx.heartbeat_token(old.instance_id))
    clock.advance(70)  # two beats missed: the reap looks at it
    open_lease(ctx)
    gce.vanish(old.provider_id or "")  # GCE deleted it at the end of its notice
    assert [(d.reason, d.detail.split("; ")[-1]) for d in reap(ctx).plan.decisions] == [
        ("preempted", "the provider took it")]
    done = record_of(store, old.instance_id)
    assert done.state is State.TERMINATED and done.reason == "preempted" and done.replaced_by is not None
    assert [a for a, _ in actions(store, old.instance_id)].count("failover") == 1
