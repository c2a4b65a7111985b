"""The agent loop and its shutdown, on a fake clock with a fake publisher (no I/O, no real waits)."""

from __future__ import annotations

import logging
import signal
from typing import Any

import pytest
from tests.support.agent_loop import GB, SETTINGS, FakeClock, FakePublisher, FakeStop, Ramp

from spotleash.agent import default_lease_id, label_safe
from spotleash.agent.memory.reading import MemoryReading
from spotleash.agent.runner import Agent, configured_components, run_agent
from spotleash.agent.shutdown import Shutdown
from spotleash.config import Settings
from spotleash.wire.events import DemandEvent, LeaseEvent, ReleaseEvent, parse_event


def test_loop_renews_lease_samples_on_time_and_demands_once() -> None:
    clock = FakeClock()
    pub = FakePublisher()
    stop = FakeStop(clock)
    ram = Ramp(clock, lambda t: 0.9 if t >= 5 else 0.5)
    agent = Agent(SETTINGS, lease_id="lease-a", memory=ram, publisher=pub, stop=stop, clock=clock, holder="h")
    agent.run(run_for_s=35)
    leases = pub.of(LeaseEvent)
    assert len(leases) == 4  # t = 0, 10, 20, 30
    assert all(e.ttl_s == 30.0 and e.lease_id == "lease-a" and e.holder == "h" for e in leases)
    assert 34 <= agent.stats.samples <= 36
    (d,) = pub.of(DemandEvent)
    assert d.trigger == "threshold" and d.ram_percent == 90.0
    # 16 GB at 90 %: 0.8 GB short of the 15 % headroom target; the heaviest component (vision, 6 GB) covers it
    assert [(c.name, c.ram_gb, c.gpu) for c in d.components] == [("vision", 6.0, False)]
    assert max(stop.waits) <= SETTINGS.sample_interval_s + 1e-9  # no long sleeps, no busy loop
    assert min(stop.waits) > 0


def test_release_after_memory_stays_low_for_the_hold() -> None:
    clock = FakeClock()
    pub = FakePublisher()
    ram = Ramp(clock, lambda t: 0.9 if t < 10 else 0.4)
    Agent(SETTINGS, lease_id="lease-a", memory=ram, publisher=pub, stop=FakeStop(clock), clock=clock).run(60)
    assert len(pub.of(DemandEvent)) == 1
    (r,) = pub.of(ReleaseEvent)
    assert "below 70%" in r.reason
    assert pub.sent.index(r) > pub.sent.index(pub.of(DemandEvent)[0])


