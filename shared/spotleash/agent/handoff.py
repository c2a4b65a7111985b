"""The hand-off and the way home: the agent stops a local copy once its remote copy serves, and brings the work
home when memory allows. It acts; ``decide.handoff`` decides.

    handoff = HandOff(copies, router, components=..., offload=..., threshold=..., home=HomeRule(...), drain_s=...)
    handoff.start()                      # its thread: wakes at every route change (and every 0.5 s)
    handoff.observe(t, reading, pressured)  # the agent's loop, each sample: the way home's rule
    handoff.away()                       # True while a local copy is stopped / stopping / starting
    handoff.take_release()               # the way home is done: the reason to publish the lease's release with
    handoff.demanded(names)              # a new demand: those components may serve remotely again
    handoff.footprints()                 # measured footprints of the running local copies (placement's input)
    handoff.snapshot()                   # the state below, for /routes, /metrics, status and the dashboard
    handoff.close()

**The state** (``snapshot()``: component → a dict; the one source of truth, every reader renders it):

    where              local | remote | both | starting | stopping | none   (``decide.handoff.where_of``)
    local              running | stopping | stopped | starting | none        (the agent's local copy)
    target             local | remote | none                                 (the router's, last seen)
    footprint_bytes    the local copy's last measured footprint (PSS, else RSS, of its process tree); None unmeasured
    freed_bytes        what the last stop freed (the tree's RSS just before the SIGTERM); 0 before any
    freed_total_bytes  what every stop freed since the agent started
    stops, starts      how many times the hand-off stopped / started the copy
    pid                the local copy's pid when it runs, else None
    reason             why it is where it is (the last decision, or the last failure)
    since              unix time of the last change of ``where``
    home               why the away components are not home yet (the same text for each away component)

**The hand-off** (a component whose router target turned remote, its local copy run by the agent, not ``offload
= "keep"``): the router stops sending it anything (``LocalMode.STOPPED``: not a target, not a retry's
alternate, not probed) → requests in flight on it finish (at most ``drain_s``) → ``LocalCopies.stop`` (SIGTERM
to its process group, SIGKILL after the supervisor's grace) → the freed bytes are logged and recorded.

**The remote lost while the local copy is stopped** (the router's target turns ``none``): the local copy starts
again at once if it fits (``decide.handoff.handoff_steps``), and takes traffic once healthy; otherwise requests
wait (``SPOTLEASH_ROUTER_HOLD_S``) for the replacement, and the hand-off runs again when it serves.

**The way home** (``decide.handoff.HomeRule``: the stopped copies' footprints fit below ``release_below`` for
``release_hold_s``): start every stopped copy and wait until each answers its health path → the router prefers
them (``LocalMode.HOME``) → requests in flight on the remote copies finish → ``take_release()`` answers the
reason and the agent publishes the lease's release (the control plane deletes the instance). A copy that
never gets healthy: it is stopped again, the remote copies stay, the reason is in its state; the hold starts
over, and the next try waits out a backoff that doubles with each failure in a row (``HomeRule.failed``,
bounded). The remote copies are never released before every local copy answers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

from spotleash.agent.local_copies import LocalCopyError
from spotleash.decide.handoff import (
    HomeRule,
    HomeState,
    LocalState,
    Target,
    View,
    Where,
    handoff_steps,
    where_of,
)
from spotleash.log import get_logger
from spotleash.router.table import LocalMode
from spotleash.wire.package import Offload

if TYPE_CHECKING:
    from spotleash.agent.local_copies import LocalCopies
    from spotleash.agent.memory.reading import MemoryReading
    from spotleash.wire.events import Component

log = get_logger(__name__)

MB = 2**20
GB = 2**30
WAKE_S = 0.5  # the actor looks again at least this often (route changes wake it at once)
FOOTPRINT_EVERY_S = 10.0  # a running copy's footprint is measured again this often (for status)


class RouterHooks(Protocol):
    """What the hand-off asks of the agent's router (``agent.routing.AgentRouter``)."""

    changed: threading.Event

    def routes(self) -> dict[str, dict[str, Any]]: ...

    def set_local_mode(self, component: str, mode: LocalMode) -> None: ...

    def wait_local_drained(self, component: str, timeout_s: float) -> bool: ...

    def wait_drained(self, timeout_s: float) -> bool: ...

    def reopen_lease(self) -> None: ...


