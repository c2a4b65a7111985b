"""terminate(): a record says TERMINATED only after the provider confirmed the instance is gone."""

from __future__ import annotations

import pytest
from tests.support.builders import MakeCtx, actions, launched, put_record, record_of
from tests.support.clock import FakeClock
from tests.support.fake_provider import FakeProvider
from tests.support.memory_store import MemoryStore

from spotleash.errors import ProviderTransient, Transient
from spotleash.model import Lease, State
from spotleash.services import terminate as terminate_module
from spotleash.services.context import Context
from spotleash.services.terminate import Gate, Wanted, terminate, terminate_many


def test_terminate_deletes_confirms_then_records(ctx: Context, store: MemoryStore, gce: FakeProvider,
                                                 clock: FakeClock) -> None:
    rec = launched(ctx)
    clock.advance(1800)
    done = terminate(ctx, rec.instance_id, "release: done", action="release")
    assert done is not None and done.state is State.TERMINATED and done.reason == "release: done"
    assert done.ended_at == clock.now and record_of(store, rec.instance_id) == done
    assert gce.instances == {}
    assert gce.calls[-2:] == [("delete", rec.provider_id), ("get", rec.provider_id)]
    [entry] = [e for e in store.audit_entries(rec.instance_id) if e["action"] == "release"]
    assert entry["reason"] == "release: done" and entry["provider_id"] == rec.provider_id
    assert entry["cost_so_far"] == pytest.approx(0.025)  # half an hour at $0.05/h


def test_terminated_is_written_only_once_the_provider_stops_listing_it(ctx: Context, store: MemoryStore,
                                                                        gce: FakeProvider) -> None:
    rec = launched(ctx)
    gce.delete_lag = 2
    states_while_listed: list[State] = []
    for _ in range(3):
        gce.on("get", lambda: states_while_listed.append(record_of(store, rec.instance_id).state))
    done = terminate(ctx, rec.instance_id, "heartbeat_lost")
    assert done is not None and done.state is State.TERMINATED
    assert states_while_listed == [State.TERMINATING] * 3 and len(gce.calls_of("get")) == 3


def _steady_ticks(ctx: Context, clock: FakeClock) -> list[float]:
    """Ticks of their own: the context's sleep moves them and the wall clock (the fake clock) alike, and a test
    can then step the wall clock alone."""
    ticks = [0.0]

    def sleep(seconds: float) -> None:
        ticks[0] += seconds
        clock.advance(seconds)

    ctx.sleep, ctx.ticks = sleep, lambda: ticks[0]
    return ticks


def test_a_wall_clock_step_forward_does_not_end_the_confirmation(make_ctx: MakeCtx, store: MemoryStore,
                                                                  gce: FakeProvider, clock: FakeClock) -> None:
    # An hour's step at the first poll: timed on the wall clock, that wait ended at once (Transient, a redelivery)
    ctx = make_ctx(confirm_delete_s=5.0)
    _steady_ticks(ctx, clock)
    rec = launched(ctx)
    gce.delete_lag = 2
    gce.on("get", lambda: clock.advance(3600))
    done = terminate(ctx, rec.instance_id, "release: done", action="release")
    assert done is not None and done.state is State.TERMINATED and len(gce.calls_of("get")) == 3


def test_a_wall_clock_step_back_does_not_stretch_the_confirmation(make_ctx: MakeCtx, store: MemoryStore,
                                                                  gce: FakeProvider, clock: FakeClock) -> None:
    # An hour's step back: timed on the wall clock, a provider that never confirms was asked for an hour more
    ctx = make_ctx(confirm_delete_s=5.0)
    ticks = _steady_ticks(ctx, clock)
    rec = launched(ctx)
    gce.never_delete = True
    gce.on("get", lambda: clock.advance(-3600))
    with pytest.raises(Transient, match="has not confirmed the deletion"):
        terminate(ctx, rec.instance_id, "max_runtime", action="reap")
    poll = terminate_module.CONFIRM_POLL_S
    assert 5.0 <= ticks[0] <= 5.0 + 2 * poll and len(gce.calls_of("get")) <= 5.0 / poll + 2