def test_failed_demand_is_published_again_with_the_same_event_id(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    pub = FakePublisher(fail=True)
    ram = Ramp(clock, lambda t: 0.95)
    with caplog.at_level(logging.WARNING):
        Agent(SETTINGS, lease_id="lease-a", memory=ram, publisher=pub, stop=FakeStop(clock), clock=clock).run(12)
    ds = pub.of(DemandEvent)
    assert len(ds) >= 2 and len({d.event_id for d in ds}) == 1
    assert any("publishing it again" in r.getMessage() for r in caplog.records)


def test_stop_ends_the_loop_within_one_tick_and_run_agent_releases_once() -> None:
    clock = FakeClock()
    pub = FakePublisher()

    def stop_at_7s(stop: FakeStop) -> None:
        if clock.now - 1000.0 >= 7:
            stop.set()

    stop = FakeStop(clock, on_wait=stop_at_7s)
    code = run_agent(SETTINGS, lease_id="lease-a", memory=Ramp(clock, lambda t: 0.5), publisher=pub,
                     clock=clock, stop=stop, install_signals=False)
    assert code == 0
    (rel,) = pub.of(ReleaseEvent)
    assert rel.reason == "agent shutdown: exit"
    assert clock.now - 1000.0 <= 7 + SETTINGS.sample_interval_s
    assert isinstance(parse_event(rel.to_bytes(), ReleaseEvent), ReleaseEvent)


def test_run_agent_releases_even_when_the_loop_crashes() -> None:
    clock = FakeClock()
    pub = FakePublisher()

    class Broken:
        name = "broken"

        def read(self) -> MemoryReading:
            raise OSError("no /proc")

    with pytest.raises(OSError):
        run_agent(SETTINGS, lease_id="lease-a", memory=Broken(), publisher=pub, clock=clock,
                  stop=FakeStop(clock), install_signals=False)
    (rel,) = pub.of(ReleaseEvent)
    assert rel.reason == "agent shutdown: crash (OSError)"


# ------------------------------------------------------------------ shutdown
def _shutdown(pub: FakePublisher, clock: FakeClock, exits: list[int] | None = None) -> Shutdown:
    return Shutdown(lease_id="lease-a", publisher=pub, budget_s=10.0, lease_ttl_s=30.0, clock=clock,
                    hard_exit=(exits.append if exits is not None else lambda code: None))


def test_release_happens_exactly_once_whatever_fires() -> None:
    clock, pub = FakeClock(), FakePublisher()
    sd = _shutdown(pub, clock)
    sd._on_signal(signal.SIGTERM, None)
    assert sd.signal_received == signal.SIGTERM
    assert sd.release() is True
    sd._at_exit()  # the atexit path after the signal path
    assert sd.release("again") is True
    (rel,) = pub.of(ReleaseEvent)
    assert rel.reason == "agent shutdown: SIGTERM"


def test_budget_runs_from_the_signal() -> None:
    clock, pub = FakeClock(), FakePublisher()
    sd = _shutdown(pub, clock)
    sd._on_signal(signal.SIGHUP, None)
    clock.now += 4  # the loop took 4 s to notice
    sd.release()
    assert pub.waited == [pytest.approx(6.0)]


def test_unconfirmed_release_says_lease_expiry_will_clean_up(caplog: pytest.LogCaptureFixture) -> None:
    clock, pub = FakeClock(), FakePublisher(confirm=False)
    sd = _shutdown(pub, clock)
    with caplog.at_level(logging.INFO):
        sd._on_signal(signal.SIGINT, None)
        assert sd.release() is False
    rec = next(r for r in caplog.records if "NOT confirmed" in r.getMessage())
    assert "lease expiry will still delete" in rec.getMessage()
    assert rec.fields["lease_ttl_s"] == 30.0 and rec.fields["reason"] == "agent shutdown: SIGINT"  # type: ignore[attr-defined]


def test_spent_budget_does_not_publish() -> None:
    clock, pub = FakeClock(), FakePublisher()
    sd = _shutdown(pub, clock)
    sd._on_signal(signal.SIGTERM, None)
    clock.now += 11
    assert sd.release() is False
    assert pub.sent == []


def test_second_signal_exits_at_once_with_128_plus_signum(capfd: pytest.CaptureFixture[str]) -> None:
    clock, pub = FakeClock(), FakePublisher()
    exits: list[int] = []
    sd = _shutdown(pub, clock, exits)
    sd._on_signal(signal.SIGTERM, None)
    assert exits == []
    sd._on_signal(signal.SIGINT, None)
    assert exits == [128 + signal.SIGINT]
    assert "second signal" in capfd.readouterr().err


# ------------------------------------------------------------------ ids and components
@pytest.mark.parametrize("raw,expected", [
    ("Alice-LAPTOP.local", "alice-laptop-local"),
    ("__x__", "x"),
    ("ü@ö", "agent"),
    ("a" * 100, "a" * 63),
])
def test_label_safe(raw: str, expected: str) -> None:
    assert label_safe(raw) == expected


def test_default_lease_id_is_label_safe() -> None:
    import re
    assert re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", default_lease_id())


def test_components_default_to_4_gb_without_gpu() -> None:
    cs = configured_components(Settings(components=["a", "vision"], component_ram_gb={}))
    assert [(c.name, c.ram_gb, c.gpu) for c in cs] == [("a", 4.0, False), ("vision", 4.0, False)]


# ------------------------------------------------------------------ memory → placement → the demand
class Readings:
    """Readings that follow a function of the fake clock."""

    name = "readings"

    def __init__(self, clock: FakeClock, fn: Any) -> None:
        self.clock, self.fn, self.t0 = clock, fn, clock.now

    def read(self) -> MemoryReading:
        r: MemoryReading = self.fn(self.clock.now - self.t0)
        return r


def _cgroup(available_gb: float, psi: float | None = None) -> MemoryReading:
    return MemoryReading(limit_bytes=8 * GB, available_bytes=int(available_gb * GB),
                         used_bytes=8 * GB - int(available_gb * GB), source="cgroup v1 /sys/fs/cgroup/memory/t",
                         psi_some_avg10=psi)


PLACED = Settings(sample_interval_s=1.0, lease_renew_s=10.0, lease_ttl_s=30.0, demand_cooldown_s=60.0,
                  components=["vision", "ml_models", "chatbots", "db"],
                  component_ram_gb={"vision": 2.0, "ml_models": 3.0, "chatbots": 1.0, "db": 5.0},
                  gpu_components=["vision"], component_offload={"db": "never", "chatbots": "keep"})


def _run(settings: Settings, fn: Any, seconds: float = 8, **kw: Any) -> tuple[FakePublisher, Agent]:
    clock, pub = FakeClock(), FakePublisher()
    agent = Agent(settings, lease_id="lease-p", memory=Readings(clock, fn), publisher=pub, stop=FakeStop(clock),
                  clock=clock, **kw)
    agent.run(seconds)
    return pub, agent


def test_the_demand_names_exactly_what_placement_chose() -> None:
    # 8 GB cgroup, 0.5 GB free: 0.7 GB short of the 1.2 GB target. db (5 GB) never moves, chatbots is kept:
    # ml_models (3 GB, the heaviest movable) alone restores it
    pub, agent = _run(PLACED, lambda t: _cgroup(4.0 if t < 3 else 0.5))
    (d,) = pub.of(DemandEvent)
    assert [(c.name, c.ram_gb, c.gpu) for c in d.components] == [("ml_models", 3.0, False)]
    assert d.trigger == "threshold" and d.ram_percent == 93.75
    assert agent.last_placement is not None and agent.last_placement.stays == ("db",)
    assert agent.last_placement.kept == ("chatbots",)


def test_measured_footprints_outweigh_the_declared_ones() -> None:
    # vision's local copy really holds 3.5 GB: it is now the heaviest, and its instance is sized for that
    pub, agent = _run(PLACED, lambda t: _cgroup(0.5), footprints=lambda: {"vision": int(3.501 * GB),
                                                                          "ml_models": int(0.2 * GB)})
    (d,) = pub.of(DemandEvent)
    assert [(c.name, c.ram_gb, c.gpu) for c in d.components] == [("vision", 3.51, True)]
    assert d.needs_gpu  # the demand goes to a GPU box
    assert agent.last_placement is not None and agent.last_placement.move[0].measured


def test_pressure_alone_demands_and_moves_one_component() -> None:
    pub, _ = _run(PLACED, lambda t: _cgroup(4.0, psi=55.0))
    (d,) = pub.of(DemandEvent)
    assert d.trigger == "pressure" and [c.name for c in d.components] == ["ml_models"]


def test_psi_under_the_setting_is_not_pressure() -> None:
    pub, _ = _run(PLACED, lambda t: _cgroup(4.0, psi=5.0))
    assert pub.of(DemandEvent) == []


def test_nothing_movable_publishes_no_demand_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    stuck = Settings(components=["db"], component_ram_gb={"db": 5.0}, component_offload={"db": "never"},
                     lease_renew_s=10.0, lease_ttl_s=30.0)
    with caplog.at_level(logging.WARNING):
        pub, _ = _run(stuck, lambda t: _cgroup(0.1))
    assert pub.of(DemandEvent) == []
    assert any("no component can move" in r.getMessage() for r in caplog.records)


def test_an_offload_naming_no_component_fails_at_start() -> None:
    with pytest.raises(ValueError, match="SPOTLEASH_COMPONENT_OFFLOAD names \\['web'\\]"):
        Settings(components=["db"], component_offload={"web": "never"})
