"""handle_release, handle_lease and handle_budget, in-process."""

from __future__ import annotations

from datetime import timedelta

import pytest
from tests.support.builders import MakeCtx, actions, demand, launched, open_lease, record_of
from tests.support.clock import FakeClock
from tests.support.fake_provider import FakeProvider
from tests.support.memory_store import MemoryStore

from spotleash.errors import Transient
from spotleash.model import State
from spotleash.services.context import Context
from spotleash.services.launch import handle_demand
from spotleash.services.lifecycle import handle_budget, handle_lease, handle_release
from spotleash.wire.events import BudgetAlert, LeaseEvent, ReleaseEvent


def release(lease_id: str = "lease-1", instance_id: str | None = None, reason: str = "agent stopped",
            event_id: str = "rel-1") -> ReleaseEvent:
    return ReleaseEvent(event_id=event_id, lease_id=lease_id, instance_id=instance_id, reason=reason)


# ------------------------------------------------------------------ release
def test_a_release_deletes_every_live_instance_of_the_lease_and_closes_it(
        ctx: Context, store: MemoryStore, gce: FakeProvider, clock: FakeClock) -> None:
    a = launched(ctx, event_id="ev-a")
    clock.advance(200)  # past the cooldown
    b = launched(ctx, event_id="ev-b")
    other = launched(ctx, "lease-2")
    targets = handle_release(ctx, release())
    assert sorted(targets) == sorted([a.instance_id, b.instance_id])
    for rec in (a, b):
        done = record_of(store, rec.instance_id)
        assert done.state is State.TERMINATED and done.reason == "release: agent stopped"
        assert actions(store, rec.instance_id)[-1] == ("release", "release: agent stopped")
    assert [p.instance_id for p in gce.instances.values()] == [other.instance_id]
    lease = store.get_lease("lease-1")
    assert lease is not None and lease.released and lease.holder == "laptop" and lease.expires_at == clock.now
    [summary] = [e for e in store.audit_entries() if e["action"] == "release" and "instances" in e]
    assert summary["event_id"] == "rel-1" and sorted(summary["instances"]) == sorted(targets)
    assert summary["failures"] == []
    # The lease is closed: a late demand of it is refused, and a redelivered release finds nothing to do.
    assert handle_demand(ctx, demand(event_id="ev-late")).reason == "lease_released"
    assert handle_release(ctx, release()) == []


def test_releasing_a_lease_never_seen_closes_it_against_a_late_demand(ctx: Context, store: MemoryStore,
                                                                     gce: FakeProvider) -> None:
    assert handle_release(ctx, release("lease-new")) == []
    lease = store.get_lease("lease-new")
    assert lease is not None and lease.released and lease.holder == ""
    open_lease(ctx, "lease-new")  # a renewal sent before the release, delivered after: stays closed
    assert handle_demand(ctx, demand("lease-new")).reason == "lease_released" and gce.calls == []


def test_a_release_naming_one_instance_deletes_only_that_one(ctx: Context, store: MemoryStore,
                                                             clock: FakeClock) -> None:
    a = launched(ctx, event_id="ev-a")
    clock.advance(200)
    b = launched(ctx, event_id="ev-b")
    assert handle_release(ctx, release(instance_id=a.instance_id)) == [a.instance_id]
    assert record_of(store, a.instance_id).state is State.TERMINATED
    assert record_of(store, b.instance_id).state is State.RUNNING
    lease = store.get_lease("lease-1")
    assert lease is not None and not lease.released  # the lease itself lives on


@pytest.mark.parametrize("case", ["other_lease", "ended", "unknown"])
def test_a_release_naming_an_instance_it_does_not_own_deletes_nothing(case: str, ctx: Context,
                                                                      store: MemoryStore,
                                                                      gce: FakeProvider) -> None:
    rec = launched(ctx, "lease-2")
    iid = rec.instance_id
    if case == "ended":
        handle_release(ctx, release("lease-2", event_id="rel-0"))
    elif case == "unknown":
        iid = "sl-nobody"
    deletes = len(gce.calls_of("delete"))
    assert handle_release(ctx, release("lease-1" if case == "other_lease" else "lease-2", instance_id=iid)) == []
    assert len(gce.calls_of("delete")) == deletes
    if case == "other_lease":
        assert record_of(store, rec.instance_id).state is State.RUNNING


