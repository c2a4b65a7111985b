"""The agent loop with a hand-off: the release waits for the way home, the way home's release is published once
and lets a later demand fire, components not started at start are demanded at once, a failing way home backs off
(fake clock, no I/O)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any, cast

from tests.support.agent_loop import GB, SETTINGS, FakeClock, FakePublisher, FakeStop, Ramp

from spotleash.agent.handoff import HandOff
from spotleash.agent.local_copies import LocalCopies, LocalCopyError
from spotleash.agent.memory.reading import MemoryReading
from spotleash.agent.runner import Agent, configured_components
from spotleash.decide.handoff import HomeRule
from spotleash.wire.events import DemandEvent, ReleaseEvent


class StubHandOff:
    """What the loop asks of ``agent.handoff.HandOff``, with the actor's outcome set by the test."""

    def __init__(self) -> None:
        self.is_away = False
        self.release: str | None = None
        self.observed: list[float] = []
        self.demanded_names: list[list[str]] = []

    def observe(self, t: float, reading: Any, pressured: bool) -> None:
        self.observed.append(t)

    def away(self) -> bool:
        return self.is_away

    def take_release(self) -> str | None:
        reason, self.release = self.release, None
        return reason

    def demanded(self, names: Sequence[str]) -> None:
        self.demanded_names.append(list(names))


def agent(clock: FakeClock, pub: FakePublisher, fn: Any, handoff: Any, withheld: tuple[str, ...] = ()) -> Agent:
    return Agent(SETTINGS, lease_id="lease-a", memory=Ramp(clock, fn), publisher=pub, stop=FakeStop(clock),
                 clock=clock, handoff=cast(HandOff, handoff), withheld=withheld)


def test_the_release_waits_while_a_local_copy_is_stopped() -> None:
    clock, pub, h = FakeClock(), FakePublisher(), StubHandOff()
    h.is_away = True  # the hand-off stopped a local copy: only the way home may release
    a = agent(clock, pub, lambda t: 0.9 if t < 10 else 0.4, h)
    a.run(120)  # far past the 20 s hold below 70 %
    assert len(pub.of(DemandEvent)) == 1 and pub.of(ReleaseEvent) == []
    assert a.state.demanding, "still demanding: no second demand while the work is away"
    assert h.demanded_names == [["vision"]] and len(h.observed) >= 100


def test_the_way_home_releases_once_and_a_later_demand_fires_again() -> None:
    clock, pub, h = FakeClock(), FakePublisher(), StubHandOff()
    fired = {"home": False}

    def ram(t: float) -> float:
        if 20 <= t and not fired["home"]:
            fired["home"] = True
            h.release = "came home: vision serves locally again"
        return 0.9 if t < 10 or t >= 100 else 0.4

    a = agent(clock, pub, ram, h)
    a.run(180)
    demands, releases = pub.of(DemandEvent), pub.of(ReleaseEvent)
    assert len(releases) == 1 and releases[0].reason == "came home: vision serves locally again"
    assert len(demands) == 2, "after the way home the trigger may demand again (past the cooldown)"
    assert pub.sent.index(demands[0]) < pub.sent.index(releases[0]) < pub.sent.index(demands[1])
    assert h.demanded_names == [["vision"], ["vision"]]


def test_a_component_not_started_at_start_is_demanded_at_once() -> None:
    clock, pub, h = FakeClock(), FakePublisher(), StubHandOff()
    a = agent(clock, pub, lambda t: 0.3, h, withheld=("ml_models",))  # memory is fine now, but ml_models runs nowhere
    a.run(5)
    (d,) = pub.of(DemandEvent)
    assert [c.name for c in d.components] == ["ml_models"] and d.needs_gpu
    assert a.withheld == () and a.state.demanding


def test_the_handoff_state_starts_as_the_agent_starts() -> None:
    """No local copies (user-run, or none): every component is 'none' locally and shown where the router sends it;
    a component withheld at start is 'stopped', waiting for its remote copy."""
    h = HandOff(None, None, components=configured_components(SETTINGS), offload={}, threshold=0.85,
                home=HomeRule(0.7, 20.0), drain_s=1.0, withheld=("ml_models",))
    snap = h.snapshot()
    assert snap["vision"]["local"] == "none" and snap["vision"]["where"] == "local"
    assert snap["ml_models"]["local"] == "stopped" and snap["ml_models"]["where"] == "none"
    assert "memory past the limit at start" in snap["ml_models"]["reason"]
    assert h.away() and h.away_bytes() == 4 * GB  # ml_models' declared default
    assert h.footprints() == {}


def test_close_ends_the_actor_thread_without_a_router() -> None:
    """CI, 2026-12-07: with no router the thread waited on the close event and cleared it, so close() sat out its
    whole join (5 s, twice) and the agent's SIGTERM shutdown spent its budget before publishing the release."""
    h = HandOff(None, None, components=configured_components(SETTINGS), offload={}, threshold=0.85,
                home=HomeRule(0.7, 20.0), drain_s=1.0)
    h.start()
    h.close(timeout_s=30)
    assert h._thread is not None and not h._thread.is_alive()


class NeverHealthy:
    """Local copies whose every start fails (``LocalCopies.start`` raising, as for a copy that crash-loops)."""

    names = ["vision"]

    def __init__(self) -> None:
        self.starts = 0

    def start(self, name: str) -> None:
        self.starts += 1
        raise LocalCopyError(f"the local copy of {name} did not get healthy: exited at once")

    def stop(self, name: str) -> int:
        return 0

    def pid(self, name: str) -> int | None:
        return None

    def footprints(self) -> dict[str, int]:
        return {}


class QuietRouter:
    def __init__(self) -> None:
        self.changed = threading.Event()

    def routes(self) -> dict[str, dict[str, Any]]:
        return {"vision": {"target": "remote"}}

    def set_local_mode(self, component: str, mode: Any) -> None:
        pass

    def wait_local_drained(self, component: str, timeout_s: float) -> bool:
        return True

    def wait_drained(self, timeout_s: float) -> bool:
        return True

    def reopen_lease(self) -> None:
        pass


def test_a_failing_way_home_is_tried_again_further_and_further_apart() -> None:
    """Memory fits all along, the local copy never gets healthy: the way home is tried after the hold (20 s), then
    backs off 20, 40, 80 s (``HomeRule.failed``), its remote copy serving meanwhile; the state says why."""
    copies = NeverHealthy()
    h = HandOff(cast(LocalCopies, copies), QuietRouter(), components=configured_components(SETTINGS), offload={},
                threshold=0.85, home=HomeRule(0.7, 20.0), drain_s=1.0, withheld=("vision",))
    reading = SimpleNamespace(available_bytes=64 * GB, limit_bytes=64 * GB)
    tried = []
    for t in range(0, 200):
        h.observe(float(t), cast(MemoryReading, reading), False)
        if h._home_due:
            tried.append(t)
            h.pass_once()
    assert tried == [20, 41, 82, 163] and copies.starts == 4
    assert h.take_release() is None, "no release while the local copy never answered"
    assert "last 4 way(s) home failed: next try in" in h.snapshot()["vision"]["home"]
