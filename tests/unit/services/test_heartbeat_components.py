"""handle_heartbeat with component reports, in-process: READY waits for every launched component, keeps
their states and endpoints; a package that cannot run or a component past its deadline deletes the box."""

from __future__ import annotations

from tests.support.builders import actions, launched, record_of
from tests.support.clock import FakeClock
from tests.support.fake_provider import FakeProvider
from tests.support.memory_store import MemoryStore

from spotleash.model import InstanceRecord, State
from spotleash.services.context import Context
from spotleash.services.heartbeat import BeatReply, handle_heartbeat
from spotleash.wire.events import ComponentReport, Heartbeat, InstanceFailure

SHA = "c" * 64


def with_package(ctx: Context) -> InstanceRecord:
    """A RUNNING instance launched for ``ml_models`` (the builders' demand) with a pinned package."""
    rec = launched(ctx)
    ctx.store.update(rec.instance_id, lambda r: r.model_copy(update={"package_sha256": SHA}))
    return record_of(ctx.store, rec.instance_id)


def send(ctx: Context, rec: InstanceRecord, components: dict[str, ComponentReport],
         failure: InstanceFailure | None = None) -> BeatReply:
    hb = Heartbeat(lease_id=rec.lease_id, instance_id=rec.instance_id, components=components, failure=failure)
    return handle_heartbeat(ctx, hb, ctx.heartbeat_token(rec.instance_id))


def test_ready_only_once_every_launched_component_is_healthy(ctx: Context, store: MemoryStore,
                                                             clock: FakeClock) -> None:
    rec = with_package(ctx)
    clock.advance(5)
    assert send(ctx, rec, {}) == BeatReply(200, "continue")  # the bootstrap's beats before it knows anything
    assert record_of(store, rec.instance_id).state is State.RUNNING
    clock.advance(5)
    assert send(ctx, rec, {"ml_models": ComponentReport(state="starting")}).action == "continue"
    got = record_of(store, rec.instance_id)
    assert got.state is State.RUNNING and got.last_heartbeat == clock.now
    assert got.component_states == {"ml_models": ComponentReport(state="starting")}
    clock.advance(5)
    healthy = ComponentReport(state="healthy", endpoint="203.0.113.7:8101")
    assert send(ctx, rec, {"ml_models": healthy}) == BeatReply(200, "continue")
    ready = record_of(store, rec.instance_id)
    assert ready.state is State.READY and ready.component_states["ml_models"].endpoint == "203.0.113.7:8101"
    ready_audit = [e for e in store.audit_entries(rec.instance_id) if e["action"] == "ready"]
    assert [(e["reason"], e["endpoints"]) for e in ready_audit] == [
        ("components healthy", {"ml_models": "203.0.113.7:8101"})]


def test_a_component_that_fails_after_ready_is_recorded_without_leaving_ready(ctx: Context,
                                                                              store: MemoryStore) -> None:
    rec = with_package(ctx)
    send(ctx, rec, {"ml_models": ComponentReport(state="healthy", endpoint="h:1")})
    restarting = ComponentReport(state="failing", error="exited with code 1", endpoint="h:1")
    assert send(ctx, rec, {"ml_models": restarting}).action == "continue"
    got = record_of(store, rec.instance_id)
    assert got.state is State.READY and got.component_states["ml_models"].error == "exited with code 1"


def test_a_component_past_its_deadline_deletes_the_instance_and_fails_it(ctx: Context, store: MemoryStore,
                                                                         gce: FakeProvider) -> None:
    rec = with_package(ctx)
    gone = ComponentReport(state="failing", error="not healthy within 300 s: HTTP 503", gave_up=True)
    assert send(ctx, rec, {"ml_models": gone}) == BeatReply(200, "stop", "component_unhealthy")
    failed = record_of(store, rec.instance_id)
    assert failed.state is State.FAILED and failed.ended_at is not None
    assert failed.reason == "component_unhealthy: ml_models: not healthy within 300 s: HTTP 503"
    assert gce.calls_of("delete") == [rec.provider_id] and gce.by_instance_id(rec.instance_id) is None
    assert ("launch_failed", "component_unhealthy") in actions(store, rec.instance_id)
    # a late beat of the dying agent is told to stop and changes nothing
    assert send(ctx, rec, {"ml_models": gone}).action == "stop"
    assert record_of(store, rec.instance_id) == failed