def test_an_unconfirmed_delete_is_reported_and_redelivered_but_the_others_finish(
        make_ctx: MakeCtx, store: MemoryStore, gce: FakeProvider, clock: FakeClock) -> None:
    ctx = make_ctx(confirm_delete_s=0.02)
    a = launched(ctx, event_id="ev-a")
    clock.advance(200)
    b = launched(ctx, event_id="ev-b")
    gce.fail("delete", Transient("503 from delete"), target=a.provider_id)
    with pytest.raises(Transient, match=a.instance_id):
        handle_release(ctx, release())
    assert record_of(store, a.instance_id).state is State.TERMINATING
    assert record_of(store, b.instance_id).state is State.TERMINATED
    [summary] = [e for e in store.audit_entries() if e["action"] == "release" and "failures" in e]
    assert len(summary["failures"]) == 1 and summary["failures"][0].startswith(a.instance_id)
    # The redelivery finishes what is left.
    assert handle_release(ctx, release()) == [a.instance_id]
    assert record_of(store, a.instance_id).state is State.TERMINATED and gce.instances == {}


# ------------------------------------------------------------------ lease
def test_a_new_lease_is_opened_and_audited(ctx: Context, store: MemoryStore, clock: FakeClock) -> None:
    lease = open_lease(ctx, ttl_s=90)
    assert lease.expires_at == clock.now + timedelta(seconds=90) and not lease.released
    assert store.get_lease("lease-1") == lease
    assert [e["action"] for e in store.audit_entries()] == ["lease_opened"]


def test_renewals_move_the_expiry_forward_only(ctx: Context, store: MemoryStore, clock: FakeClock) -> None:
    open_lease(ctx, ttl_s=90)
    clock.advance(30)
    renewed = handle_lease(ctx, LeaseEvent(lease_id="lease-1", ttl_s=90, created_at=clock.now))
    assert renewed.expires_at == clock.now + timedelta(seconds=90)
    stale = LeaseEvent(lease_id="lease-1", ttl_s=90, created_at=clock.now - timedelta(seconds=20))
    assert handle_lease(ctx, stale) == renewed  # delivered late: the expiry never moves back
    assert store.get_lease("lease-1") == renewed
    assert [e["action"] for e in store.audit_entries()] == ["lease_opened"]  # renewals are not audited


def test_an_agent_clock_ahead_of_ours_cannot_push_the_expiry_out(ctx: Context, clock: FakeClock) -> None:
    ahead = LeaseEvent(lease_id="lease-1", ttl_s=90, created_at=clock.now + timedelta(hours=1))
    assert handle_lease(ctx, ahead).expires_at == clock.now + timedelta(seconds=90)


def test_a_released_lease_reopens_only_for_a_renewal_sent_after_the_release(ctx: Context, store: MemoryStore,
                                                                          clock: FakeClock) -> None:
    open_lease(ctx)
    clock.advance(10)
    handle_release(ctx, ReleaseEvent(lease_id="lease-1", created_at=clock.now))
    late = LeaseEvent(lease_id="lease-1", ttl_s=90, created_at=clock.now - timedelta(seconds=5))
    assert handle_lease(ctx, late).released
    clock.advance(10)
    fresh = handle_lease(ctx, LeaseEvent(lease_id="lease-1", ttl_s=90, created_at=clock.now))
    assert not fresh.released and store.get_lease("lease-1") == fresh
    assert [e["action"] for e in store.audit_entries() if e["action"] == "lease_opened"] == ["lease_opened"] * 2


# ------------------------------------------------------------------ budget
@pytest.mark.parametrize(("cost", "stop_all", "exceeded", "reason"), [
    (55.0, True, True, "budget_exceeded"), (55.0, False, True, "budget_exceeded"),
    (45.0, True, False, "budget_threshold")])
def test_a_budget_alert_is_recorded(cost: float, stop_all: bool, exceeded: bool, reason: str, make_ctx: MakeCtx,
                                    store: MemoryStore, clock: FakeClock) -> None:
    ctx = make_ctx(budget_stop_all=stop_all)
    alert = BudgetAlert(costAmount=cost, budgetAmount=50.0, alertThresholdExceeded=0.9,
                        budgetDisplayName="spotleash", currencyCode="USD")
    assert handle_budget(ctx, alert) is exceeded
    assert store.get_budget() == {"cost": cost, "budget": 50.0, "threshold": 0.9, "exceeded": exceeded,
                                  "stop_all": exceeded and stop_all, "at": clock.now}
    assert [(e["action"], e["reason"]) for e in store.audit_entries()] == [("budget_alert", reason)]


def test_after_a_budget_alert_launches_are_refused(ctx: Context, store: MemoryStore, gce: FakeProvider,
                                                   clock: FakeClock) -> None:
    handle_budget(ctx, BudgetAlert(costAmount=60.0, budgetAmount=50.0, alertThresholdExceeded=1.0,
                                   budgetDisplayName="b", currencyCode="USD"))
    open_lease(ctx)
    assert handle_demand(ctx, demand()).reason == "budget_exceeded" and gce.calls == []
