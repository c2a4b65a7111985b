"""The hand-off and the way home: when a local copy stops, when it starts again, where a component runs. Pure.

The agent's actor (``agent/handoff.py``) feeds these plain facts and acts on the answers; ``spotleash status``,
the router's ``/routes`` and ``/metrics`` and the dashboard render ``where_of``'s words.

API:

* ``LocalState`` — the agent's local copy of one component: ``running``, ``stopping``, ``stopped``, ``starting``,
  or ``none`` (the agent runs no copy of it: ``local_copy = "user"``, no ``local_url``).
* ``Where`` — where the component runs now: ``local``, ``remote``, ``both`` (remote serves, local copy still
  up: ``offload = "keep"``, or not stopped yet), ``starting`` (local copy coming up), ``stopping`` (local copy
  draining / stopping), ``none`` (nothing serves: remote lost, local copy stopped; requests wait).
* ``View`` — one component as the actor sees it (its local state, the router's target, its footprint).
* ``handoff_steps(views, available, limit, threshold)`` — what to do now: ``Step("stop", ...)`` for a local copy
  whose remote copy serves (not ``keep``), ``Step("start", ...)`` for a stopped one whose remote copy is lost
  when memory allows, ``Step("hold", ...)`` (do nothing, say why) when it does not.
* ``HomeRule.step(state, t, available, limit, away_bytes, pressured)`` — the way home, with hysteresis: fires
  once the memory left after the away components come back (``available - away_bytes``) has stayed at or above
  the headroom kept below ``release_below`` (``limit * (1 - release_below)``, the margin) for ``hold_s`` without
  a break and without pressure. One sample short, or one under pressure, restarts the hold.

* ``HomeRule.failed(state, t)`` / ``HomeRule.came_home(state)`` — a way home that failed (a local copy never got
  healthy) is tried again no sooner than ``retry_after_s(n)`` after the n-th failure in a row (and after a full
  hold, as always): ``hold_s`` (at least ``MIN_RETRY_S``) doubled each time, never more than ``retry_max_s``.
  A way home that worked forgets the failures.

Why a backoff: each failed try starts a copy that crash-loops or hangs until its start timeout, holding memory
and a core meanwhile, and its log fills; a copy broken for good (a bad command, a missing model) would be
tried every hold forever. Why bounded: the cause may be fixed at any time (the crash file removed, the model
downloaded) and the work should still come home within the cap; why scaled by ``hold_s``: the hold is the
user's word on how often memory may change hands.

Why the away components come home together: the lease is released as a whole (its instance runs all of them),
so bringing one back while another stays remote would take memory back and still pay for the instance.

Why ``release_below`` as the margin: after coming home usage is at most ``release_below``, below the demand
``threshold`` by the band between them, so a return cannot trigger the next demand by itself (no flapping).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from spotleash.wire.package import Offload

LocalState = Literal["running", "stopping", "stopped", "starting", "none"]
Target = Literal["local", "remote", "none"]  # the router's current target (``router.table.TargetKind``)
Where = Literal["local", "remote", "both", "starting", "stopping", "none"]
WHERE: tuple[Where, ...] = ("local", "remote", "both", "starting", "stopping", "none")


@dataclass(frozen=True)
class View:
    name: str
    local: LocalState
    target: Target
    footprint_bytes: int  # the local copy's last measured footprint (else its declared ram_gb)
    offload: Offload = "default"


@dataclass(frozen=True)
class Step:
    kind: Literal["stop", "start", "hold"]
    name: str
    reason: str


def where_of(local: LocalState, target: Target) -> Where:
    """Where a component runs now, from its local copy's state and the router's target."""
    if local in ("starting", "stopping"):
        return local
    if target == "remote":
        return "both" if local == "running" else "remote"
    if target == "local":
        return "local"
    return "local" if local == "running" else "none"


def _mb(n: int) -> str:
    return f"{n / 2**20:.0f} MB"


def headroom_bytes(limit: int, fraction: float) -> int:
    """``limit * fraction`` to the byte: the headroom a ``1 - fraction`` usage mark keeps (rounded, not ceiled:
    ``1 - 0.7`` is 0.30000000000000004, and a byte more than asked is noise, not a margin)."""
    return round(limit * fraction)


def handoff_steps(views: Sequence[View], *, available: int, limit: int, threshold: float) -> list[Step]:
    """The hand-off's steps now, in ``views`` order. A restart after a lost remote must fit: the memory left
    after it (and after the restarts before it in this answer) keeps the demand threshold's headroom."""
    steps: list[Step] = []
    keep = headroom_bytes(limit, 1.0 - threshold)
    left = available
    for v in views:
        if v.local == "running" and v.target == "remote" and v.offload != "keep":
            steps.append(Step("stop", v.name, "its remote copy serves (the router routes it there, probe passing)"))
        elif v.local == "stopped" and v.target == "none":
            if left - v.footprint_bytes >= keep:
                left -= v.footprint_bytes
                steps.append(Step("start", v.name, f"no remote copy serves it (lost, or not ready); "
                                                   f"{_mb(left + v.footprint_bytes)} "
                                                   f"available holds its {_mb(v.footprint_bytes)}"))
            else:
                steps.append(Step("hold", v.name, f"no remote copy serves it (lost, or not ready) and its "
                                                  f"{_mb(v.footprint_bytes)} do not "
                                                  f"fit ({_mb(left)} available, {_mb(keep)} kept free): requests "
                                                  f"wait for a remote copy"))
    return steps


