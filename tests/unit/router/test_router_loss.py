"""A remote copy that may be lost without notice: which failures make the agent ask for a check, and the
debounce.

Pure decision (``table.suspect_without_notice``), the table's once-per-run report, the router handing it to
``on_remote_lost`` over a real TLS front that stops answering, and the agent's ``LossReporter`` publishing a
``ReapTick`` naming the instance at most once per instance per ``every_s``.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from tests.unit.router.router_harness import COMPONENT, run, until, world

from spotleash.agent.loss import REASON, LossReporter, check_due
from spotleash.errors import Transient
from spotleash.router.table import Policy, Probes, RemoteState, RouteTable, suspect_without_notice
from spotleash.wire.events import Event, ReapTick

FP = "ab" * 32
POLICY = Policy(fall=2)
ONE_FAIL, TWO_FAILS, THREE_FAILS = Probes(0, 1, 1.0, "refused"), Probes(0, 2, 2.0, "refused"), Probes(0, 3, 3.0, "x")


def remote(state: str = "READY", comp: str | None = "healthy", preempted: bool = False) -> RemoteState:
    return RemoteState("sl-1", state, comp, "10.0.0.1:8443", FP, preempted)


def test_the_first_failure_of_a_copy_nothing_planned_to_end_makes_it_suspect() -> None:
    assert suspect_without_notice(remote(), Probes(), ONE_FAIL, POLICY)
    assert not suspect_without_notice(remote(), ONE_FAIL, TWO_FAILS, POLICY)  # asked already in this run
    later = Policy(fall=3, suspect=2)  # a stricter policy asks at its own count
    assert not suspect_without_notice(remote(), Probes(), ONE_FAIL, later)
    assert suspect_without_notice(remote(), ONE_FAIL, TWO_FAILS, later)


@pytest.mark.parametrize("bad", [{"suspect": 0}, {"suspect": 3, "fall": 2}])
def test_suspect_is_between_one_and_fall(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="bad route policy"):
        Policy(**bad)


@pytest.mark.parametrize(("r", "released", "before", "after"), [
    (remote(), True, Probes(), ONE_FAIL),  # the lease released: our own ending
    (remote(preempted=True), False, Probes(), ONE_FAIL),  # a preemption notice: failover is under way
    (remote(state="TERMINATING"), False, Probes(), ONE_FAIL),  # a release's or the reaper's deletion
    (remote(state="TERMINATED"), False, Probes(), ONE_FAIL),
    (None, False, Probes(), ONE_FAIL),  # its READY record gone
    (remote(comp="failing"), False, Probes(), ONE_FAIL),  # the instance is alive and says so
    (remote(), False, Probes(), Probes(1, 0, 1.0)),  # a passing probe
    (remote(), False, TWO_FAILS, THREE_FAILS),  # suspect already: reported at the first failure, not again
])
def test_planned_endings_and_repeats_are_not_losses(r: RemoteState | None, released: bool, before: Probes,
                                                    after: Probes) -> None:
    assert not suspect_without_notice(r, before, after, POLICY, released)


def _table() -> RouteTable:
    t = RouteTable({"c": True}, POLICY)
    t.set_remotes({"c": [remote()]}, 0.0)
    return t


def test_the_table_reports_each_run_of_failures_once_and_again_after_a_recovery() -> None:
    t = _table()
    for now in (1.0, 2.0, 3.0, 4.0):
        t.record_probe("c", "sl-1", False, now, "refused")
    [suspect] = t.take_suspects()
    assert (suspect.component, suspect.instance_id, suspect.error) == ("c", "sl-1", "refused")
    assert t.take_suspects() == []
    t.record_probe("c", "sl-1", True, 5.0)
    t.record_probe("c", "sl-1", False, 6.0, "timeout")
    t.record_probe("c", "sl-1", False, 7.0, "timeout")
    assert [x.error for x in t.take_suspects()] == ["timeout"]


def test_a_target_that_failed_once_is_unsettled_until_it_falls_or_answers() -> None:
    t = _table()
    assert not t.unsettled()
    t.record_probe("c", "sl-1", False, 1.0, "timeout")
    assert t.unsettled(), "one failure: probe again at once to confirm"
    t.record_probe("c", "sl-1", False, 1.2, "timeout")
    assert not t.unsettled(), "fallen: back to the interval"
    t.record_probe("c", "sl-1", True, 2.0)
    t.record_probe("c", None, False, 2.0, "refused")
    assert t.unsettled(), "the local copy's first failure counts too"
    t.record_probe("c", None, True, 2.2)
    assert not t.unsettled()
    t.set_remotes({"c": [remote(preempted=True)]}, 3.0)
    t.record_probe("c", "sl-1", False, 3.0, "timeout")
    assert not t.unsettled(), "a copy no longer probed (preempted) is not confirmed"


def test_the_table_reports_no_loss_once_the_lease_is_released_or_the_instance_ends() -> None:
    t = _table()
    t.release_lease(0.5)
    t.record_probe("c", "sl-1", False, 1.0)
    t.record_probe("c", "sl-1", False, 2.0)
    assert t.take_suspects() == []
    t = _table()
    t.set_remotes({"c": [remote(state="TERMINATING")]}, 0.5)
    t.record_probe("c", "sl-1", False, 1.0)
    t.record_probe("c", "sl-1", False, 2.0)
    assert t.take_suspects() == []


def test_the_router_hands_a_copy_that_stops_answering_to_on_remote_lost_once() -> None:
    told: list[tuple[str, str]] = []
    lock = threading.Lock()

    def lost(iid: str, error: str) -> None:
        with lock:
            told.append((iid, error))

    async def main() -> None:
        async with world(on_remote_lost=lost) as w:
            await w.go_remote()
            await w.front.stop()  # the box went away: nothing answers on its front
            await until(lambda: w.router.table.current(COMPONENT).target == "local", "local after the fall")
            await until(lambda: bool(told), "the loss reported")
            await until(lambda: w.router.table.remote_probes(COMPONENT, "sl-1").fail_streak >= 4, "more probes")
            with lock:
                assert [iid for iid, _ in told] == ["sl-1"]

    run(main())


def test_the_router_reports_nothing_once_the_lease_is_released() -> None:
    told: list[str] = []

    async def main() -> None:
        async with world(on_remote_lost=lambda iid, _e: told.append(iid)) as w:
            await w.go_remote()
            w.router.release_lease()  # our release: the control plane deletes the box, its record still READY
            await w.front.stop()
            for _ in range(3):
                await w.router.probe_once()  # the READY copy is still probed, and fails
            assert w.router.table.remote_probes(COMPONENT, "sl-1").fail_streak >= 2
            assert told == []

    run(main())


class FakePublisher:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.sent: list[Event] = []

    def publish(self, event: Event) -> Any:
        raise AssertionError("the reporter waits for its publish")

    def publish_and_wait(self, event: Event, timeout_s: float) -> str:
        if self.fail:
            raise Transient("pubsub down")
        self.sent.append(event)
        return "m-1"


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_check_due_is_at_most_once_per_period() -> None:
    assert check_due(None, 5.0, 30.0)
    assert not check_due(0.0, 29.9, 30.0)
    assert check_due(0.0, 30.0, 30.0)


def test_the_reporter_publishes_a_normal_reap_naming_the_instance_debounced_per_instance() -> None:
    pub, clock = FakePublisher(), Clock()
    rep = LossReporter("lease-1", pub, every_s=30.0, clock=clock)
    tick = rep.lost("sl-1", "ClientConnectorError: refused")
    assert isinstance(tick, ReapTick) and pub.sent == [tick]
    assert (tick.lease_id, tick.instance_id, tick.reason, tick.dry_run, tick.force) == (
        "lease-1", "sl-1", REASON, False, False)
    assert "refused" in tick.detail
    clock.t += 10
    assert rep.lost("sl-1", "again") is None  # debounced
    assert rep.lost("sl-2", "other box") is not None  # per instance
    clock.t += 20
    assert rep.lost("sl-1", "still") is not None
    assert [e.instance_id for e in pub.sent if isinstance(e, ReapTick)] == ["sl-1", "sl-2", "sl-1"]


def test_a_check_not_published_does_not_count_against_the_debounce() -> None:
    pub, clock = FakePublisher(fail=True), Clock()
    rep = LossReporter("lease-1", pub, every_s=30.0, clock=clock)
    assert rep.lost("sl-1", "refused") is None  # never raises
    pub.fail = False
    assert rep.lost("sl-1", "refused") is not None
