"""``spotleash snapshot list|create|restore`` over the in-memory store, and ``status``'s HIBERNATED rows.

The request ``create`` writes is the one the heartbeat reply carries (tests/unit/services/
test_hibernation_service.py covers the reply); here: which instance, what is written, what it waits for,
and the errors a user gets.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from tests.support.builders import DEP, put_record
from tests.support.clock import FakeClock
from tests.support.memory_store import MemoryStore

from spotleash.cli.snapshot import listing, outcome, pin_restore, request_snapshot, target_instance, wait_for
from spotleash.config import Settings
from spotleash.dashboard.status import hibernated_json, hibernated_rows
from spotleash.errors import BadInput
from spotleash.model import Hibernation, Lease, SnapshotRecord, SnapshotState, State
from spotleash.services.context import Context, token_hash
from spotleash.services.heartbeat import handle_heartbeat
from spotleash.wire.events import Heartbeat


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ctx(clock: FakeClock) -> Context:
    settings = Settings(deployment_id=DEP, heartbeat_signing_key="k" * 32, heartbeat_url="http://127.0.0.1:9/b")
    return Context(settings=settings, store=MemoryStore(DEP), clock=clock, providers={}, sleep=clock.sleep, ticks=clock.ticks)


def snap(ctx: Context, sid: str, state: SnapshotState, *, instance: str = "sl-a", lease: str = "lease-1",
         **kw: Any) -> SnapshotRecord:
    now = ctx.now()
    s = SnapshotRecord(snapshot_id=sid, lease_id=lease, instance_id=instance, deployment_id=DEP, state=state,
                       created_at=now, updated_at=now, size_bytes=2_500_000, raw_bytes=9_000_000, files=3, **kw)
    ctx.store.put_snapshot(s)
    return s


def test_create_writes_an_on_demand_request_the_next_beat_carries(ctx: Context) -> None:
    put_record(ctx, "sl-a", state=State.READY, token_hash=token_hash(ctx.heartbeat_token("sl-a")))
    ctx.store.put_lease(Lease(lease_id="lease-1", deployment_id=DEP, expires_at=ctx.now() + timedelta(minutes=5),
                              renewed_at=ctx.now()))
    written = request_snapshot(ctx.store, "lease-1", None, ctx.now())
    req = written.snapshot_request
    assert req is not None and req.reason == "on_demand" and req.by == "cli" and not req.served
    reply = handle_heartbeat(ctx, Heartbeat(lease_id="lease-1", instance_id="sl-a"), ctx.heartbeat_token("sl-a"))
    assert reply.snapshot_request is not None
    assert reply.snapshot_request.request_id == req.request_id
    assert reply.snapshot_request.reason == "on_demand"


@pytest.mark.parametrize(("records", "named", "message"), [
    ([], None, "no READY instance"),
    ([("sl-a", State.READY), ("sl-b", State.READY)], None, "name one with --instance"),
    ([("sl-a", State.READY)], "sl-zzz", "no running instance sl-zzz"),
    ([("sl-a", State.PROVISIONING)], None, "no READY instance"),
])
def test_create_says_which_instance_is_missing(ctx: Context, records: list[tuple[str, State]], named: str | None,
                                               message: str) -> None:
    for iid, state in records:
        put_record(ctx, iid, state=state)
    with pytest.raises(BadInput, match=message):
        target_instance(ctx.store, "lease-1", named)


def test_create_with_two_instances_takes_the_one_named(ctx: Context) -> None:
    put_record(ctx, "sl-a", state=State.READY)
    put_record(ctx, "sl-b", state=State.RUNNING)
    assert target_instance(ctx.store, "lease-1", "sl-b").instance_id == "sl-b"
    assert target_instance(ctx.store, "lease-1", None).instance_id == "sl-a"


def test_wait_returns_the_answering_snapshot_and_ignores_older_ones(ctx: Context, clock: FakeClock) -> None:
    put_record(ctx, "sl-a", state=State.READY)
    snap(ctx, "s-old", SnapshotState.VERIFIED)
    clock.advance(1)
    rec = request_snapshot(ctx.store, "lease-1", None, ctx.now())
    ticks = iter(range(100))
    assert wait_for(ctx.store, rec, 3.0, lambda: float(next(ticks)), lambda _s: None) is None  # times out
    snap(ctx, "s-new", SnapshotState.UPLOADING)
    assert outcome(ctx.store, rec) is None  # still uploading
    snap(ctx, "s-new", SnapshotState.VERIFIED)
    found = outcome(ctx.store, rec)
    assert found is not None and found.snapshot_id == "s-new"


def test_restore_pins_only_a_verified_snapshot_of_the_lease(ctx: Context) -> None:
    snap(ctx, "s-ok", SnapshotState.VERIFIED)
    snap(ctx, "s-bad", SnapshotState.CORRUPT, reason="part 1 sha256 differs")
    snap(ctx, "s-other", SnapshotState.VERIFIED, lease="lease-2")
    with pytest.raises(BadInput, match="CORRUPT"):
        pin_restore(ctx.store, "lease-1", "s-bad", DEP, ctx.now())
    with pytest.raises(BadInput, match=r"no snapshot s-other \(verified: s-ok\)"):
        pin_restore(ctx.store, "lease-1", "s-other", DEP, ctx.now())
    assert ctx.store.get_restore_pin("lease-1") is None
    pin = pin_restore(ctx.store, "lease-1", "s-ok", DEP, ctx.now())
    assert ctx.store.get_restore_pin("lease-1") == pin


def test_list_shows_newest_first_with_pin_and_hibernation(ctx: Context, clock: FakeClock) -> None:
    snap(ctx, "s1", SnapshotState.VERIFIED)
    clock.advance(60)
    snap(ctx, "s2", SnapshotState.VERIFIED)
    snap(ctx, "s0", SnapshotState.DELETED)
    pin_restore(ctx.store, "lease-1", "s1", DEP, ctx.now())
    data = listing(ctx.store, "lease-1", ctx.now())
    assert [s["snapshot_id"] for s in data["snapshots"]] == ["s2", "s1"]
    assert data["snapshots"][1]["age_s"] == 60.0 and data["restore_pin"] == "s1" and data["hibernated"] is None
    assert "objects" not in data["snapshots"][0]


def test_status_shows_a_hibernated_lease_with_its_snapshot_age_and_size(ctx: Context, clock: FakeClock) -> None:
    made = clock.now
    clock.advance(3700)
    h = Hibernation(lease_id="lease-1", deployment_id=DEP, snapshot_id="s-hib", instance_id="sl-a",
                    components=["vision"], snapshot_created_at=made, size_bytes=12_300_000,
                    hibernated_at=made + timedelta(seconds=100))
    shown = hibernated_json(h, clock.now)
    assert shown["state"] == "HIBERNATED" and shown["snapshot_age_s"] == 3700.0 and shown["size_bytes"] == 12_300_000
    assert shown["hibernated_for_s"] == 3600.0
    assert hibernated_rows([h], clock.now) == [("lease-1", "vision", "HIBERNATED", "s-hib", "1h01m", "12.3 MB")]
