"""When to ask for capacity and when to give it back: a pure function over RAM samples.

``policy.step(state, sample, pressured=...)`` takes the previous state, one sample ``(t_seconds,
used_fraction)`` and whether the kernel reports memory pressure now, and returns the new state and at
most one action. No clock, no I/O: the runner feeds real readings, the tests feed traces.

``used_fraction`` is the share of the memory limit that is *not headroom* (``MemoryReading``:
reclaimable cache counts as free), so the threshold is a headroom target: 0.85 keeps 15 % free.
``under_pressure(reading, psi)`` says whether tasks already wait for memory (PSI ``some avg10`` at or
above ``psi``; the macOS level warn or critical; swapping) — a stall no byte count shows.

The rules, in order:

* **Pressure** — the kernel reporting pressure demands capacity at once (trigger ``pressure``).
* **Threshold** — usage at or above ``threshold`` demands capacity at once.
* **Prediction** — over the last ``window_s`` seconds a least-squares line is fitted to the
  samples; if it rises and reaches ``threshold`` within ``horizon_s`` seconds from now, demand
  early (the field report saw this fire at 77.5 % before a spike). It needs at least
  ``min_samples`` samples spanning ``min_span_s``, so two noisy samples never predict anything.
* **Hysteresis** — once demanding, nothing more is demanded; capacity is released only after
  usage has stayed *below* ``release_below`` (well under the threshold) for ``release_hold_s``
  without interruption and without pressure. One sample at or above ``release_below``, or one under
  pressure, restarts the hold.
* **Cooldown** — no demand within ``cooldown_s`` of the previous one, even after a release.

Together these mean a signal hovering around the threshold demands once and never releases
(it never falls below ``release_below``), so instances do not flap up and down.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from spotleash.agent.memory.reading import MemoryReading
    from spotleash.config import Settings

Sample = tuple[float, float]  # (t_seconds, used_fraction in [0, 1])


DemandTrigger = Literal["pressure", "threshold", "predictive"]


def under_pressure(reading: MemoryReading, psi_some_avg10: float) -> bool:
    """Tasks wait for memory now: PSI at or above ``psi_some_avg10`` %, macOS warn/critical, or swapping."""
    if reading.psi_some_avg10 is not None and reading.psi_some_avg10 >= psi_some_avg10:
        return True
    return reading.level in ("warn", "critical") or reading.swapping is True


@dataclass(frozen=True)
class Demand:
    trigger: DemandTrigger
    ram_percent: float  # usage when the demand fired, 0..100
    predicted_used: float | None = None  # the trend's used fraction at the horizon (None: no trustworthy rise)


@dataclass(frozen=True)
class Release:
    ram_percent: float  # usage when the release fired, 0..100


TriggerAction = Demand | Release  # what the laptop agent does next (not the instance agent's BeatOutcome)


@dataclass(frozen=True)
class TriggerState:
    window: tuple[Sample, ...] = ()  # samples of the last window_s seconds, oldest first
    demanding: bool = False  # a demand is outstanding (capacity is wanted)
    last_demand_t: float | None = None
    low_since: float | None = None  # start of the current run of samples below release_below


def slope_per_s(samples: Sequence[Sample]) -> float:
    """Least-squares slope (fraction per second) of ``samples``; 0 when time does not vary."""
    n = len(samples)
    if n < 2:
        return 0.0
    mt = sum(t for t, _ in samples) / n
    mu = sum(u for _, u in samples) / n
    var = sum((t - mt) ** 2 for t, _ in samples)
    if var <= 0:
        return 0.0
    return sum((t - mt) * (u - mu) for t, u in samples) / var


@dataclass(frozen=True)
class TriggerPolicy:
    threshold: float = 0.85
    release_below: float = 0.70
    release_hold_s: float = 300.0
    window_s: float = 60.0
    horizon_s: float = 120.0
    cooldown_s: float = 120.0
    min_samples: int = 5
    min_span_s: float | None = None  # None: a quarter of the window

    def __post_init__(self) -> None:
        if not 0 < self.release_below < self.threshold <= 1:
            raise ValueError(
                f"need 0 < release_below ({self.release_below}) < threshold ({self.threshold}) <= 1"
            )
        if self.min_samples < 2:
            raise ValueError("min_samples must be at least 2 to fit a trend")

    @classmethod
    def from_settings(cls, s: Settings) -> TriggerPolicy:
        return cls(
            threshold=s.ram_threshold,
            release_below=s.ram_release_below,
            release_hold_s=s.release_hold_s,
            window_s=s.predict_window_s,
            horizon_s=s.predict_horizon_s,
            cooldown_s=s.demand_cooldown_s,
        )

    @property
    def required_span_s(self) -> float:
        return self.window_s / 4 if self.min_span_s is None else self.min_span_s

    def trend(self, window: Sequence[Sample]) -> tuple[float, float] | None:
        """(the fitted line's value now, its slope per second) when it rises; None when it does not rise
        or the window is too thin to trust."""
        if len(window) < self.min_samples or window[-1][0] - window[0][0] < self.required_span_s:
            return None
        slope = slope_per_s(window)
        if slope <= 0:
            return None
        n = len(window)
        mt = sum(t for t, _ in window) / n
        mu = sum(u for _, u in window) / n
        return mu + slope * (window[-1][0] - mt), slope  # the trend's value now: steadier than the last sample

    def time_to_threshold(self, window: Sequence[Sample]) -> float | None:
        """Seconds until the fitted trend reaches the threshold; None if it is not rising or the
        window is too thin to trust."""
        trend = self.trend(window)
        if trend is None:
            return None
        level, slope = trend
        return max(self.threshold - level, 0.0) / slope

    def predicted_used(self, window: Sequence[Sample]) -> float | None:
        """The trend's used fraction ``horizon_s`` from now (at most 1); None when it does not rise."""
        trend = self.trend(window)
        return None if trend is None else min(trend[0] + trend[1] * self.horizon_s, 1.0)

    def step(self, state: TriggerState, sample: Sample, *, pressured: bool = False
             ) -> tuple[TriggerState, TriggerAction | None]:
        t, used = sample
        window = tuple(s for s in state.window if s[0] > t - self.window_s and s[0] < t) + (sample,)
        state = replace(state, window=window)
        pct = round(used * 100, 2)

        if state.demanding:
            if used >= self.release_below or pressured:
                return replace(state, low_since=None), None
            low_since = t if state.low_since is None else state.low_since
            if t - low_since >= self.release_hold_s:
                return replace(state, demanding=False, low_since=None), Release(pct)
            return replace(state, low_since=low_since), None

        if state.last_demand_t is not None and t - state.last_demand_t < self.cooldown_s:
            return state, None
        trigger: DemandTrigger | None = None
        if pressured:
            trigger = "pressure"
        elif used >= self.threshold:
            trigger = "threshold"
        else:
            eta = self.time_to_threshold(window)
            if eta is not None and eta <= self.horizon_s:
                trigger = "predictive"
        if trigger is None:
            return state, None
        return (replace(state, demanding=True, last_demand_t=t, low_since=None),
                Demand(trigger, pct, self.predicted_used(window)))


def step(policy: TriggerPolicy, state: TriggerState, sample: Sample, *, pressured: bool = False
         ) -> tuple[TriggerState, TriggerAction | None]:
    """Function form of :meth:`TriggerPolicy.step`."""
    return policy.step(state, sample, pressured=pressured)


def replay(policy: TriggerPolicy, samples: Sequence[Sample]) -> list[tuple[float, TriggerAction]]:
    """Run a whole trace through the policy; the (t, action) pairs it produced, in order."""
    state = TriggerState()
    out: list[tuple[float, TriggerAction]] = []
    for s in samples:
        state, action = policy.step(state, s)
        if action is not None:
            out.append((s[0], action))
    return out
