"""Each function calls the providers only as its topology roles allow, and publishes only where it may.

Terraform grants every function exactly the Compute permissions of its roles in topology.json
(launcher: create; deleter: delete; lister: get/list) and the publisher role on its ``publishes`` topics.
The local stack enforces no IAM, so a service that calls beyond its grant works here and fails with a
403 in a real project. These tests run the heartbeat and the reaper through every path that touches a
provider and compare what they called with what the function running them is granted.
"""

from __future__ import annotations

import pytest
from tests.support.builders import MakeCtx, beat, launched, open_lease
from tests.support.clock import FakeClock
from tests.support.fake_provider import FakeProvider, FakeSshProvider
from tests.support.memory_store import MemoryStore

from spotleash.model import Lease, State
from spotleash.services.context import Context
from spotleash.services.heartbeat import handle_heartbeat
from spotleash.services.reap import run_reap
from spotleash.topology import load_topology
from spotleash.wire.events import DemandEvent, ReapTick

NEEDS = {  # provider verb -> the topology roles whose permissions allow it (terraform/topology.tf)
    "create": {"launcher"},
    "delete": {"launcher", "deleter"},
    "get": {"launcher", "deleter", "lister"},
    "find": {"launcher", "deleter", "lister"},
    "list_owned": {"launcher", "deleter", "lister"},
}
NOT_GOOGLE = {"learn_host_key"}  # an SSH connection to the box: no Google permission involved


class Published:
    """The demand topic as a function sees it: what it published, nothing launched in its process."""

    def __init__(self) -> None:
        self.events: list[DemandEvent] = []

    def __call__(self, event: DemandEvent) -> None:
        self.events.append(event)


@pytest.fixture
def published() -> Published:
    return Published()


@pytest.fixture
def as_function(make_ctx: MakeCtx) -> Context:
    """The function's context; ``start_counting`` clears the set-up's calls (its launches) and swaps the bus."""
    return make_ctx(confirm_delete_s=0.01)


def granted_verbs(function: str) -> set[str]:
    roles = set(load_topology().functions[function].roles)
    return {verb for verb, allowed in NEEDS.items() if roles & allowed} | NOT_GOOGLE


def called(*providers: FakeProvider) -> set[str]:
    return {verb for p in providers for verb, _ in p.calls}


def start_counting(published: Published, ctx: Context, *providers: FakeProvider) -> None:
    for p in providers:
        p.calls.clear()
    ctx.demand_bus = published


def assert_within_grant(function: str, published: Published, *providers: FakeProvider) -> None:
    verbs = called(*providers)
    assert verbs, "the scenario touched no provider: it proves nothing"
    assert verbs <= granted_verbs(function), f"{function} called {sorted(verbs - granted_verbs(function))}, " \
        f"beyond its roles {load_topology().functions[function].roles}"
    topic = load_topology().topic_of("demand")
    if published.events:
        assert topic in load_topology().functions[function].publishes, f"{function} may not publish to {topic}"


@pytest.mark.parametrize("case", ["preempted", "lease_expired"])
def test_the_heartbeat_deletes_and_publishes_but_never_creates(case: str, as_function: Context, store: MemoryStore,
                                                                gce: FakeProvider, published: Published,
                                                                clock: FakeClock) -> None:
    rec = launched(as_function)
    start_counting(published, as_function, gce)
    if case == "lease_expired":
        store.put_lease(Lease(lease_id=rec.lease_id, deployment_id=store.deployment_id, expires_at=clock.now,
                              renewed_at=clock.now))
    clock.advance(5)
    reply = handle_heartbeat(as_function, beat(rec, preempted=case == "preempted"),
                             as_function.heartbeat_token(rec.instance_id))
    assert reply.action == "stop"
    if case == "preempted":  # kept for its preemption grace (its snapshot asks answered); the next beat deletes it
        clock.advance(as_function.settings.preemption_grace_s)
        assert handle_heartbeat(as_function, beat(rec), as_function.heartbeat_token(rec.instance_id)).action == "stop"
    assert_within_grant("on_heartbeat", published, gce)
    assert "create" not in called(gce)
    if case == "preempted":  # the replacement is asked for on the demand topic, for on_demand to launch
        assert [e.replaces for e in published.events] == [rec.instance_id]
        assert store.get(rec.instance_id).replaced_by is not None  # type: ignore[union-attr]


def test_the_heartbeat_learns_a_vast_host_key_within_its_grant(as_function: Context, vast: FakeSshProvider,
                                                               published: Published, clock: FakeClock) -> None:
    rec = launched(as_function, gpu=True)
    start_counting(published, as_function, vast)
    clock.advance(5)
    handle_heartbeat(as_function, beat(rec), as_function.heartbeat_token(rec.instance_id))
    assert "learn_host_key" in called(vast)
    assert_within_grant("on_heartbeat", published, vast)


@pytest.mark.parametrize("case", ["outbid", "vanished", "heartbeat_lost", "lease_expired", "orphan"])
def test_the_reaper_deletes_and_publishes_but_never_creates(case: str, as_function: Context, store: MemoryStore,
                                                            gce: FakeProvider, vast: FakeSshProvider,
                                                            published: Published, clock: FakeClock) -> None:
    rec = launched(as_function, gpu=case == "outbid")
    assert rec.provider_id is not None
    handle_heartbeat(as_function, beat(rec), as_function.heartbeat_token(rec.instance_id))  # it did beat once
    start_counting(published, as_function, gce, vast)
    if case == "outbid":
        vast.take_back(rec.provider_id, native_status="outbid")
    elif case == "vanished":
        gce.vanish(rec.provider_id)
        clock.advance(as_function.settings.heartbeat_timeout_s)
        open_lease(as_function)
    elif case == "heartbeat_lost":
        clock.advance(as_function.settings.heartbeat_timeout_s + 1)
        open_lease(as_function)  # the lease is alive: the silent instance is replaced
    elif case == "lease_expired":
        clock.advance(as_function.settings.lease_ttl_s + 1)
    else:
        gce.plant(None, lease_id="lease-nobody", deployment_id=store.deployment_id, age_s=3600)
    report = run_reap(as_function, ReapTick(event_id=f"tick-{case}"))
    assert report.plan.decisions and not report.failed, (report.plan.decisions, report.failed)
    assert_within_grant("on_reap", published, gce, vast)
    assert "create" not in called(gce, vast)
    if case in ("outbid", "vanished", "heartbeat_lost"):
        assert [e.replaces for e in published.events] == [rec.instance_id], (case, published.events)
        assert store.get(rec.instance_id).state is State.TERMINATED  # type: ignore[union-attr]
