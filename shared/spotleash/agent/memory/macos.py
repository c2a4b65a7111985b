"""macOS: the kernel's memory-pressure level and swap activity (tested on recorded readings only).

macOS has no PSI and keeps RAM full of cache on purpose, so "used %" says little; the kernel itself
publishes how pressed it is (``sysctl kern.memorystatus_vm_pressure_level``: 1 normal, 2 warn,
4 critical — what Activity Monitor's graph colours show). Swap-outs going on now are the other sign
of real pressure. (Taken from drussell23/JARVIS-AI's ``platform_memory_monitor.py``: the level and
page-out *activity* decide, not a percentage — their warn already moves work, critical or swapping
is urgent; a rate of 100 pages/s is their "actively swapping" line, and ours.)

Headroom as Activity Monitor counts it: used = app memory (anonymous − purgeable) + wired +
compressed; the rest (free, file cache, purgeable) can be had without swapping.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable

from spotleash.agent.memory.reading import MemoryReading, MemorySourceError, PressureLevel

LEVELS: dict[int, PressureLevel] = {1: "normal", 2: "warn", 4: "critical"}
SWAPPING_PAGES_PER_S = 100.0

Run = Callable[[list[str]], str]


def run_command(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=5, check=True).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise MemorySourceError(f"cannot run {' '.join(argv)}: {e}") from e


def parse_vm_stat(text: str) -> dict[str, int]:
    """``vm_stat`` output: ``page_size`` and each counter by its label (``Pages free``, ``Swapouts``...)."""
    m = re.search(r"page size of (\d+) bytes", text)
    if m is None:
        raise ValueError("no 'page size of N bytes' header")
    out = {"page_size": int(m.group(1))}
    for line in text.splitlines():
        label, sep, value = line.rpartition(":")
        value = value.strip().rstrip(".")
        if sep and value.isdigit():
            out[label.strip().strip('"')] = int(value)
    return out


def parse_sysctl_int(text: str) -> int:
    """``sysctl -n key`` (``4``) or ``sysctl key`` (``key: 4``)."""
    value = text.strip().rpartition(":")[2].strip()
    if not value.isdigit():
        raise ValueError(f"not a number: {text.strip()[:60]!r}")
    return int(value)


def parse_pressure_level(text: str) -> PressureLevel:
    n = parse_sysctl_int(text)
    if n not in LEVELS:
        raise ValueError(f"pressure level {n} is none of 1 (normal), 2 (warn), 4 (critical)")
    return LEVELS[n]


def used_bytes(vm: dict[str, int]) -> int:
    """App memory + wired + compressed, as Activity Monitor's "Memory Used"."""
    page = vm["page_size"]
    if "Anonymous pages" in vm:
        app = vm["Anonymous pages"] - vm.get("Pages purgeable", 0)
    else:  # older releases print no anonymous count: active pages are the nearest
        app = vm.get("Pages active", 0)
    return (max(app, 0) + vm.get("Pages wired down", 0) + vm.get("Pages occupied by compressor", 0)) * page


class MacosMemory:
    """The Mac's memory from ``sysctl`` and ``vm_stat``; ``swapping`` compares with the previous read."""

    name = "macos"

    def __init__(self, run: Run = run_command, clock: Callable[[], float] = time.monotonic) -> None:
        self.run = run
        self.clock = clock
        self._last_swapouts: tuple[float, int] | None = None

    def read(self) -> MemoryReading:
        try:
            total = parse_sysctl_int(self.run(["sysctl", "-n", "hw.memsize"]))
            vm = parse_vm_stat(self.run(["vm_stat"]))
            level = parse_pressure_level(self.run(["sysctl", "-n", "kern.memorystatus_vm_pressure_level"]))
        except ValueError as e:
            raise MemorySourceError(f"macOS memory figures unreadable: {e}") from e
        used = min(used_bytes(vm), total)
        now, swapouts = self.clock(), vm.get("Swapouts", 0)
        swapping: bool | None = None
        if self._last_swapouts is not None:
            t0, n0 = self._last_swapouts
            rate = (swapouts - n0) / (now - t0) if now > t0 else 0.0
            swapping = rate >= SWAPPING_PAGES_PER_S
        self._last_swapouts = (now, swapouts)
        return MemoryReading(limit_bytes=total, available_bytes=total - used, used_bytes=used,
                             source="macos sysctl + vm_stat", level=level, swapping=swapping)
