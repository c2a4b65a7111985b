"""The agent's loop: read memory, feed the trigger, place, renew the lease, publish what they say.

A demand names exactly the components placement chose (``decide.placement``): the fewest whose
footprint — measured from their local copies when ``footprints`` gives it, else their declared
``ram_gb`` — restores the headroom the reading misses.

Nothing here blocks for long: lease and demand publishes are asynchronous (their futures are
checked on later ticks, a failed demand is published again with the same event id), and all
waiting is ``stop.wait(timeout)``, so a signal ends the loop within one tick.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

from spotleash.adapters.pubsub import EventPublisher, PublishFuture
from spotleash.agent.memory.reading import MemoryReading, MemorySource
from spotleash.agent.trigger import Demand, Release, TriggerPolicy, TriggerState, under_pressure
from spotleash.decide.placement import Candidate, Placement, place
from spotleash.log import get_logger
from spotleash.signal_event import SignalEvent
from spotleash.wire.events import Component, DemandEvent, Event, LeaseEvent, ReleaseEvent

if TYPE_CHECKING:
    from spotleash.agent.handoff import HandOff
    from spotleash.agent.routing import AgentRouter
    from spotleash.agent.wake import Waker
    from spotleash.config import Settings

log = get_logger(__name__)

DEFAULT_COMPONENT_RAM_GB = 4.0
DEMAND_RETRY_S = 5.0
GB = 2**30

Footprints = Callable[[], Mapping[str, int]]  # component -> bytes its running local copy holds (supervisor.footprint)


class StopSignal(Protocol):
    """A ``threading.Event`` (tests pass one driven by a fake clock)."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...

    def set(self) -> None: ...


def configured_components(settings: Settings) -> list[Component]:
    gpu = set(settings.gpu_components)
    return [
        Component(name=n, ram_gb=settings.component_ram_gb.get(n, DEFAULT_COMPONENT_RAM_GB), gpu=n in gpu)
        for n in settings.components
    ]


def candidates_of(settings: Settings, components: list[Component], measured: Mapping[str, int]) -> list[Candidate]:
    """Placement's view of each component: its measured footprint where its local copy runs, else declared."""
    return [Candidate(name=c.name, footprint_bytes=measured.get(c.name, round(c.ram_gb * GB)), gpu=c.gpu,
                      measured=c.name in measured, offload=settings.component_offload.get(c.name, "default"))
            for c in components]


def demand_components(placement: Placement, declared: list[Component]) -> list[Component]:
    """The components a demand names: placement's choice, each sized for the larger of declared and measured
    (an instance must hold what the copy really uses, and what the user said it may grow to)."""
    by_name = {c.name: c for c in declared}
    out = []
    for cand in placement.move:
        ram_gb = max(by_name[cand.name].ram_gb, math.ceil(cand.footprint_bytes / GB * 100) / 100)
        out.append(Component(name=cand.name, ram_gb=min(ram_gb, 1024.0), gpu=cand.gpu))
    return out


@dataclass
class _InFlight:
    event: Event
    future: PublishFuture
    sent_at: float


@dataclass
class AgentStats:
    samples: int = 0
    demands: list[DemandEvent] = field(default_factory=list)
    releases: list[ReleaseEvent] = field(default_factory=list)
    lease_renewals: int = 0
    publish_failures: int = 0


