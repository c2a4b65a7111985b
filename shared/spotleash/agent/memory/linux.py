"""The Linux host: ``/proc/meminfo`` (MemAvailable) and ``/proc/pressure/memory`` (PSI).

MemAvailable is the kernel's own estimate of what can be allocated without swapping — free pages
plus the page cache and slab it can reclaim — so a machine full of cache reads as roomy, as it is.
(What we took from drussell23/JARVIS-AI's ``platform_memory_monitor.py``: MemAvailable already
accounts for Buffers/Cached/SReclaimable, so never count them as used; and PSI ``some``/``full``
avg10 tells "tasks are stalled on memory" apart from "the RAM is busy with cache". Unlike it we
read the cgroup too, and a reader never swallows an error into a "normal" verdict.)

Readers take a ``root`` so tests point them at a recorded tree (``root/proc/meminfo``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from spotleash.agent.memory.reading import MemoryReading, MemorySourceError


def read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as e:
        raise MemorySourceError(f"cannot read {path}: {e.strerror or e}") from e


def parse_meminfo(text: str) -> dict[str, int]:
    """``/proc/meminfo`` as bytes by key (the file says kB: KiB)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if not parts or not parts[0].isdigit():
            continue
        scale = 1024 if len(parts) > 1 and parts[1] == "kB" else 1
        out[key.strip()] = int(parts[0]) * scale
    return out


@dataclass(frozen=True)
class Psi:
    some_avg10: float
    full_avg10: float | None  # the host's file has a full line since 5.x; a cgroup's always


def parse_psi(text: str) -> Psi:
    """``some avg10=0.12 avg60=… total=…`` / ``full …``; ValueError when there is no some line."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        kind, *fields = line.split()
        for f in fields:
            name, _, value = f.partition("=")
            if name == "avg10":
                found[kind] = float(value)
    if "some" not in found:
        raise ValueError("no 'some avg10=' line")
    return Psi(found["some"], found.get("full"))


def read_psi(path: Path) -> Psi:
    text = read_text(path)
    try:
        return parse_psi(text)
    except ValueError as e:
        raise MemorySourceError(f"{path}: {e}") from e


class HostMemory:
    """The whole machine, from ``/proc/meminfo``: MemTotal and MemAvailable."""

    name = "host"

    def __init__(self, root: Path = Path("/")) -> None:
        self.path = root / "proc/meminfo"

    def read(self) -> MemoryReading:
        info = parse_meminfo(read_text(self.path))
        try:
            total, available = info["MemTotal"], info["MemAvailable"]
        except KeyError as e:  # kernels before 3.14 have no MemAvailable: nothing honest to fall back on
            raise MemorySourceError(f"{self.path} has no {e.args[0]} line") from None
        return MemoryReading(limit_bytes=total, available_bytes=min(available, total),
                             used_bytes=max(total - available, 0), source=f"host {self.path}")


class PsiPressure:
    """The host's pressure stall figures (``/proc/pressure/memory``) over another source's bytes."""

    name = "psi"

    def __init__(self, root: Path = Path("/")) -> None:
        self.path = root / "proc/pressure/memory"
        self.host = HostMemory(root)

    def read(self) -> MemoryReading:
        psi = read_psi(self.path)
        base = self.host.read()
        return MemoryReading(limit_bytes=base.limit_bytes, available_bytes=base.available_bytes,
                             used_bytes=base.used_bytes, source=f"{base.source} + {self.path}",
                             psi_some_avg10=psi.some_avg10, psi_full_avg10=psi.full_avg10)