@dataclass
class ComponentState:
    where: Where
    local: LocalState
    target: Target = "local"
    footprint_bytes: int | None = None
    freed_bytes: int = 0
    freed_total_bytes: int = 0
    stops: int = 0
    starts: int = 0
    pid: int | None = None
    reason: str = "starting"
    since: float = 0.0
    home: str = ""


class HandOff:
    def __init__(self, copies: LocalCopies | None, router: RouterHooks | None, *, components: Sequence[Component],
                 offload: Mapping[str, Offload], threshold: float, home: HomeRule, drain_s: float,
                 withheld: Sequence[str] = (), wall: Callable[[], float] = time.time) -> None:
        self.copies = copies
        self.router = router
        self.threshold = threshold
        self.rule = home
        self.drain_s = drain_s
        self._wall = wall
        self._declared = {c.name: round(c.ram_gb * GB) for c in components}
        self._offload = dict(offload)
        runs = set(copies.names) if copies is not None else set()
        self._lock = threading.Lock()
        now = wall()
        self._state: dict[str, ComponentState] = {}
        for c in components:
            local: LocalState = "none"
            reason = "the agent runs no local copy of it"
            if c.name in withheld:
                local, reason = "stopped", "memory past the limit at start: not started here, it waits for its remote copy"
            elif c.name in runs:
                local, reason = "running", "its local copy runs; no remote copy serves"
            self._state[c.name] = ComponentState(where_of(local, "local" if local != "stopped" else "none"), local,
                                                 reason=reason, since=now)
        self._home_state = HomeState()
        self._home_due = False
        self._home_outcome: bool | None = None  # the last way home's outcome, for the rule at the next sample
        self._release: str | None = None
        self._measured_at = 0.0
        self._routed: list[str] = []  # the components the router routes (its last answer)
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        if router is not None and withheld:
            routed = self._call(router.routes) or {}
            for name in withheld:
                if name in routed:  # not started: no target, no probe, no retry there
                    self._call(router.set_local_mode, name, LocalMode.STOPPED)

    # ------------------------------------------------------------------ the agent's side (its loop's thread)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="spotleash-handoff", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 5.0) -> None:
        self._closed.set()
        if self.router is not None:
            self.router.changed.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def away(self) -> bool:
        """Is any local copy stopped, stopping or starting (the lease's release waits for the way home)?"""
        with self._lock:
            return any(s.local in ("stopped", "stopping", "starting") for s in self._state.values())

    def away_bytes(self) -> int:
        with self._lock:
            return sum(self._size(n, s) for n, s in self._state.items() if s.local == "stopped")

    def _size(self, name: str, s: ComponentState) -> int:
        return s.footprint_bytes if s.footprint_bytes else self._declared.get(name, 0)

    def observe(self, t: float, reading: MemoryReading, pressured: bool) -> None:
        """One memory sample: the way home's rule (``HomeRule``); when it fires, the actor brings the work home."""
        self._available, self._limit = reading.available_bytes, reading.limit_bytes
        away = self.away_bytes()
        busy = self._home_due or self._release is not None or self._transitioning()
        if busy:
            return
        outcome, self._home_outcome = self._home_outcome, None
        if outcome is not None:  # the way home the actor just ran: a failure backs the next try off
            self._home_state = (self.rule.came_home(self._home_state) if outcome
                                else self.rule.failed(self._home_state, t))
            if not outcome:
                log.warning("the way home failed; the next try backs off", failures=self._home_state.failures,
                            retry_in_s=self.rule.retry_after_s(self._home_state.failures))
        self._home_state, go = self.rule.step(self._home_state, t, available=reading.available_bytes,
                                              limit=reading.limit_bytes, away_bytes=away, pressured=pressured)
        why = self.rule.why_not(self._home_state, t, available=reading.available_bytes, limit=reading.limit_bytes,
                                away_bytes=away, pressured=pressured)
        with self._lock:
            for s in self._state.values():
                s.home = "coming home" if go else (why if s.local == "stopped" else "")
        if go:
            log.info("memory allows the work home", away_mb=round(away / MB), available_mb=round(reading.available_bytes / MB),
                     limit_mb=round(reading.limit_bytes / MB), release_below=self.rule.release_below,
                     hold_s=self.rule.hold_s)
            self._home_due = True
            if self.router is not None:
                self.router.changed.set()

    def _transitioning(self) -> bool:
        with self._lock:
            return any(s.local in ("stopping", "starting") for s in self._state.values())

    def take_release(self) -> str | None:
        """The way home is done (every local copy answers, the remote copies drained): the release's reason, once."""
        reason, self._release = self._release, None
        return reason

    def demanded(self, names: Sequence[str]) -> None:
        """A demand was sent: the named components may serve remotely again (their local copies leave ``HOME``),
        and a lease released by an earlier way home takes remote copies again."""
        if self.router is None:
            return
        self._call(self.router.reopen_lease)
        for name in names:
            if name in self._state and self._state[name].local in ("running", "none"):
                self._call(self.router.set_local_mode, name, LocalMode.AUTO)

    def footprints(self) -> dict[str, int]:
        """The running local copies' measured footprints (placement sizes the rest by their declared ``ram_gb``)."""
        if self.copies is None:
            return {}
        measured = self.copies.footprints()
        with self._lock:
            for name, n in measured.items():
                self._state[name].footprint_bytes = n
        return measured

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """The state of every component (the module's docstring lists the fields); ``pid`` is read now."""
        runs = set(self.copies.names) if self.copies is not None else set()
        with self._lock:
            out = {name: asdict(s) for name, s in self._state.items()}
        for name, st in out.items():
            st["pid"] = self.copies.pid(name) if self.copies is not None and name in runs else None
        return out

    # ------------------------------------------------------------------ the actor (its own thread)

    def _run(self) -> None:
        while not self._closed.is_set():
            if self.router is None:
                if self._closed.wait(WAKE_S):  # never cleared here: clearing it made close() wait out its join
                    break
            else:
                self.router.changed.wait(WAKE_S)
                self.router.changed.clear()
                if self._closed.is_set():
                    break
            try:
                self.pass_once()
            except Exception as e:  # noqa: BLE001 - the actor must live on; the next pass tries again
                log.exception("hand-off pass failed", error=f"{type(e).__name__}: {e}"[:300])

    def pass_once(self) -> None:
        """Look once and act: the way home when due, else stops and restarts (``handoff_steps``)."""
        self._targets()
        if self.copies is None or self.router is None:
            return  # nothing to stop or start, or no way to tell where the traffic goes: the state is all there is
        if self._home_due:
            self._home_due = False
            self._come_home()
            return
        self._measure()
        with self._lock:
            views = [View(n, s.local, s.target, self._size(n, s), self._offload.get(n, "default"))
                     for n, s in self._state.items()]
        available = getattr(self, "_available", None)
        limit = getattr(self, "_limit", None)
        if available is None or limit is None:
            available, limit = 0, 1  # no sample yet: stop what serves remotely, restart nothing
        for step in handoff_steps(views, available=available, limit=limit, threshold=self.threshold):
            if step.kind == "stop":
                self._stop(step.name, step.reason)
            elif step.kind == "start":
                self._restart(step.name, step.reason)
            else:
                self._set(step.name, reason=step.reason)

    def _targets(self) -> dict[str, Target]:
        routes = self.router.routes() if self.router is not None else {}
        self._routed = list(routes)
        out: dict[str, Target] = {}
        with self._lock:
            for name, s in self._state.items():
                target = routes.get(name, {}).get("target", "local" if s.local in ("running", "none") else "none")
                s.target = target if target in ("local", "remote", "none") else "none"
                self._where(name, s)
                out[name] = s.target
        return out

    def _where(self, name: str, s: ComponentState) -> None:
        where = where_of(s.local, s.target)
        if where != s.where:
            s.where, s.since = where, self._wall()
            if where == "both" and self._offload.get(name) == "keep":
                s.reason = "offload = \"keep\": its local copy keeps running while its remote copy serves"
            elif where == "remote" and s.local == "none":
                s.reason = "its remote copy serves (the agent runs no local copy of it)"
            elif where == "local" and s.local in ("running", "none") and s.target == "local":
                s.reason = "its local copy serves" + ("" if s.local == "running" else " (run by you)")

    def _set(self, name: str, *, local: LocalState | None = None, reason: str | None = None) -> None:
        with self._lock:
            s = self._state[name]
            if local is not None:
                s.local = local
            if reason is not None:
                s.reason = reason
            self._where(name, s)

    def _measure(self) -> None:
        now = time.monotonic()
        if self.copies is None or now - self._measured_at < FOOTPRINT_EVERY_S:
            return
        self._measured_at = now
        self.footprints()

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001 - a router that stopped (the agent's exit) must not end the actor
            log.warning("router call failed", call=getattr(fn, "__name__", "?"), error=f"{type(e).__name__}: {e}"[:200])
            return None

    def _stop(self, name: str, why: str) -> None:
        assert self.copies is not None and self.router is not None  # a "stop" step needs both
        t0 = time.monotonic()
        self._set(name, local="stopping", reason=f"stopping the local copy: {why}")
        self._call(self.router.set_local_mode, name, LocalMode.STOPPED)
        drained = self._call(self.router.wait_local_drained, name, self.drain_s)
        fp = self.copies.footprint(name)
        pid = self.copies.pid(name)
        freed = self.copies.stop(name)
        mb = round(freed / MB, 1)
        with self._lock:
            s = self._state[name]
            s.local, s.freed_bytes, s.stops = "stopped", freed, s.stops + 1
            s.freed_total_bytes += freed
            if fp is not None:
                s.footprint_bytes = fp.freeable_bytes
            s.reason = f"its remote copy serves; the local copy was stopped, freeing {mb:g} MB"
            self._where(name, s)
        log.info("local copy stopped: its remote copy serves", component=name, pid=pid, freed_bytes=freed,
                 freed_mb=mb, footprint_mb=round(fp.freeable_bytes / MB, 1) if fp else None,
                 drained=bool(drained), took_s=round(time.monotonic() - t0, 3))

    def _start_healthy(self, name: str, why: str) -> bool:
        """Start ``name``'s local copy and wait until it answers; False (copy stopped again, reason kept) if not."""
        assert self.copies is not None
        self._set(name, local="starting", reason=why)
        t0 = time.monotonic()
        try:
            self.copies.start(name)
        except LocalCopyError as e:
            self.copies.stop(name)  # no crash loop holding memory the remote copy freed
            self._set(name, local="stopped", reason=f"{e}; its remote copy stays")
            log.error("local copy did not get healthy; its remote copy stays", component=name, error=str(e)[:300])
            return False
        with self._lock:
            s = self._state[name]
            s.local, s.starts = "running", s.starts + 1
            self._where(name, s)
        log.info("local copy healthy again", component=name, pid=self.copies.pid(name),
                 took_s=round(time.monotonic() - t0, 3), why=why)
        return True

    def _restart(self, name: str, why: str) -> None:
        assert self.router is not None
        log.warning("remote copy lost while the local copy is stopped; starting it again", component=name, why=why)
        if self._start_healthy(name, f"starting the local copy: {why}"):
            self._call(self.router.set_local_mode, name, LocalMode.AUTO)
            self._set(name, reason="its remote copy was lost; the local copy serves again")

    def _come_home(self) -> None:
        if self.copies is None or self.router is None:
            return
        with self._lock:
            away = [n for n, s in self._state.items() if s.local == "stopped"]
        t0 = time.monotonic()
        for name in away:
            if not self._start_healthy(name, "coming home: memory allows it"):
                for other in away:  # the others stay remote: the hand-off stops those started again
                    if self._state[other].local == "running":
                        self._call(self.router.set_local_mode, other, LocalMode.AUTO)
                self._home_outcome = False
                return
        for name in self._routed:
            self._call(self.router.set_local_mode, name, LocalMode.HOME)
        drained = self._call(self.router.wait_drained, self.drain_s)
        with self._lock:
            for name, s in self._state.items():
                s.target = "local" if s.local in ("running", "none") else s.target
                self._where(name, s)
                s.home = ""
                if name in away:
                    s.reason = "came home: memory allows it; its local copy serves, the lease's instance is released"
        log.info("work came home; releasing the lease's instance", components=away, drained=bool(drained),
                 took_s=round(time.monotonic() - t0, 3))
        self._home_outcome = True
        self._release = (f"came home: {', '.join(away)} serve locally again (memory below "
                         f"{self.rule.release_below:.0%} with them back for {self.rule.hold_s:.0f}s)")[:200]
