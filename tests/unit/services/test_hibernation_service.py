"""Auto-hibernation and snapshot requests, in-process: idle beats → a ``hibernate`` request in the heartbeat
reply → the reaper destroys the box only once that snapshot is verified → the lease is HIBERNATED until an
instance of it is READY again. A failed snapshot keeps the box, alerts and asks again; the cap still wins.

Snapshot records are written to the store as the snapshot service writes them (its verification against
Cloud Storage is tested in tests/emulator/test_snapshots.py).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from tests.support.builders import MakeCtx, actions, launched, open_lease, record_of
from tests.support.clock import FakeClock
from tests.support.fake_provider import FakeProvider
from tests.support.memory_store import MemoryStore

from spotleash.config import load_settings
from spotleash.dashboard import status as status_view
from spotleash.errors import ConfigError
from spotleash.model import InstanceRecord, SnapshotRecord, SnapshotState, State
from spotleash.services.context import Context
from spotleash.services.heartbeat import BeatReply, handle_heartbeat
from spotleash.services.reap import run_reap
from spotleash.wire.events import Heartbeat, ReapTick

IDLE_AFTER = 600.0


@pytest.fixture
def hctx(make_ctx: MakeCtx) -> Context:
    """Hibernation on. (The bucket is named for the start check; nothing here reaches Cloud Storage.)"""
    return make_ctx(idle_after_s=IDLE_AFTER, package_bucket="bkt")


def ready(ctx: Context, make_ctx: MakeCtx) -> InstanceRecord:
    rec = launched(make_ctx())  # launched without a package (no bucket), then served by the hibernating ctx
    send(ctx, rec, idle_s=0.0)
    return record_of(ctx.store, rec.instance_id)


def send(ctx: Context, rec: InstanceRecord, **fields: Any) -> BeatReply:
    hb = Heartbeat(lease_id=rec.lease_id, instance_id=rec.instance_id, **fields)
    return handle_heartbeat(ctx, hb, ctx.heartbeat_token(rec.instance_id))


def snapshot(ctx: Context, rec: InstanceRecord, sid: str, state: SnapshotState, **kw: Any) -> SnapshotRecord:
    now = ctx.now()
    snap = SnapshotRecord(snapshot_id=sid, lease_id=rec.lease_id, instance_id=rec.instance_id,
                          deployment_id=rec.deployment_id, state=state, created_at=now, updated_at=now, parts=1,
                          objects=[f"snapshots/{rec.lease_id}/{sid}/part-00000.tar.zst"], size_bytes=4096,
                          raw_bytes=10_000, **kw)
    ctx.store.put_snapshot(snap)
    return snap


def reap(ctx: Context) -> None:
    run_reap(ctx, ReapTick(event_id="tick"))


def test_an_idle_instance_is_asked_for_a_snapshot_until_one_starts(hctx: Context, make_ctx: MakeCtx,
                                                                   store: MemoryStore, clock: FakeClock) -> None:
    rec = ready(hctx, make_ctx)
    assert send(hctx, rec, idle_s=IDLE_AFTER - 1).snapshot_request is None
    asked = send(hctx, rec, idle_s=IDLE_AFTER).snapshot_request
    assert asked is not None and asked.reason == "hibernate"
    clock.advance(30)
    again = send(hctx, rec, idle_s=IDLE_AFTER + 30).snapshot_request
    assert again is not None and again.request_id == asked.request_id  # the same request, repeated
    snapshot(hctx, rec, "s-hib", SnapshotState.UPLOADING)  # the instance started it
    assert send(hctx, rec, idle_s=IDLE_AFTER + 60).snapshot_request is None
    req = record_of(store, rec.instance_id).snapshot_request
    assert req is not None and req.served and req.reason == "hibernate"
    assert [a for a in actions(store, rec.instance_id) if a[0] == "snapshot_requested"] == [
        ("snapshot_requested", "hibernate")]


def test_idleness_is_ignored_when_hibernation_is_off(ctx: Context, store: MemoryStore) -> None:
    rec = launched(ctx)
    assert send(ctx, rec, idle_s=1e9).snapshot_request is None
    assert record_of(store, rec.instance_id).snapshot_request is None


def test_a_busy_beat_calls_the_hibernation_off(hctx: Context, make_ctx: MakeCtx, store: MemoryStore) -> None:
    rec = ready(hctx, make_ctx)
    send(hctx, rec, idle_s=IDLE_AFTER)
    assert send(hctx, rec, idle_s=3.0).snapshot_request is None
    assert record_of(store, rec.instance_id).snapshot_request is None
    assert ("hibernation_called_off", "the instance is busy again") in actions(store, rec.instance_id)


def test_the_box_is_destroyed_only_once_its_snapshot_is_verified(hctx: Context, make_ctx: MakeCtx,
                                                                 store: MemoryStore, gce: FakeProvider,
                                                                 clock: FakeClock) -> None:
    rec = ready(hctx, make_ctx)
    send(hctx, rec, idle_s=IDLE_AFTER)
    clock.advance(5)
    reap(hctx)  # no snapshot yet
    assert record_of(store, rec.instance_id).state is State.READY and gce.by_instance_id(rec.instance_id)
    snapshot(hctx, rec, "s-hib", SnapshotState.UPLOADING)
    clock.advance(5)
    open_lease(hctx)
    send(hctx, rec, idle_s=IDLE_AFTER + 10)
    reap(hctx)  # uploading
    assert record_of(store, rec.instance_id).state is State.READY and store.get_hibernation(rec.lease_id) is None
    verified = snapshot(hctx, rec, "s-hib", SnapshotState.VERIFIED, manifest_sha256="a" * 64)
    clock.advance(5)
    reap(hctx)
    done = record_of(store, rec.instance_id)
    assert done.state is State.TERMINATED and done.reason == "hibernated"
    assert gce.by_instance_id(rec.instance_id) is None
    hib = store.get_hibernation(rec.lease_id)
    assert hib is not None and hib.snapshot_id == "s-hib" and hib.size_bytes == verified.size_bytes
    assert hib.instance_id == rec.instance_id and hib.components == rec.components
    assert ("hibernated", "idle; snapshot verified") in actions(store, rec.instance_id)


def test_an_older_verified_snapshot_does_not_let_the_box_go(hctx: Context, make_ctx: MakeCtx,
                                                            store: MemoryStore, clock: FakeClock) -> None:
    rec = ready(hctx, make_ctx)
    snapshot(hctx, rec, "s-old", SnapshotState.VERIFIED)  # taken before hibernation was decided
    clock.advance(10)
    send(hctx, rec, idle_s=IDLE_AFTER)
    reap(hctx)
    assert record_of(store, rec.instance_id).state is State.READY and store.get_hibernation(rec.lease_id) is None


def test_a_failed_snapshot_keeps_the_box_alerts_and_asks_again(hctx: Context, make_ctx: MakeCtx,
                                                               store: MemoryStore, gce: FakeProvider,
                                                               clock: FakeClock) -> None:
    rec = ready(hctx, make_ctx)
    first = send(hctx, rec, idle_s=IDLE_AFTER).snapshot_request
    assert first is not None
    clock.advance(1)
    snapshot(hctx, rec, "s-bad", SnapshotState.FAILED, reason="cloud storage 503")
    clock.advance(5)
    reap(hctx)
    assert record_of(store, rec.instance_id).state is State.READY and gce.by_instance_id(rec.instance_id)
    alerts = [e for e in store.audit_entries(rec.instance_id) if e["action"] == "alert"]
    assert [a["reason"] for a in alerts] == ["hibernation_snapshot_failed"] and alerts[0]["snapshot_id"] == "s-bad"
    retried = send(hctx, rec, idle_s=IDLE_AFTER + 6).snapshot_request
    assert retried is not None and retried.request_id != first.request_id
    asked = record_of(store, rec.instance_id).snapshot_request
    assert asked is not None and asked.by == "reaper" and asked.postponed == "its snapshot failed"
    assert status_view.postponed(record_of(store, rec.instance_id)) == (
        "hibernation postponed: its snapshot failed; asked again")
    clock.advance(5)
    reap(hctx)  # asked again, nothing new failed: no second alert
    assert len([e for e in store.audit_entries(rec.instance_id) if e["action"] == "alert"]) == 1


@pytest.mark.parametrize("started", [False, True])
def test_a_snapshot_that_never_starts_or_never_finishes_alerts_after_the_upload_timeout(
        started: bool, make_ctx: MakeCtx, store: MemoryStore, clock: FakeClock) -> None:
    hctx = make_ctx(idle_after_s=IDLE_AFTER, package_bucket="bkt", snapshot_upload_timeout_s=900)
    rec = ready(hctx, make_ctx)
    send(hctx, rec, idle_s=IDLE_AFTER)
    if started:
        snapshot(hctx, rec, "s-stuck", SnapshotState.UPLOADING)  # the agent was killed mid-upload
    clock.advance(hctx.settings.snapshot_upload_timeout_s - 1)
    open_lease(hctx)
    send(hctx, rec, idle_s=IDLE_AFTER * 10)
    reap(hctx)
    assert [e for e in store.audit_entries(rec.instance_id) if e["action"] == "alert"] == []
    clock.advance(2)
    open_lease(hctx)
    send(hctx, rec, idle_s=IDLE_AFTER * 10)
    reap(hctx)
    [alert] = [e for e in store.audit_entries(rec.instance_id) if e["action"] == "alert"]
    assert ("did not finish" if started else "no snapshot began") in alert["detail"]
    assert record_of(store, rec.instance_id).state is State.READY  # never destroyed without a verified one


def test_the_max_runtime_cap_wins_over_a_pending_hibernation(hctx: Context, make_ctx: MakeCtx,
                                                             store: MemoryStore, clock: FakeClock) -> None:
    rec = ready(hctx, make_ctx)
    send(hctx, rec, idle_s=IDLE_AFTER)
    store.update(rec.instance_id, lambda r: r.model_copy(update={"deadline": clock.now - timedelta(seconds=1)}))
    reap(hctx)
    done = record_of(store, rec.instance_id)
    assert done.state is State.TERMINATED and done.reason == "max_runtime"
    assert store.get_hibernation(rec.lease_id) is None


def test_the_lease_wakes_when_an_instance_of_it_is_ready(hctx: Context, make_ctx: MakeCtx, store: MemoryStore,
                                                         clock: FakeClock) -> None:
    rec = ready(hctx, make_ctx)
    send(hctx, rec, idle_s=IDLE_AFTER)
    clock.advance(1)
    snapshot(hctx, rec, "s-hib", SnapshotState.VERIFIED)
    reap(hctx)
    assert store.get_hibernation(rec.lease_id) is not None
    clock.advance(600)
    woken = launched(make_ctx(), event_id="ev-next-demand")  # the next demand for the lease
    send(hctx, woken, idle_s=0.0)
    assert store.get_hibernation(rec.lease_id) is None
    assert ("woke", "an instance of the lease is ready") in actions(store, woken.instance_id)


def test_a_snapshot_is_asked_for_once_before_the_deadline(make_ctx: MakeCtx, store: MemoryStore,
                                                          clock: FakeClock) -> None:
    ctx = make_ctx(package_bucket="bkt", snapshot_before_deadline_s=600)
    rec = launched(make_ctx())
    send(ctx, rec)
    clock.advance(ctx.settings.max_runtime_s - 601)
    open_lease(ctx)
    assert send(ctx, rec).snapshot_request is None
    clock.advance(2)
    asked = send(ctx, rec).snapshot_request
    assert asked is not None and asked.reason == "deadline"
    snapshot(ctx, rec, "s-last", SnapshotState.UPLOADING)
    clock.advance(30)
    assert send(ctx, rec).snapshot_request is None
    assert [a for a in actions(store, rec.instance_id) if a[0] == "snapshot_requested"] == [
        ("snapshot_requested", "deadline")]


@pytest.mark.parametrize(("env", "names"), [
    ({"idle_after_s": 600}, "SPOTLEASH_PACKAGE_BUCKET"),
    ({"idle_after_s": 3600, "package_bucket": "b", "max_runtime_s": 3600}, "SPOTLEASH_MAX_RUNTIME_S"),
])
def test_contradictory_hibernation_settings_fail_at_start(env: dict[str, Any], names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        load_settings(**env)
