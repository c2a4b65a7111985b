"""One memory reading, whatever it came from, and the protocol every memory source implements.

Headroom, not "used %": ``available_bytes`` is what can still be allocated without anything waiting —
the kernel's MemAvailable on a host, the limit minus the non-reclaimable usage in a cgroup, free plus
cache on macOS. Reclaimable page cache is not pressure: a machine whose RAM is 90 % cache is fine.
``psi_some_avg10`` / ``level`` / ``swapping`` say whether tasks are already waiting for memory, which no
byte count can.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

PressureLevel = Literal["normal", "warn", "critical"]  # the macOS kernel's levels 1, 2, 4


class MemorySourceError(Exception):
    """A source cannot read its files or commands (they are missing or unreadable); says which."""


@dataclass(frozen=True)
class MemoryReading:
    limit_bytes: int  # the memory this process may use in all: the cgroup's limit, else the machine's RAM
    available_bytes: int  # headroom: still allocatable without reclaiming anything but cache
    used_bytes: int  # in use, reclaimable cache not counted
    source: str  # where the figures came from: "cgroup v1 /sys/fs/cgroup/memory/x", "host /proc/meminfo", ...
    psi_some_avg10: float | None = None  # % of the last 10 s at least one task waited for memory (Linux PSI)
    psi_full_avg10: float | None = None  # % of the last 10 s every task waited (Linux PSI)
    level: PressureLevel | None = None  # the kernel's memory-pressure level (macOS)
    swapping: bool | None = None  # pages went out to swap since the previous reading (macOS)

    def __post_init__(self) -> None:
        if self.limit_bytes <= 0:
            raise ValueError(f"{self.source}: a memory limit of {self.limit_bytes} bytes is not a limit")

    @property
    def used_fraction(self) -> float:
        """The share of the limit that is not headroom, 0..1 (what the threshold is compared with)."""
        return min(max(1.0 - self.available_bytes / self.limit_bytes, 0.0), 1.0)

    @property
    def headroom_fraction(self) -> float:
        return 1.0 - self.used_fraction


class MemorySource(Protocol):
    """Reads this machine's (or this cgroup's) memory now. ``MemorySourceError`` when it cannot."""

    @property
    def name(self) -> str: ...

    def read(self) -> MemoryReading: ...