class Agent:
    def __init__(
        self,
        settings: Settings,
        *,
        lease_id: str,
        memory: MemorySource,
        publisher: EventPublisher,
        stop: StopSignal,
        clock: Callable[[], float] = time.monotonic,
        holder: str = "",
        policy: TriggerPolicy | None = None,
        route_credential_sha256: str | None = None,
        waker: Waker | None = None,
        footprints: Footprints | None = None,
        handoff: HandOff | None = None,
        withheld: tuple[str, ...] = (),
    ) -> None:
        self.handoff = handoff  # stops local copies whose remote copy serves; brings the work home (agent.handoff)
        self.withheld = withheld  # local copies not started (memory past the limit at start): the first demand names them
        self._deferred_release_logged = False
        self.route_credential_sha256 = route_credential_sha256  # the router's, when one runs
        self.waker = waker  # SPOTLEASH_WAKE_ON_REQUEST: the router's requests wake a hibernated lease
        self._last_ram_percent = 0.0
        self.settings = settings
        self.lease_id = lease_id
        self.memory = memory
        self.footprints = footprints  # the local copies' measured footprints, when the agent runs them
        self.last_placement: Placement | None = None
        self.publisher = publisher
        self.stop = stop
        self.clock = clock
        self.holder = holder
        self.policy = policy or TriggerPolicy.from_settings(settings)
        self.state = TriggerState()
        self.stats = AgentStats()
        self._components = configured_components(settings)
        self._pending_demand: _InFlight | None = None
        self._leases: list[_InFlight] = []

    # ---------------------------------------------------------------- publishing
    def _send(self, event: Event) -> _InFlight:
        return _InFlight(event, self.publisher.publish(event), self.clock())

    def renew_lease(self) -> None:
        ev = LeaseEvent(lease_id=self.lease_id, ttl_s=self.settings.lease_ttl_s, holder=self.holder)
        self._leases.append(self._send(ev))
        self.stats.lease_renewals += 1
        log.debug("lease renewal sent", lease_id=self.lease_id, event_id=ev.event_id, ttl_s=ev.ttl_s)

    def _check_in_flight(self, now: float) -> None:
        still: list[_InFlight] = []
        for f in self._leases:
            ok = self._settled(f)
            if ok is None:
                still.append(f)
            elif not ok:
                log.warning("lease renewal not published; the next renewal will try again",
                            lease_id=self.lease_id, event_id=f.event.event_id)
        self._leases = still
        d = self._pending_demand
        if d is None:
            return
        ok = self._settled(d)
        if ok:
            log.info("demand published", lease_id=self.lease_id, event_id=d.event.event_id)
            self._pending_demand = None
        elif ok is False and now - d.sent_at >= DEMAND_RETRY_S:
            log.warning("demand not published; publishing it again", lease_id=self.lease_id,
                        event_id=d.event.event_id)
            self._pending_demand = self._send(d.event)  # same event id: the control plane dedupes

    def _settled(self, f: _InFlight) -> bool | None:
        """True published, False failed, None still in flight."""
        done = getattr(f.future, "done", None)
        if done is not None and not done():
            return None
        try:
            f.future.result(timeout=0)
        except TimeoutError:
            return None
        except Exception as e:  # noqa: BLE001 - any SDK failure means "not published"; logged, retried
            self.stats.publish_failures += 1
            log.warning("publish failed", lease_id=self.lease_id, event_id=f.event.event_id,
                        kind=f.event.KIND, error=f"{type(e).__name__}: {e}")
            return False
        return True

    # ---------------------------------------------------------------- one sample
    def tick(self, t: float) -> None:
        reading = self.memory.read()
        used = reading.used_fraction
        self._last_ram_percent = used * 100
        self.stats.samples += 1
        pressured = under_pressure(reading, self.settings.memory_psi_pressure)
        self.state, action = self.policy.step(self.state, (t, used), pressured=pressured)
        if self.withheld and action is None and not self.state.demanding:
            # memory was past the limit at start: those components were not started here, so they must run remotely
            self.state = replace(self.state, demanding=True, last_demand_t=t, low_since=None)
            action = Demand("threshold", round(used * 100, 2))
        if self.handoff is not None:
            self.handoff.observe(t, reading, pressured)
            reason = self.handoff.take_release()
            if reason is not None:
                self._release_home(reason, used)
                return
            if isinstance(action, Release) and self.handoff.away():
                # a local copy is stopped: the lease's release waits until it answers again (the way home)
                self.state = replace(self.state, demanding=True)
                if not self._deferred_release_logged:
                    log.info("memory is back, but a component runs only remotely: the way home decides the release",
                             lease_id=self.lease_id, ram_percent=action.ram_percent)
                    self._deferred_release_logged = True
                return
        if isinstance(action, Demand):
            self._demand(action, reading, pressured)
        elif isinstance(action, Release):
            rel = ReleaseEvent(lease_id=self.lease_id, reason=f"memory below {self.policy.release_below:.0%} "
                               f"for {self.policy.release_hold_s:.0f}s")
            self.stats.releases.append(rel)
            log.info("release: memory is back to normal", lease_id=self.lease_id, event_id=rel.event_id,
                     ram_percent=action.ram_percent)
            self._send(rel)

    def _release_home(self, reason: str, used: float) -> None:
        """The work came home (``agent.handoff``): release the lease; a later demand may fire again."""
        rel = ReleaseEvent(lease_id=self.lease_id, reason=reason)
        self.stats.releases.append(rel)
        self.state = replace(self.state, demanding=False, low_since=None)
        self._deferred_release_logged = False
        log.info("release: the work came home", lease_id=self.lease_id, event_id=rel.event_id,
                 ram_percent=round(used * 100, 2), reason=reason)
        self._send(rel)

    def _demand(self, action: Demand, reading: MemoryReading, pressured: bool) -> None:
        measured = dict(self.footprints()) if self.footprints is not None else {}
        placement = place(reading, self.policy.threshold, candidates_of(self.settings, self._components, measured),
                          predicted_used=action.predicted_used, pressured=pressured)
        self.last_placement = placement
        mb = 2**20
        facts = {"trigger": action.trigger, "ram_percent": action.ram_percent, "source": reading.source,
                 "limit_mb": round(reading.limit_bytes / mb), "available_mb": round(reading.available_bytes / mb),
                 "psi_some_avg10": reading.psi_some_avg10, "pressure_level": reading.level,
                 "need_mb": round(placement.need_bytes / mb), "freed_mb": round(placement.freed_bytes / mb),
                 "short_mb": round(placement.short_bytes / mb), "stays": list(placement.stays),
                 "kept": list(placement.kept), "reason": placement.reason}
        components = demand_components(placement, self._components)
        if self.withheld:  # not started here at all: they must run remotely, whatever placement says
            named = {c.name for c in components}
            components += [c for c in self._components if c.name in self.withheld and c.name not in named]
            facts["withheld"] = list(self.withheld)
            self.withheld = ()
        if not components:
            log.warning("memory is short but no component can move; no demand", lease_id=self.lease_id, **facts)
            return
        ev = DemandEvent(lease_id=self.lease_id, trigger=action.trigger, ram_percent=action.ram_percent,
                         components=components,
                         route_credential_sha256=self.route_credential_sha256)
        self.stats.demands.append(ev)
        log.info("demand: moving components off this machine", lease_id=self.lease_id, event_id=ev.event_id,
                 components=[c.name for c in components], measured=[c.name for c in placement.move if c.measured],
                 ram_gb=ev.ram_gb, gpu=ev.needs_gpu, **facts)
        self._pending_demand = self._send(ev)
        if self.handoff is not None:
            self.handoff.demanded([c.name for c in components])

    def wake(self, now: float) -> None:
        """Publish a wake demand when a request arrived for a hibernated component (``agent.wake``)."""
        if self.waker is None or self._pending_demand is not None:
            return
        due = self.waker.due(now)
        if due is None:
            return
        names = set(due.components)
        components = [c for c in self._components if c.name in names] or self._components
        ev = DemandEvent(lease_id=self.lease_id, trigger="request", ram_percent=round(self._last_ram_percent, 2),
                         components=components, route_credential_sha256=self.route_credential_sha256)
        self.stats.demands.append(ev)
        log.info("demand: a request arrived for a hibernated component; waking the lease", lease_id=self.lease_id,
                 event_id=ev.event_id, component=due.asked_by, snapshot_id=due.snapshot_id,
                 components=[c.name for c in components])
        self._pending_demand = self._send(ev)
        if self.handoff is not None:
            self.handoff.demanded([c.name for c in components])

    # ---------------------------------------------------------------- the loop
    def run(self, run_for_s: float | None = None) -> None:
        """Loop until ``stop`` is set (or ``run_for_s`` has passed)."""
        s = self.settings
        t0 = self.clock()
        end = None if run_for_s is None else t0 + run_for_s
        next_renew = t0
        next_sample = t0
        log.info("agent started", lease_id=self.lease_id, threshold=self.policy.threshold,
                 sample_interval_s=s.sample_interval_s, lease_renew_s=s.lease_renew_s, lease_ttl_s=s.lease_ttl_s)
        while not self.stop.is_set():
            now = self.clock()
            if end is not None and now >= end:
                break
            if now >= next_renew:
                self.renew_lease()
                next_renew = now + s.lease_renew_s
            if now >= next_sample:
                self.tick(now - t0)
                next_sample += s.sample_interval_s
                if next_sample <= now:  # fell behind (suspend, slow source): do not burst
                    next_sample = now + s.sample_interval_s
            self._check_in_flight(now)
            self.wake(now)
            wake = min(next_renew, next_sample, end if end is not None else next_sample)
            self.stop.wait(max(wake - self.clock(), 0.0))
        log.info("agent loop ended", lease_id=self.lease_id, samples=self.stats.samples,
                 demands=len(self.stats.demands), releases=len(self.stats.releases))


