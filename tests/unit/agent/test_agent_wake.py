"""Wake on request (``spotleash.agent.wake``): the pure rule, the thread-safe waker, the agent loop publishing
one demand, and the real router (real sockets) telling the waker of a request it serves locally.

Stand-ins, said plainly: the publisher is a fake and the hibernation document and records are handed to
the waker the way the Firestore listener delivers them (``RecordWatch``'s hibernation listener runs on the
emulator in tests/e2e/test_hibernation.py).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from tests.support.agent_loop import FakeClock, FakePublisher, FakeStop
from tests.support.agent_router import (
    FakeWatch,
    Publisher,
    app_with,
    free_port,
    get,
    serve,
    wait_for,
)

from spotleash.agent.memory.reading import MemoryReading
from spotleash.agent.ram import fraction_reading
from spotleash.agent.routing import start_router
from spotleash.agent.runner import Agent, run_agent
from spotleash.agent.wake import Hibernated, Sent, Waker, wake_due
from spotleash.config import Settings, load_settings
from spotleash.errors import ConfigError
from spotleash.wire.events import DemandEvent

DOC = {"lease_id": "lease-w", "deployment_id": "default", "snapshot_id": "snap-1", "components": ["web"],
       "hibernated_at": "2026-11-30T01:00:00+00:00", "size_bytes": 10}
H = Hibernated.from_doc(DOC)


class LowRam:
    name = "lowram"

    def read(self) -> MemoryReading:
        return fraction_reading(0.30, 16 * 2**30, "lowram")


def test_the_rule() -> None:
    assert H is not None and H.snapshot_id == "snap-1" and H.components == ("web",)
    assert wake_due(H, "web", 0, None, 100.0, 5.0)
    assert not wake_due(None, "web", 0, None, 100.0, 5.0), "not hibernated: requests wake nothing"
    assert not wake_due(H, None, 0, None, 100.0, 5.0), "no request: nothing to wake for"
    assert not wake_due(H, "other", 0, None, 100.0, 5.0), "a component that is not asleep"
    assert not wake_due(H, "web", 1, None, 100.0, 5.0), "a launch is under way"
    assert not wake_due(H, "web", 0, Sent(H.key, 97.0), 100.0, 5.0), "sent 3 s ago"
    assert wake_due(H, "web", 0, Sent(H.key, 95.0), 100.0, 5.0), "sent long ago and nothing launched"
    assert wake_due(H, "web", 0, Sent("older-hibernation", 99.0), 100.0, 5.0), "a new hibernation"
    every = Hibernated.from_doc({**DOC, "components": []})
    assert every is not None and wake_due(every, "anything", 0, None, 1.0, 5.0)


@pytest.mark.parametrize("doc", [None, {}, {"snapshot_id": 3}, {"components": ["web"]}])
def test_a_missing_or_unreadable_document_is_no_hibernation(doc: Any) -> None:
    assert Hibernated.from_doc(doc) is None


def test_another_deployments_hibernation_is_not_ours() -> None:
    assert Hibernated.from_doc(DOC, "default") == H
    assert Hibernated.from_doc(DOC, "staging") is None
    w = Waker(retry_s=5.0, deployment_id="staging")
    w.hibernation_changed(DOC)
    w.requested("web")
    assert w.hibernated is None and w.due(1.0) is None


def test_the_waker_sends_once_per_hibernation_and_again_only_after_a_launch_came_to_nothing() -> None:
    w = Waker(retry_s=5.0)
    w.requested("web")
    assert w.due(1.0) is None, "a request before any hibernation is not remembered"
    w.hibernation_changed(DOC)
    assert w.due(2.0) is None, "hibernated, but no request yet"
    w.requested("web")
    w.requested("web")
    sent = w.due(3.0)
    assert sent is not None and sent.components == ("web",) and sent.asked_by == "web"
    w.requested("web")
    assert w.due(3.5) is None, "one demand per hibernation"
    w.records_changed([{"instance_id": "i-2", "state": "PROVISIONING"}, {"instance_id": "i-1", "state": "TERMINATED"}])
    w.requested("web")
    assert w.due(20.0) is None, "the launch is under way"
    w.records_changed([{"instance_id": "i-2", "state": "FAILED"}, {"instance_id": "i-1", "state": "TERMINATED"}])
    assert w.due(21.0) is None, "it failed, but no request has asked since"
    w.requested("web")
    assert w.due(22.0) is not None, "the launch came to nothing and a new request asks"
    w.hibernation_changed(None)
    w.requested("web")
    assert w.due(40.0) is None and w.hibernated is None, "awake: requests wake nothing"


def test_the_agent_loop_publishes_one_request_demand_for_the_hibernated_components(tmp_path: Path) -> None:
    settings = Settings(components=["web", "db"], component_ram_gb={"web": 1.0, "db": 2.0}, state_dir=tmp_path,
                        sample_interval_s=1.0, lease_renew_s=5, lease_ttl_s=30)
    clock = FakeClock()
    waker = Waker(retry_s=settings.demand_cooldown_s)
    pub = FakePublisher()
    agent = Agent(settings, lease_id="lease-w", memory=LowRam(), publisher=pub, stop=FakeStop(clock),
                  clock=clock, waker=waker, route_credential_sha256="a" * 64)
    agent.tick(0.0)
    waker.hibernation_changed(DOC)
    agent.wake(clock())
    assert pub.of(DemandEvent) == [], "no request, no demand (RAM is low)"
    waker.requested("web")
    agent.wake(clock())
    [d] = pub.of(DemandEvent)
    assert d.trigger == "request" and [c.name for c in d.components] == ["web"] and d.ram_percent == 30.0
    assert d.route_credential_sha256 == "a" * 64, "the woken instance's front admits this router"
    agent._check_in_flight(clock())
    waker.requested("web")
    agent.wake(clock() + 1)
    assert len(pub.of(DemandEvent)) == 1


def test_a_request_through_the_router_is_served_locally_and_wakes_the_lease(tmp_path: Path) -> None:
    local, local_port = serve("local")
    route_port = free_port()
    settings = Settings(components=["web"], component_ram_gb={"web": 1.0}, router_admin_port=None,
                        state_dir=tmp_path, sample_interval_s=0.05, lease_renew_s=5, lease_ttl_s=30,
                        wake_on_request=True)
    watches: list[FakeWatch] = []
    router = start_router(settings, "lease-w", app_with(local_port, route_port), watch_factory=FakeWatch.factory(watches))
    assert router is not None and router.waker is not None
    publisher = Publisher(router)
    stop = threading.Event()
    agent = threading.Thread(target=lambda: run_agent(
        settings, lease_id="lease-w", memory=LowRam(), publisher=publisher, stop=stop, install_signals=False,
        router=router), daemon=True)
    try:
        agent.start()
        assert get(route_port) == "local"
        router.waker.hibernation_changed(DOC)  # as the listener delivers hibernations/<lease>
        assert [e for e in publisher.sent if isinstance(e, DemandEvent)] == []
        assert get(route_port) == "local", "the request is served by the local copy meanwhile"
        demand = wait_for(lambda: [e for e in publisher.sent if isinstance(e, DemandEvent)], what="a wake demand")
        assert [(d.trigger, [c.name for c in d.components]) for d in demand] == [("request", ["web"])]
        assert demand[0].route_credential_sha256 == router.credential_sha256
    finally:
        stop.set()
        agent.join(timeout=20)
        router.stop()
        local.shutdown()


def test_wake_on_request_without_a_routed_component_fails_at_start(tmp_path: Path) -> None:
    s = Settings(components=["web"], router_admin_port=None, state_dir=tmp_path, wake_on_request=True)
    with pytest.raises(ConfigError, match="SPOTLEASH_WAKE_ON_REQUEST is on, but no component"):
        start_router(s, "lease-1", app_with(8101, None))


def test_a_wrong_wake_on_request_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPOTLEASH_WAKE_ON_REQUEST", "sometimes")
    with pytest.raises(ConfigError, match="SPOTLEASH_WAKE_ON_REQUEST"):
        load_settings()
    monkeypatch.setenv("SPOTLEASH_WAKE_ON_REQUEST", "true")
    assert load_settings().wake_on_request is True
    monkeypatch.setenv("SPOTLEASH_IDLE_CPU_PERCENT", "150")
    with pytest.raises(ConfigError, match="SPOTLEASH_IDLE_CPU_PERCENT"):
        load_settings()