def test_an_unconfirmed_delete_raises_and_leaves_the_record_terminating(make_ctx: MakeCtx, store: MemoryStore,
                                                                        gce: FakeProvider,
                                                                        clock: FakeClock) -> None:
    ctx = make_ctx(confirm_delete_s=0.02)
    rec = launched(ctx)
    gce.never_delete = True
    with pytest.raises(Transient, match="has not confirmed the deletion"):
        terminate(ctx, rec.instance_id, "max_runtime", action="reap")
    stuck = record_of(store, rec.instance_id)
    assert stuck.state is State.TERMINATING and stuck.reason == "max_runtime" and stuck.ended_at is None
    assert actions(store, rec.instance_id)[-1] == ("reap", "delete_unconfirmed")
    # The retry (a redelivery, the next reap) finishes it and keeps the first reason.
    gce.never_delete = False
    gce.delete_lag = 0
    clock.advance(60)
    done = terminate(ctx, rec.instance_id, "retry_delete", action="reap")
    assert done is not None and done.state is State.TERMINATED and done.reason == "max_runtime"
    assert actions(store, rec.instance_id)[-1] == ("reap", "max_runtime")


def test_a_failing_delete_call_raises_and_records_nothing_ended(ctx: Context, store: MemoryStore,
                                                                gce: FakeProvider) -> None:
    rec = launched(ctx)
    gce.fail("delete", ProviderTransient("503"))
    with pytest.raises(ProviderTransient):
        terminate(ctx, rec.instance_id, "lease_expired")
    assert record_of(store, rec.instance_id).state is State.TERMINATING and len(gce.instances) == 1


@pytest.mark.parametrize("state", [State.TERMINATED, State.FAILED])
def test_an_ended_record_is_left_as_it_is(state: State, ctx: Context, store: MemoryStore,
                                          gce: FakeProvider) -> None:
    rec = put_record(ctx, "sl-x", state=state, provider_id="gce-9")
    assert terminate(ctx, "sl-x", "again") == rec
    assert record_of(store, "sl-x") == rec and gce.calls == [] and store.audit_entries() == []


def test_an_unknown_record_is_none(ctx: Context, gce: FakeProvider) -> None:
    assert terminate(ctx, "sl-nobody", "x") is None and gce.calls == []


def test_without_a_provider_id_the_instance_is_found_by_its_label(ctx: Context, store: MemoryStore,
                                                                  gce: FakeProvider) -> None:
    # A crash between create and recording it: the record has no provider id, the instance has our label.
    put_record(ctx, "sl-crashed", state=State.PROVISIONING)
    planted = gce.plant("sl-crashed", lease_id="lease-1", deployment_id=ctx.settings.deployment_id)
    done = terminate(ctx, "sl-crashed", "provisioning_timeout")
    assert done is not None and done.state is State.TERMINATED
    assert gce.calls_of("find") == ["sl-crashed"] and gce.calls_of("delete") == [planted.provider_id]
    assert gce.instances == {}


def test_without_a_provider_id_and_nothing_at_the_provider_it_just_ends(ctx: Context, store: MemoryStore,
                                                                        gce: FakeProvider) -> None:
    put_record(ctx, "sl-never-made", state=State.REQUESTED)
    done = terminate(ctx, "sl-never-made", "provisioning_timeout")
    assert done is not None and done.state is State.TERMINATED
    assert gce.calls_of("delete") == [] and actions(store, "sl-never-made")[-1] == ("delete",
                                                                                   "provisioning_timeout")