def test_a_package_that_cannot_run_deletes_the_instance_with_its_reason(ctx: Context, store: MemoryStore,
                                                                        gce: FakeProvider) -> None:
    rec = with_package(ctx)
    failure = InstanceFailure(reason="package_unverified", detail="sha256 mismatch")
    reply = send(ctx, rec, {"ml_models": ComponentReport(state="failing", error="package_unverified")}, failure)
    assert reply == BeatReply(200, "stop", "package_unverified")
    failed = record_of(store, rec.instance_id)
    assert failed.state is State.FAILED and failed.reason == "package_unverified: sha256 mismatch"
    assert gce.by_instance_id(rec.instance_id) is None
    entry = next(e for e in store.audit_entries(rec.instance_id) if e["action"] == "launch_failed")
    assert entry["reason"] == "package_unverified" and entry["detail"] == "sha256 mismatch"


def test_an_instance_that_worked_and_then_gave_up_ends_terminated(ctx: Context, store: MemoryStore) -> None:
    rec = with_package(ctx)
    send(ctx, rec, {"ml_models": ComponentReport(state="healthy", endpoint="h:1")})
    gone = ComponentReport(state="failing", error="not healthy within 300 s: exited", gave_up=True)
    assert send(ctx, rec, {"ml_models": gone}).action == "stop"
    ended = record_of(store, rec.instance_id)
    assert ended.state is State.TERMINATED and ended.reason is not None
    assert ended.reason.startswith("component_unhealthy")


def test_without_a_package_the_first_beat_is_ready_as_before(ctx: Context, store: MemoryStore) -> None:
    rec = launched(ctx)
    assert send(ctx, rec, {}).action == "continue"
    got = record_of(store, rec.instance_id)
    assert got.state is State.READY and got.component_states == {}


def test_the_ready_entry_keeps_when_the_instance_started_and_how_long_each_step_took(
        ctx: Context, store: MemoryStore, clock: FakeClock) -> None:
    rec = with_package(ctx)
    started = clock.now
    clock.advance(20)
    hb = Heartbeat(lease_id=rec.lease_id, instance_id=rec.instance_id, started_at=started,
                   timings={"fetch_s": 0.5, "install_s": 12.25, "to_healthy_s": 2.0},
                   components={"ml_models": ComponentReport(state="healthy", endpoint="h:1")})
    assert handle_heartbeat(ctx, hb, ctx.heartbeat_token(rec.instance_id)).action == "continue"
    [entry] = [e for e in store.audit_entries(rec.instance_id) if e["action"] == "ready"]
    assert entry["instance_started_at"] == started.isoformat()
    assert entry["timings"] == {"fetch_s": 0.5, "install_s": 12.25, "to_healthy_s": 2.0}


def test_boot_timings_are_read_from_what_the_bootstrap_hands_over() -> None:
    import json
    from datetime import UTC, datetime

    from spotleash.instance_agent.bootstrap import TIMINGS_ENV
    from spotleash.instance_agent.workload import boot_timings

    at = datetime(2026, 11, 29, 21, 0, tzinfo=UTC)
    env = {TIMINGS_ENV: json.dumps({"started_at": at.isoformat(), "fetch_s": 1.5, "install_s": 9.0})}
    assert boot_timings(env) == (at, {"fetch_s": 1.5, "install_s": 9.0})
    before = datetime.now(UTC)
    for bad in ({}, {TIMINGS_ENV: "not json"}, {TIMINGS_ENV: json.dumps({"fetch_s": 1})}):
        when, steps = boot_timings(bad)
        assert steps == {} and when >= before  # nothing readable: the agent's own start, no steps
