"""A reap tick naming an instance (an agent's router lost it without notice), in-process.

The named record is read even though its last beat is recent (no time cut-off would read it), so the
provider's verdict is decided in that same pass: outbid/stopped → ``stopped_at_provider``, absent from a
good listing → ``vanished``; either way the failover runs in that tick. A box the provider still shows
running is left alone, and the check is audited with the tick's reason either way.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from tests.support.builders import actions, beat, launched, open_lease, record_of
from tests.support.clock import FakeClock
from tests.support.fake_provider import FakeProvider, FakeSshProvider
from tests.support.memory_store import MemoryStore

from spotleash.model import InstanceRecord, State
from spotleash.providers.base import ProviderStatus
from spotleash.services.context import Context
from spotleash.services.heartbeat import handle_heartbeat
from spotleash.services.reap import gather, run_reap
from spotleash.wire.events import ReapTick, parse_event


def check(instance_id: str) -> ReapTick:
    return ReapTick(event_id="check-1", lease_id="lease-1", instance_id=instance_id, reason="probe_failed",
                    detail="the router's probes failed: ConnectionRefused")


def beaten(ctx: Context, rec: InstanceRecord) -> InstanceRecord:
    assert handle_heartbeat(ctx, beat(rec), ctx.heartbeat_token(rec.instance_id)).status == 200
    return record_of(ctx.store, rec.instance_id)


def checks(store: MemoryStore, instance_id: str) -> list[dict[str, object]]:
    return [e for e in store.audit_entries(instance_id) if e["action"] == "reap_check"]


def test_gather_reads_the_named_record_that_no_cut_off_would(ctx: Context, gce: FakeProvider,
                                                             clock: FakeClock) -> None:
    rec = beaten(ctx, launched(ctx))
    clock.advance(5)  # beat 5 s ago: far from every cut-off
    gce.vanish(rec.provider_id or "")  # and the listing no longer names it
    assert rec.instance_id not in {r.instance_id for r in gather(ctx, ["gce"])[0]}
    assert rec.instance_id in {r.instance_id for r in gather(ctx, ["gce"], rec.instance_id)[0]}


def test_a_named_box_outbid_moments_ago_is_replaced_in_that_tick(ctx: Context, store: MemoryStore,
                                                                 vast: FakeSshProvider, clock: FakeClock) -> None:
    rec = beaten(ctx, launched(ctx, gpu=True))
    clock.advance(3)
    open_lease(ctx)
    vast.take_back(rec.provider_id or "", ProviderStatus.STOPPED, "outbid")
    report = run_reap(ctx, check(rec.instance_id))
    assert [(d.reason, d.instance_id) for d in report.plan.decisions] == [("stopped_at_provider", rec.instance_id)]
    old = record_of(store, rec.instance_id)
    assert old.state is State.TERMINATED and old.reason == "stopped_at_provider" and old.replaced_by
    new = record_of(store, old.replaced_by)
    assert new.replaces == rec.instance_id and new.provider == "vast"
    assert ("failover", "stopped_at_provider") in actions(store, rec.instance_id)
    [audited] = checks(store, rec.instance_id)
    assert audited["reason"] == "probe_failed" and audited["decided"] == "stopped_at_provider"
    assert "ConnectionRefused" in str(audited["detail"])


def test_a_named_vm_deleted_behind_our_back_is_vanished_and_replaced(ctx: Context, store: MemoryStore,
                                                                     gce: FakeProvider, clock: FakeClock) -> None:
    rec = beaten(ctx, launched(ctx))
    clock.advance(2)
    open_lease(ctx)
    gce.vanish(rec.provider_id or "")
    run_reap(ctx, check(rec.instance_id))
    old = record_of(store, rec.instance_id)
    assert old.reason == "vanished" and old.replaced_by is not None
    assert checks(store, rec.instance_id)[0]["decided"] == "vanished"


def test_a_named_box_still_running_is_left_alone_and_the_check_audited(ctx: Context, store: MemoryStore,
                                                                       gce: FakeProvider, clock: FakeClock) -> None:
    rec = beaten(ctx, launched(ctx))
    clock.advance(2)
    open_lease(ctx)
    report = run_reap(ctx, check(rec.instance_id))  # a network blip: the provider lists it running
    assert report.plan.decisions == () and report.done == []
    assert record_of(store, rec.instance_id).state is State.READY
    [audited] = checks(store, rec.instance_id)
    assert audited["reason"] == "probe_failed" and audited["decided"] is None
    assert "network blip" in str(audited["detail"]) and audited["dry_run"] is False


def test_the_scheduler_tick_audits_no_check(ctx: Context, store: MemoryStore, clock: FakeClock) -> None:
    rec = beaten(ctx, launched(ctx))
    run_reap(ctx, ReapTick(event_id="tick-1"))
    assert checks(store, rec.instance_id) == []


@pytest.mark.parametrize("fields", [
    {"instance_id": "i-1"},  # no reason
    {"reason": "probe_failed"},  # a reason for nothing
    {"instance_id": "i-1", "reason": "probe_failed", "force": True},  # an agent never forces past the guard
    {"instance_id": "i-1", "reason": "Probe Fall!"},
    {"instance_id": "I_1/..", "reason": "probe_failed"},
])
def test_a_tick_naming_an_instance_is_validated(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ReapTick(**fields)  # type: ignore[arg-type]


def test_a_named_tick_round_trips_through_the_wire() -> None:
    tick = check("i-1")
    parsed = parse_event(tick.to_bytes(), ReapTick)
    assert parsed == tick and isinstance(parsed, ReapTick) and not parsed.dry_run and not parsed.force