def test_a_failure_s_end_state_survives_a_delete_finished_by_someone_else(make_ctx: MakeCtx, store: MemoryStore,
                                                                         gce: FakeProvider, clock: FakeClock) -> None:
    """The heartbeat deletes an instance whose package failed (ends FAILED); the provider is slow to confirm,
    so the reaper's retry (which asks for the default end) finishes it: still FAILED, the first reason kept."""
    ctx = make_ctx(confirm_delete_s=0.02)
    rec = launched(ctx)
    gce.never_delete = True
    with pytest.raises(Transient):
        terminate(ctx, rec.instance_id, "package_unverified: sha256 differs", action="launch_cleanup",
                  end=State.FAILED)
    assert record_of(store, rec.instance_id).ends_as == "FAILED"
    gce.never_delete = False
    gce.delete_lag = 0
    clock.advance(60)
    done = terminate(ctx, rec.instance_id, "retry_delete", action="reap")
    assert done is not None and done.state is State.FAILED and done.reason == "package_unverified: sha256 differs"


def test_terminate_many_deletes_each_and_ends_only_the_confirmed(make_ctx: MakeCtx, store: MemoryStore,
                                                                 gce: FakeProvider, clock: FakeClock) -> None:
    """terminate_many: as terminate, for several records in two store transactions. A record the provider keeps
    listing stays TERMINATING with its error (the next reap retries it); an ended one is left as it is; an
    unknown id has no record; the others end with their audit entry."""
    ctx = make_ctx(confirm_delete_s=0.02)
    fine, stuck, ended = (launched(ctx, f"lease-{i}") for i in range(3))
    terminate(ctx, ended.instance_id, "release: done", action="release")
    clock.advance(1800)
    gce.fail("delete", ProviderTransient("503"), target=stuck.provider_id)
    before = len(store.audit_entries())
    out = terminate_many(ctx, {i: Wanted("max_runtime") for i in (fine.instance_id, stuck.instance_id,
                                                                   ended.instance_id, "sl-unknown")},
                         action="reap", parallel=4)
    assert out["sl-unknown"].started is None and out["sl-unknown"].error is None
    assert out[fine.instance_id].error is None and out[fine.instance_id].final == record_of(store, fine.instance_id)
    assert record_of(store, fine.instance_id).state is State.TERMINATED and gce.by_instance_id(fine.instance_id) is None
    assert out[stuck.instance_id].error == "503" and out[stuck.instance_id].final is None
    assert record_of(store, stuck.instance_id).state is State.TERMINATING and gce.by_instance_id(stuck.instance_id)
    assert out[ended.instance_id].started == record_of(store, ended.instance_id)  # left as it was
    assert gce.calls_of("delete").count(ended.provider_id) == 1  # by its own release, not again
    new = store.audit_entries()[before:]
    assert [(e["action"], e["reason"], e["instance_id"]) for e in new] == [("reap", "max_runtime", fine.instance_id)]
    assert new[0]["cost_so_far"] == pytest.approx(0.025)


def test_terminate_many_asks_each_gate_in_its_starting_transaction(ctx: Context, store: MemoryStore,
                                                                    gce: FakeProvider) -> None:
    """A gate that says no spares its live record (not TERMINATING, nothing asked of the provider); the
    gate of another record in the same call says yes and that one is deleted; each gate sees its own lease."""
    kept, gone = launched(ctx, "lease-kept"), launched(ctx, "lease-gone")
    asked: list[str | None] = []

    def gate(answer: bool) -> Gate:
        def ask(lease: Lease | None) -> bool:
            asked.append(lease.lease_id if lease else None)
            return answer
        return ask

    out = terminate_many(ctx, {kept.instance_id: Wanted("lease_expired", gate(False)),
                               gone.instance_id: Wanted("lease_expired", gate(True))}, action="reap", parallel=2)
    assert sorted(a or "-" for a in asked) == ["lease-gone", "lease-kept"]
    assert out[kept.instance_id].started == record_of(store, kept.instance_id)
    assert record_of(store, kept.instance_id).state is State.RUNNING and kept.provider_id not in gce.calls_of("delete")
    assert record_of(store, gone.instance_id).state is State.TERMINATED and gce.by_instance_id(gone.instance_id) is None


def test_terminate_many_of_nothing_touches_nothing(ctx: Context, store: MemoryStore) -> None:
    store.fail("update_many", Transient("must not be called"))
    assert terminate_many(ctx, {}, action="reap", parallel=4) == {}
