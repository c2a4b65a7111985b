"""The demo's memory line: ``memory: <peak> % peak, <freed> MB freed, <n> OOM kills``, and a freed line per
component when its local copy is stopped.

Read, never guessed:

* **peak**: the highest ``ram_percent`` among the agents' log lines (their readings as each decision logged
  them: the demand, the release, and any reading line the agent writes);
* **freed**: per component, what the agent reports when it stops a local copy — its log line with ``component``
  and ``freed_bytes`` (the RSS of the copy's process tree just before the stop). An agent that stops no copy
  frees 0 MB, and the line says so;
* **OOM kills**: the kernel's own counter over the demo's run — the OOM-kill counter of the memory cgroup the
  demo runs in when that cgroup has a limit (v1 ``memory.oom_control``, v2 ``memory.events``), else the
  machine's ``/proc/vmstat`` ``oom_kill`` (every process of the machine: an honest upper bound).

``MemoryTally`` is pure (log lines in, figures out); ``OomCounter`` reads the kernel's files under ``root``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MB = 2**20


def freed_of(entry: dict[str, Any]) -> tuple[str, int] | None:
    """(component, bytes) when ``entry`` is the agent's report of a local copy stopped (``component`` and
    ``freed_bytes``: the hand-off's "local copy stopped" line); else None. The supervisor's own "component
    stopped" line (``rss_bytes``) is the same stop seen from below: not counted twice."""
    component, value = entry.get("component"), entry.get("freed_bytes")
    if isinstance(component, str) and isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return component, value
    return None


@dataclass
class MemoryTally:
    """Peak and freed memory from the agents' JSON log lines, fed one by one (``feed``) or a file at a time."""

    peak_percent: float | None = None
    freed: dict[str, int] = field(default_factory=dict)  # component → bytes freed, summed over its stops
    stops: int = 0

    def feed(self, entry: dict[str, Any]) -> tuple[str, int] | None:
        """Count one log line; the (component, bytes) it freed, when it reports a stop."""
        pct = entry.get("ram_percent")
        if isinstance(pct, (int, float)) and not isinstance(pct, bool):
            self.peak_percent = float(pct) if self.peak_percent is None else max(self.peak_percent, float(pct))
        got = freed_of(entry)
        if got is not None:
            self.freed[got[0]] = self.freed.get(got[0], 0) + got[1]
            self.stops += 1
        return got

    def feed_lines(self, lines: Iterable[str]) -> None:
        for raw in lines:
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if isinstance(entry, dict):
                self.feed(entry)

    def feed_file(self, path: Path) -> None:
        self.feed_lines(path.read_text(errors="replace").splitlines())

    @property
    def freed_bytes(self) -> int:
        return sum(self.freed.values())


def freed_line(component: str, freed_bytes: int) -> str:
    return f"freed: {component} stopped locally, {freed_bytes / MB:.0f} MB given back"


def memory_line(tally: MemoryTally, oom_kills: int | None) -> str:
    """The demo's memory line (``?`` where a figure could not be read)."""
    peak = "?" if tally.peak_percent is None else f"{tally.peak_percent:.1f}"
    ooms = "?" if oom_kills is None else str(oom_kills)
    return f"memory: {peak} % peak, {tally.freed_bytes / MB:.0f} MB freed, {ooms} OOM kills"


# ------------------------------------------------------------------ the kernel's OOM-kill counter


def _keyed(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


@dataclass(frozen=True)
class OomCounter:
    """One file holding an ``oom_kill N`` line, and what it said when the counter was made."""

    path: Path
    what: str  # "cgroup v1 <dir>" / "cgroup v2 <dir>" / "the machine (/proc/vmstat)"
    at_start: int

    def read(self) -> int | None:
        try:
            return _keyed(self.path.read_text()).get("oom_kill")
        except OSError:
            return None

    def kills(self) -> int | None:
        """OOM kills since the counter was made (None: the file cannot be read any more)."""
        now = self.read()
        return None if now is None else max(now - self.at_start, 0)


def _limited_cgroup(root: Path) -> tuple[Path, str] | None:
    """The OOM counter file of the memory cgroup this process runs in, when that cgroup has a limit."""
    from spotleash.agent.memory.cgroup import CgroupV1, CgroupV2
    from spotleash.agent.memory.reading import MemorySourceError

    for cls, counter in ((CgroupV2, "memory.events"), (CgroupV1, "memory.oom_control")):
        try:
            cg = cls(root)
            limited = cg.limit() is not None
        except (MemorySourceError, OSError):
            continue
        if limited and cg.dir is not None and (cg.dir / counter).exists():
            return cg.dir / counter, f"cgroup v{cls.version} {cg.dir}"
    return None


def oom_counter(root: Path = Path("/")) -> OomCounter | None:
    """The counter the demo reports: its memory-limited cgroup's, else the machine's; None if neither exists."""
    found = _limited_cgroup(root)
    path, what = found if found is not None else (root / "proc/vmstat", "the machine (/proc/vmstat)")
    start = OomCounter(path, what, 0).read()
    return None if start is None else OomCounter(path, what, start)
