"""A recorded RAM trace the agent can replay instead of reading the machine (the demo, the tests).

The machine's own memory is read by :mod:`spotleash.agent.memory` (the cgroup, MemAvailable, PSI,
macOS's pressure level). A trace is a CSV file with a header ``t_seconds,percent`` and one sample a
line, times rising. It is replayed against a clock at a chosen speed (2.0 = twice as fast), linearly
interpolated between samples and holding the last value once it ends. A time written twice is a step:
the value jumps there with no ramp for a sample to land on (a model loading at once). A percentage has no bytes:
the replay gives it a nominal limit (``limit_bytes``, ``--trace-limit-gb``) so placement can weigh
components against the headroom it misses.

A trace read from a file follows the file: rewritten or appended to while it plays, it is read again at the
next sample, on the same clock (a row whose time has passed takes effect at once). So a test or a demo
drives the level by hand — ``echo 40,30 >> trace.csv`` drops it now — instead of guessing in advance how
long a phase must last. A rewrite that does not parse keeps the points before it (warned once).
"""

from __future__ import annotations

import bisect
import csv
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from spotleash.agent.memory.reading import MemoryReading
from spotleash.errors import ConfigError
from spotleash.log import get_logger

log = get_logger(__name__)

TRACE_LIMIT_GB = 16.0  # a trace's nominal machine: a common laptop


def fraction_reading(used: float, limit_bytes: int, source: str) -> MemoryReading:
    """A reading with ``used`` (0..1) of ``limit_bytes`` in use and no pressure figures."""
    used_bytes = round(limit_bytes * min(max(used, 0.0), 1.0))
    return MemoryReading(limit_bytes=limit_bytes, available_bytes=limit_bytes - used_bytes, used_bytes=used_bytes,
                         source=source)


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
        if points and (t < points[-1][0] or (len(points) > 1 and t == points[-1][0] == points[-2][0])):
            raise ConfigError(f"RAM trace {path} line {lineno}: time {t} goes back or appears a third time "
                              "(times rise; one repeat is a step)")
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
        limit_gb: float = TRACE_LIMIT_GB,
        name: str = "trace",
    ) -> None:
        if speed <= 0:
            raise ConfigError(f"trace speed must be positive, got {speed}")
        if not points:
            raise ConfigError("a RAM trace needs at least one sample")
        self._set_points(points)
        self._speed = speed
        self._clock = clock
        if not 0 < limit_gb <= 1024 * 1024:
            raise ConfigError(f"a trace's memory limit must be a positive number of GB, got {limit_gb}")
        self.limit_bytes = round(limit_gb * 2**30)
        self.name = name
        self._start: float | None = None
        self._path: Path | None = None  # the file followed (from_csv); its version last read
        self._version: tuple[int, int, int] | None = None

    def _set_points(self, points: Sequence[tuple[float, float]]) -> None:
        self._t = [float(p[0]) for p in points]
        self._pct = [float(p[1]) for p in points]

    @classmethod
    def from_csv(cls, path: Path, *, speed: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 limit_gb: float = TRACE_LIMIT_GB) -> TraceRam:
        version = _version(path)
        tr = cls(load_trace(path), speed=speed, clock=clock, limit_gb=limit_gb, name=f"trace {path}")
        tr._path, tr._version = path, version
        return tr

    def follow(self) -> None:
        """Read the file again if it changed since it was last read (its inode, mtime or size)."""
        if self._path is None:
            return
        version = _version(self._path)
        if version is None or version == self._version:
            return  # gone for a moment (a rewrite by rename) or unchanged: the points as they were
        self._version = version
        try:
            self._set_points(load_trace(self._path))
        except ConfigError as e:  # half written, or a mistake: keep playing what was read last
            log.warning(f"RAM trace changed but not read again: {e}", path=str(self._path))

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
        i = bisect.bisect_right(self._t, t)  # _t[i-1] <= t < _t[i]: at a step, the value after it
        t0, t1, p0, p1 = self._t[i - 1], self._t[i], self._pct[i - 1], self._pct[i]
        return p0 + (p1 - p0) * (t - t0) / (t1 - t0)

    def used_fraction(self) -> float:
        return self.percent_at(self.trace_time()) / 100.0

    def read(self) -> MemoryReading:
        self.follow()
        return fraction_reading(self.used_fraction(), self.limit_bytes, self.name)


def _version(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size
