"""Where the agent reads memory usage from: the machine itself (psutil) or a recorded trace.

A trace is a CSV file with a header ``t_seconds,percent`` and one sample a line, times rising.
It is replayed against a clock at a chosen speed (2.0 = twice as fast), linearly interpolated
between samples and holding the last value once it ends.
"""

from __future__ import annotations

import bisect
import csv
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from spotleash.errors import ConfigError


class RamSource(Protocol):
    def used_fraction(self) -> float:
        """Memory in use now, as a fraction of the total (0..1)."""
        ...


class PsutilRam:
    """This machine's memory, as ``psutil.virtual_memory().percent`` reports it."""

    def used_fraction(self) -> float:
        import psutil

        return float(psutil.virtual_memory().percent) / 100.0


def load_trace(path: Path) -> list[tuple[float, float]]:
    """The (t_seconds, percent) points of a trace file; ConfigError saying what is wrong."""
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read RAM trace {path}: {e.strerror or e}") from e
    rows = list(csv.reader(text.splitlines()))
    if not rows or [c.strip() for c in rows[0]] != ["t_seconds", "percent"]:
        raise ConfigError(f"RAM trace {path} must start with the header 't_seconds,percent'")
    points: list[tuple[float, float]] = []
    for lineno, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        try:
            t, pct = float(row[0]), float(row[1])
        except (ValueError, IndexError) as e:
            raise ConfigError(f"RAM trace {path} line {lineno}: expected 't_seconds,percent', got {row}") from e
        if not 0 <= pct <= 100:
            raise ConfigError(f"RAM trace {path} line {lineno}: percent {pct} is not within 0..100")
        if points and t <= points[-1][0]:
            raise ConfigError(f"RAM trace {path} line {lineno}: time {t} does not increase")
        points.append((t, pct))
    if not points:
        raise ConfigError(f"RAM trace {path} has no samples")
    return points


class TraceRam:
    """Replays (t_seconds, percent) points; time starts at the first read (or at ``start``)."""

    def __init__(
        self,
        points: Sequence[tuple[float, float]],
        *,
        speed: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if speed <= 0:
            raise ConfigError(f"trace speed must be positive, got {speed}")
        if not points:
            raise ConfigError("a RAM trace needs at least one sample")
        self._t = [float(p[0]) for p in points]
        self._pct = [float(p[1]) for p in points]
        self._speed = speed
        self._clock = clock
        self._start: float | None = None

    @classmethod
    def from_csv(cls, path: Path, *, speed: float = 1.0, clock: Callable[[], float] = time.monotonic) -> TraceRam:
        return cls(load_trace(path), speed=speed, clock=clock)

    def start(self) -> None:
        self._start = self._clock()

    def trace_time(self) -> float:
        if self._start is None:
            self.start()
        assert self._start is not None
        return self._t[0] + (self._clock() - self._start) * self._speed

    @property
    def finished(self) -> bool:
        return self._start is not None and self.trace_time() >= self._t[-1]

    def percent_at(self, t: float) -> float:
        if t <= self._t[0]:
            return self._pct[0]
        if t >= self._t[-1]:
            return self._pct[-1]
        i = bisect.bisect_right(self._t, t)
        t0, t1, p0, p1 = self._t[i - 1], self._t[i], self._pct[i - 1], self._pct[i]
        return p0 + (p1 - p0) * (t - t0) / (t1 - t0)

    def used_fraction(self) -> float:
        return self.percent_at(self.trace_time()) / 100.0