def run_agent(
    settings: Settings,
    *,
    lease_id: str,
    memory: MemorySource,
    publisher: EventPublisher,
    clock: Callable[[], float] = time.monotonic,
    stop: StopSignal | None = None,
    holder: str = "",
    run_for_s: float | None = None,
    install_signals: bool = True,
    router: AgentRouter | None = None,
    footprints: Footprints | None = None,
    handoff: HandOff | None = None,
    withheld: tuple[str, ...] = (),
) -> int:
    """Run the agent until a signal (or ``run_for_s``); always release on the way out.

    Exit codes: 0 the release was confirmed, 1 it was not (lease expiry will clean up);
    a second signal exits at once with 128 + signum. A ``router`` (already started) is stopped by the
    shutdown, around the release; its credential's hash goes into every demand.
    """

    from spotleash.agent.shutdown import Shutdown

    stop_event = stop if stop is not None else SignalEvent()  # set by the SIGTERM handler
    sd = Shutdown(lease_id=lease_id, publisher=publisher, budget_s=settings.shutdown_budget_s,
                  lease_ttl_s=settings.lease_ttl_s, stop=stop_event, clock=clock, router=router)
    if install_signals:
        sd.install()
    reason: str | None = None
    try:
        Agent(settings, lease_id=lease_id, memory=memory, publisher=publisher, stop=stop_event,
              clock=clock, holder=holder,
              route_credential_sha256=router.credential_sha256 if router is not None else None,
              waker=router.waker if router is not None else None, footprints=footprints, handoff=handoff,
              withheld=withheld).run(run_for_s)
    except Exception as e:
        reason = f"agent shutdown: crash ({type(e).__name__})"
        log.exception("agent crashed; releasing the lease", lease_id=lease_id, error=str(e))
        raise
    finally:
        if handoff is not None:
            handoff.close()  # before the release: no local copy is stopped or started while the agent leaves
        ok = sd.release(reason)
        if install_signals:
            sd.uninstall()
        log.info("agent stopped", lease_id=lease_id, released=ok, reason=reason or sd.reason)
    return 0 if ok else 1
