"""handle_demand and request_replacement, in-process: every return and raise path.

The store is in memory, the providers are scripted fakes and the clock only moves when told, so each
race (a release during create, a concurrent copy of the event) is placed exactly where it matters.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from tests.support.builders import DEP, MakeCtx, actions, beat, demand, open_lease, put_record, record_of
from tests.support.clock import FakeClock
from tests.support.fake_provider import FakeProvider, FakeSshProvider
from tests.support.memory_store import MemoryStore

from spotleash.errors import (
    BadInput,
    CapacityExhausted,
    ConfigError,
    ProviderPermanent,
    ProviderTransient,
    Transient,
)
from spotleash.model import Lease, State, instance_id_for, new_record, transition
from spotleash.providers.base import GpuRequirements, ownership_labels
from spotleash.services.context import Context, token_hash
from spotleash.services.heartbeat import handle_heartbeat
from spotleash.services.launch import IN_FLIGHT_GRACE_S, handle_demand, request_replacement
from spotleash.services.lifecycle import handle_release
from spotleash.wire.events import ReleaseEvent

IID = instance_id_for("ev-1")


def test_a_demand_runs_an_instance_and_records_every_step(ctx: Context, store: MemoryStore, gce: FakeProvider,
                                                          clock: FakeClock) -> None:
    open_lease(ctx)
    out = handle_demand(ctx, demand(ram_gb=20.0))
    assert (out.instance_id, out.state, out.created, out.reason) == (IID, State.RUNNING, True, None)
    rec = record_of(store, IID)
    [made] = gce.instances.values()
    assert rec.state is State.RUNNING and rec.provider == "gce" and rec.provider_id == made.provider_id != IID
    assert rec.machine == "e2-highmem-4" and rec.zone == "us-central1-a" and rec.price_per_hour == 0.05
    assert rec.attempts == 1 and rec.running_at == rec.last_heartbeat == clock.now
    assert rec.token_hash == token_hash(ctx.heartbeat_token(IID)) and rec.ram_gb == 20.0
    [spec] = gce.specs
    assert spec.labels == ownership_labels(DEP, "lease-1", IID) == made.labels
    assert spec.heartbeat_token == ctx.heartbeat_token(IID) and spec.heartbeat_token not in spec.labels.values()
    assert spec.max_run_s == 3600 and spec.gpu is None and spec.heartbeat_url == ctx.settings.heartbeat_url
    assert actions(store, IID) == [("launch_intent", "threshold"), ("launched", "threshold")]
    assert gce.calls_of("create") == [IID]


def test_the_intent_is_durable_before_the_provider_is_called(ctx: Context, store: MemoryStore,
                                                             gce: FakeProvider) -> None:
    open_lease(ctx)
    seen: list[tuple[State, list[str]]] = []
    gce.on("create", lambda: seen.append((record_of(store, IID).state, [a for a, _ in actions(store, IID)])))
    handle_demand(ctx, demand())
    assert seen == [(State.PROVISIONING, ["launch_intent"])]


def test_a_gpu_demand_goes_to_vast_with_the_gpu_requirements(ctx: Context, store: MemoryStore,
                                                             vast: FakeSshProvider, gce: FakeProvider) -> None:
    open_lease(ctx)
    out = handle_demand(ctx, demand(gpu=True))
    assert out.state is State.RUNNING and gce.calls == []
    [spec] = vast.specs
    s = ctx.settings
    assert spec.gpu == GpuRequirements(tuple(s.gpu_names), s.gpu_min_vram_gb, s.gpu_max_dph, s.gpu_min_reliability)
    rec = record_of(store, IID)
    assert rec.provider == "vast" and rec.gpu and rec.ssh_host == "198.51.100.7" and rec.ssh_port
    assert rec.price_per_hour == 0.4  # what the provider reports, not the cap


# ------------------------------------------------------------------ refusals
def _two_live(ctx: Context) -> None:
    put_record(ctx, "sl-a", age_s=600)
    put_record(ctx, "sl-b", age_s=600)


REFUSALS: dict[str, Callable[[Context], object]] = {
    "lease_released": lambda ctx: ctx.store.put_lease(Lease(lease_id="lease-1", deployment_id=DEP,
                                                            expires_at=ctx.now(), renewed_at=ctx.now(),
                                                            released=True)),
    "lease_limit": _two_live,
    "global_limit": lambda ctx: [put_record(ctx, f"sl-{i}", f"other-{i}") for i in range(10)],
    "cooldown": lambda ctx: put_record(ctx, "sl-recent", age_s=10),
    "budget_exceeded": lambda ctx: ctx.store.put_budget({"exceeded": True, "stop_all": False}),
}


@pytest.mark.parametrize("reason", ["lease_released", "lease_expired", "lease_limit", "global_limit", "cooldown",
                                    "budget_exceeded", "budget_projection"])
def test_a_refused_demand_is_recorded_failed_and_never_reaches_a_provider(
        reason: str, ctx: Context, store: MemoryStore, gce: FakeProvider, clock: FakeClock,
        make_ctx: MakeCtx) -> None:
    open_lease(ctx)
    if reason == "lease_expired":
        clock.advance(91)
    elif reason == "budget_projection":  # no alert, but this launch's worst case would pass the budget
        ctx = make_ctx(monthly_budget_usd=0.01)
    else:
        REFUSALS[reason](ctx)
    out = handle_demand(ctx, demand())
    code = "budget_exceeded" if reason == "budget_projection" else reason
    assert (out.instance_id, out.state, out.created, out.reason) == (IID, State.FAILED, True, code)
    rec = record_of(store, IID)
    assert rec.state is State.FAILED and rec.reason is not None and rec.reason.startswith(f"{code}: ")
    assert rec.ended_at == clock.now
    assert actions(store, IID) == [("launch_refused", code)]
    assert gce.calls == []
    # A redelivery of the refused demand finds the FAILED record: same answer, nothing new recorded.
    again = handle_demand(ctx, demand())
    assert (again.state, again.created) == (State.FAILED, False)
    assert actions(store, IID) == [("launch_refused", code)] and gce.calls == []


def test_a_failover_demand_skips_the_cooldown(ctx: Context, store: MemoryStore) -> None:
    open_lease(ctx)
    put_record(ctx, "sl-recent", age_s=10)
    assert handle_demand(ctx, demand(trigger="failover")).state is State.RUNNING


def test_a_demand_for_an_unknown_lease_waits_for_a_redelivery(ctx: Context, store: MemoryStore,
                                                              gce: FakeProvider) -> None:
    with pytest.raises(Transient, match="lease lease-1 is not known yet"):
        handle_demand(ctx, demand())
    assert store.get(IID) is None and store.audit_entries() == [] and gce.calls == []


def test_without_a_signing_key_nothing_is_written(make_ctx: MakeCtx, store: MemoryStore,
                                                  gce: FakeProvider) -> None:
    ctx = make_ctx(heartbeat_signing_key=None)
    open_lease(ctx)
    with pytest.raises(ConfigError, match="SPOTLEASH_HEARTBEAT_SIGNING_KEY"):
        handle_demand(ctx, demand())
    assert store.get(IID) is None and gce.calls == []


# ------------------------------------------------------------------ provider failures
def test_transient_create_failures_are_retried_with_backoff(ctx: Context, store: MemoryStore, gce: FakeProvider,
                                                           clock: FakeClock) -> None:
    open_lease(ctx)
    gce.fail("create", ProviderTransient("503 backend error"), times=2)
    out = handle_demand(ctx, demand())
    assert out.state is State.RUNNING and out.created
    assert gce.calls_of("create") == [IID] * 3 and len(gce.instances) == 1
    assert clock.slept == [0.5, 1.0]  # exponential backoff, through Context.sleep
    assert record_of(store, IID).attempts == 1  # one delivery, one attempt, three calls


def test_past_the_retry_budget_the_launch_is_left_for_the_redelivery(make_ctx: MakeCtx, store: MemoryStore,
                                                                     gce: FakeProvider, clock: FakeClock) -> None:
    ctx = make_ctx(launch_retry_s=0)
    open_lease(ctx)
    gce.fail("create", ProviderTransient("429 rate limited"))
    with pytest.raises(ProviderTransient):
        handle_demand(ctx, demand())
    assert record_of(store, IID).state is State.PROVISIONING and gce.instances == {}
    # Redelivered inside the window of the first delivery: it steps back without calling the provider.
    clock.advance(IN_FLIGHT_GRACE_S - 1)
    with pytest.raises(Transient, match="in flight"):
        handle_demand(ctx, demand())
    assert gce.calls_of("create") == [IID]
    # Past the window, the redelivery resumes the same launch: same record, one more attempt.
    clock.advance(2)
    out = handle_demand(ctx, demand())
    assert (out.state, out.created) == (State.RUNNING, True)
    rec = record_of(store, IID)
    assert rec.attempts == 2 and len(gce.instances) == 1
    assert [a for a, _ in actions(store, IID)] == ["launch_intent", "launched"]


def test_no_capacity_fails_the_launch_and_leaves_nothing(ctx: Context, store: MemoryStore,
                                                        gce: FakeProvider) -> None:
    open_lease(ctx)
    gce.fail("create", CapacityExhausted("ZONE_RESOURCE_POOL_EXHAUSTED in every zone"))
    out = handle_demand(ctx, demand())
    assert (out.state, out.reason) == (State.FAILED, "no_capacity")
    rec = record_of(store, IID)
    assert rec.state is State.FAILED and rec.reason == "no_capacity: ZONE_RESOURCE_POOL_EXHAUSTED in every zone"
    assert actions(store, IID) == [("launch_intent", "threshold"), ("launch_failed", "no_capacity")]
    assert gce.calls_of("find") == [IID] and gce.calls_of("delete") == []


@pytest.mark.parametrize("error", [ProviderPermanent("400 invalid machine type"), BadInput("bad spec")])
def test_a_permanent_refusal_after_a_partial_create_deletes_the_partial_instance(
        error: Exception, ctx: Context, store: MemoryStore, gce: FakeProvider) -> None:
    open_lease(ctx)
    gce.fail("create", error, leave_partial=True)
    out = handle_demand(ctx, demand())
    assert (out.state, out.reason) == (State.TERMINATED, "provider_refused")
    assert gce.instances == {}, "the partial instance must not outlive the record"
    [partial_id] = gce.calls_of("delete")
    rec = record_of(store, IID)
    assert rec.state is State.TERMINATED and rec.reason == "launch failed: provider_refused"
    assert actions(store, IID)[-1] == ("launch_cleanup", "launch failed: provider_refused")
    assert partial_id.startswith("gce-")


def test_a_permanent_refusal_with_nothing_made_is_recorded_failed(ctx: Context, store: MemoryStore,
                                                                  gce: FakeProvider) -> None:
    open_lease(ctx)
    gce.fail("create", ProviderPermanent("403 quota"))
    out = handle_demand(ctx, demand())
    assert (out.state, out.reason) == (State.FAILED, "provider_refused")
    assert record_of(store, IID).reason == "provider_refused: 403 quota"
    assert actions(store, IID)[-1] == ("launch_failed", "provider_refused") and gce.calls_of("delete") == []


# ------------------------------------------------------------------ races
def test_a_release_during_create_deletes_what_create_made(ctx: Context, store: MemoryStore,
                                                         gce: FakeProvider) -> None:
    open_lease(ctx)
    gce.on("create", lambda: handle_release(ctx, ReleaseEvent(lease_id="lease-1", reason="agent stopped")))
    out = handle_demand(ctx, demand())
    assert (out.state, out.reason) == (State.TERMINATED, "released during launch")
    assert gce.instances == {} and len(gce.calls_of("delete")) == 1
    rec = record_of(store, IID)
    assert rec.state is State.TERMINATED and rec.reason == "release: agent stopped"
    assert "launched" not in [a for a, _ in actions(store, IID)]


def test_a_record_left_terminating_during_create_is_terminated_with_its_instance(
        ctx: Context, store: MemoryStore, gce: FakeProvider, clock: FakeClock) -> None:
    open_lease(ctx)
    # Someone (a reap) began deleting while create was in flight, and has not finished.
    gce.on("create", lambda: store.update(IID, lambda r: transition(r, State.TERMINATING, clock.now,
                                                                    reason="lease_expired")))
    out = handle_demand(ctx, demand())
    assert (out.state, out.reason) == (State.TERMINATED, "released during launch")
    assert gce.instances == {}
    rec = record_of(store, IID)
    assert rec.state is State.TERMINATED and rec.reason == "lease_expired"
    assert actions(store, IID)[-1][0] == "launch_cleanup"


def test_a_release_while_retrying_stops_the_retries_and_cleans_up(ctx: Context, store: MemoryStore,
                                                                 gce: FakeProvider, clock: FakeClock) -> None:
    open_lease(ctx)
    gce.on("create", lambda: handle_release(ctx, ReleaseEvent(lease_id="lease-1")))
    gce.fail("create", ProviderTransient("503"), times=5, leave_partial=True)
    out = handle_demand(ctx, demand())
    assert (out.state, out.created, out.reason) == (State.TERMINATED, False, "released during launch")
    assert gce.calls_of("create") == [IID] and clock.slept == []  # no retry once it is no longer wanted
    assert gce.instances == {} and len(gce.calls_of("delete")) == 1
    assert record_of(store, IID).state is State.TERMINATED


def test_a_duplicate_delivery_of_a_finished_launch_steps_back(ctx: Context, store: MemoryStore,
                                                              gce: FakeProvider) -> None:
    open_lease(ctx)
    handle_demand(ctx, demand())
    out = handle_demand(ctx, demand())
    assert (out.state, out.created) == (State.RUNNING, False)
    assert gce.calls_of("create") == [IID] and len(actions(store, IID)) == 2


def test_a_concurrent_copy_that_finds_the_intent_just_created_steps_back(ctx: Context, store: MemoryStore,
                                                                         gce: FakeProvider) -> None:
    open_lease(ctx)
    other = new_record(instance_id=IID, lease_id="lease-1", deployment_id=DEP, event_id="ev-1", provider="gce",
                       now=ctx.now(), max_runtime_s=3600)
    store.on("create_intent", lambda: store.create_intent(other))  # the other copy got there first
    with pytest.raises(Transient, match="a launch is in flight"):
        handle_demand(ctx, demand())
    assert gce.calls == [] and record_of(store, IID) == other and store.audit_entries(IID) == []


def test_a_concurrent_copy_that_finds_the_intent_already_ended_returns_it(ctx: Context, store: MemoryStore,
                                                                          gce: FakeProvider) -> None:
    open_lease(ctx)
    ended = transition(new_record(instance_id=IID, lease_id="lease-1", deployment_id=DEP, event_id="ev-1",
                                  provider="gce", now=ctx.now(), max_runtime_s=3600),
                       State.FAILED, ctx.now(), reason="cooldown: x")
    store.on("create_intent", lambda: store.create_intent(ended))
    out = handle_demand(ctx, demand())
    assert (out.state, out.created, out.reason) == (State.FAILED, False, "cooldown: x") and gce.calls == []


def test_a_redelivery_that_loses_the_record_to_a_release_does_not_launch(ctx: Context, store: MemoryStore,
                                                                        gce: FakeProvider,
                                                                        clock: FakeClock) -> None:
    open_lease(ctx)
    put_record(ctx, IID, state=State.REQUESTED, age_s=ctx.settings.launch_retry_s + IN_FLIGHT_GRACE_S + 1,
               event_id="ev-1")
    store.on("update", lambda: handle_release(ctx, ReleaseEvent(lease_id="lease-1")))
    out = handle_demand(ctx, demand())
    assert (out.state, out.created) == (State.TERMINATED, False) and gce.calls_of("create") == []


# ------------------------------------------------------------------ request_replacement
def test_a_replacement_is_launched_once_and_linked(ctx: Context, store: MemoryStore, gce: FakeProvider,
                                                   clock: FakeClock) -> None:
    open_lease(ctx)
    handle_demand(ctx, demand())
    old = record_of(store, IID)
    first = request_replacement(ctx, old, "preempted")
    assert first is not None and first != IID
    new = record_of(store, first)
    assert new.replaces == IID and new.state is State.RUNNING and new.components == ["ml_models"]
    assert record_of(store, IID).replaced_by == first
    assert ("failover", "preempted") in actions(store, IID)
    assert request_replacement(ctx, old, "preempted") == first  # idempotent: the failover event id is derived
    assert len(gce.instances) == 2


def test_no_replacement_once_the_lease_is_gone_or_expired(ctx: Context, store: MemoryStore, gce: FakeProvider,
                                                          clock: FakeClock) -> None:
    open_lease(ctx)
    handle_demand(ctx, demand())
    old = record_of(store, IID)
    clock.advance(91)
    assert request_replacement(ctx, old, "preempted") is None
    store.retire_lease("lease-1")
    assert request_replacement(ctx, old, "preempted") is None
    assert gce.calls_of("create") == [IID] and record_of(store, IID).replaced_by is None


def test_a_refused_replacement_is_still_linked_and_audited(make_ctx: MakeCtx, store: MemoryStore,
                                                           gce: FakeProvider) -> None:
    ctx = make_ctx(max_instances_total=1)
    open_lease(ctx)
    handle_demand(ctx, demand())
    replacement = request_replacement(ctx, record_of(store, IID), "stopped_at_provider")
    assert replacement is not None and record_of(store, replacement).reason.startswith("global_limit")  # type: ignore[union-attr]
    assert [e["replacement"] for e in store.audit_entries(IID) if e["action"] == "failover"] == [replacement]


def test_a_first_heartbeat_that_beats_the_launcher_keeps_the_provider_facts(ctx: Context, store: MemoryStore,
                                                                            gce: FakeProvider,
                                                                            clock: FakeClock) -> None:
    """The VM's agent can beat before the launcher records RUNNING (a create retried after a timeout that
    had in fact made the VM): the record is READY by then, and must still learn where the instance is."""


    open_lease(ctx)

    def first_beat() -> None:
        rec = record_of(store, IID)
        assert handle_heartbeat(ctx, beat(rec), ctx.heartbeat_token(IID)).action == "continue"

    # create() runs, then -- before the launcher's RUNNING update -- the instance's first beat lands.
    gce.on("create", lambda: store.on("update", first_beat))
    out = handle_demand(ctx, demand())
    assert out.state is State.RUNNING
    [made] = gce.instances.values()
    rec = record_of(store, IID)
    assert rec.state is State.READY
    assert (rec.provider_id, rec.zone, rec.price_per_hour) == (made.provider_id, made.zone, made.price_per_hour)


# ------------------------------------------------------------------ dry run (spotleash check)
@pytest.mark.parametrize(("setup", "would"), [
    ("open", "launch_gce"), ("none", "wait_for_lease"), ("budget", "budget_exceeded")])
def test_a_dry_run_demand_audits_what_it_would_do_and_records_and_launches_nothing(
        setup: str, would: str, ctx: Context, store: MemoryStore, gce: FakeProvider, vast: FakeSshProvider) -> None:
    if setup != "none":
        open_lease(ctx)
    if setup == "budget":
        REFUSALS["budget_exceeded"](ctx)
    event = demand().model_copy(update={"dry_run": True})
    out = handle_demand(ctx, event)
    assert (out.instance_id, out.state, out.created, out.reason) == (IID, None, False, would)
    assert actions(store, IID) == [("demand_dry_run", would)]
    assert store.get(IID) is None and gce.calls == [] and vast.calls == []