def fits_at_start(names: Sequence[str], footprints: Sequence[int], *, available: int, limit: int,
                  threshold: float) -> tuple[list[str], list[str]]:
    """At the agent's start: (the local copies to start, those that do not fit). In order, each starts while the
    memory left after it keeps the threshold's headroom; memory already past it starts none."""
    keep = headroom_bytes(limit, 1.0 - threshold)
    start: list[str] = []
    withheld: list[str] = []
    left = available
    for name, fp in zip(names, footprints, strict=True):
        if left - fp >= keep:
            start.append(name)
            left -= fp
        else:
            withheld.append(name)
    return start, withheld


MIN_RETRY_S = 5.0  # the first backoff after a failed way home, when the hold is shorter (or 0)
RETRY_MAX_S = 3600.0  # the backoff never grows past an hour: a fixed copy still comes home


@dataclass(frozen=True)
class HomeState:
    fits_since: float | None = None  # start of the current unbroken run of samples where the way home fits
    failures: int = 0  # ways home that failed in a row (a local copy never got healthy)
    retry_at: float | None = None  # no new try before this time (the backoff after the last failure)


@dataclass(frozen=True)
class HomeRule:
    release_below: float = 0.70
    hold_s: float = 300.0
    retry_max_s: float = RETRY_MAX_S

    def __post_init__(self) -> None:
        if not 0 < self.release_below <= 1 or self.hold_s < 0 or self.retry_max_s < 0:
            raise ValueError(f"bad home rule: {self}")

    def retry_after_s(self, failures: int) -> float:
        """The backoff after the ``failures``-th failed way home in a row: ``max(hold_s, MIN_RETRY_S)`` doubled
        each time, at most ``retry_max_s`` (0 before any failure)."""
        if failures <= 0:
            return 0.0
        base = max(self.hold_s, MIN_RETRY_S)
        return float(min(base * 2.0 ** min(failures - 1, 62), self.retry_max_s))

    def failed(self, state: HomeState, t: float) -> HomeState:
        """The way home that fired failed at ``t``: the hold starts over, and no try before the backoff ends."""
        n = state.failures + 1
        return HomeState(None, n, t + self.retry_after_s(n))

    def came_home(self, state: HomeState) -> HomeState:
        """The way home worked: the failures are forgotten."""
        return HomeState(state.fits_since)

    def fits(self, available: int, limit: int, away_bytes: int) -> bool:
        """Would usage stay below ``release_below`` with the away components back?"""
        return available - away_bytes >= headroom_bytes(limit, 1.0 - self.release_below)

    def step(self, state: HomeState, t: float, *, available: int, limit: int, away_bytes: int,
             pressured: bool = False) -> tuple[HomeState, bool]:
        """One memory sample; True when the away components should come home now (then the hold restarts)."""
        if away_bytes <= 0 or pressured or not self.fits(available, limit, away_bytes):
            return replace(state, fits_since=None), False
        since = t if state.fits_since is None else state.fits_since
        if t - since >= self.hold_s and (state.retry_at is None or t >= state.retry_at):
            return replace(state, fits_since=None, retry_at=None), True
        return replace(state, fits_since=since), False

    def why_not(self, state: HomeState, t: float, *, available: int, limit: int, away_bytes: int,
                pressured: bool = False) -> str:
        """For ``status``: why the away components are not home yet."""
        if away_bytes <= 0:
            return "nothing is away"
        if pressured:
            return "the kernel reports memory pressure"
        short = headroom_bytes(limit, 1.0 - self.release_below) - (available - away_bytes)
        if short > 0:
            return (f"{_mb(away_bytes)} would not fit: {_mb(short)} short of keeping "
                    f"{1 - self.release_below:.0%} free")
        held = 0.0 if state.fits_since is None else t - state.fits_since
        if state.retry_at is not None and t < state.retry_at:
            return (f"it fits, but the last {state.failures} way(s) home failed: next try in "
                    f"{state.retry_at - t:.0f} s (backoff {self.retry_after_s(state.failures):.0f} s)")
        return f"it fits; holding {held:.0f}/{self.hold_s:.0f} s before coming home"
