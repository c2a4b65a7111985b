"""Which components leave the machine so its memory headroom comes back: a pure decision, no I/O.

``place(...)`` takes one memory reading, the threshold (headroom target = ``1 - threshold`` of the
limit), what the trend predicts, and each component's footprint with its flags, and returns the
components to move. The agent acts on it (``agent/runner.py``: a demand naming exactly those); the
local-copy supervisor stops them once their remote copies serve.

The rules:

* **Need** — the bytes of headroom missing: ``limit * (1 - threshold) - available``, using the
  predicted available bytes instead when the trend says it will be lower by the horizon. Pressure
  the kernel reports (PSI, the macOS level) with no byte deficit still needs relief: the need is then
  one byte, so exactly one component — the heaviest — leaves.
* **Fewest, heaviest first** — taking the heaviest movable components in turn until their sum covers
  the need gives the fewest possible: no k components weigh more than the k heaviest. Equal
  footprints are taken in name order, so a decision never depends on input order.
* **GPU components go to a GPU box** — a move naming one sets ``needs_gpu``; the one demand then goes
  to a GPU provider, which runs the CPU components named with it as well.
* ``offload = "never"`` — stays, whatever the pressure.
* ``offload = "keep"`` — its local copy keeps running while a remote copy serves too, so moving it
  frees nothing: placement counts it as 0 bytes and never names it to restore headroom (renting a
  machine that gives no memory back would be a bill for nothing). Other demands (a wake, a manual
  one) may still move it.
* **Nothing fits** — when even every movable component together cannot cover the need, all of them
  move (the most that can be freed) and ``short_bytes`` says how much is still missing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from spotleash.wire.package import Offload


class Reading(Protocol):
    """What placement needs of a memory reading (``agent.memory.reading.MemoryReading`` has it)."""

    @property
    def limit_bytes(self) -> int: ...

    @property
    def available_bytes(self) -> int: ...


@dataclass(frozen=True)
class Candidate:
    name: str
    footprint_bytes: int  # measured (its local copy's process tree), else the declared ram_gb
    measured: bool = False
    gpu: bool = False
    offload: Offload = "default"

    @property
    def frees_bytes(self) -> int:
        """What moving it gives back to this machine (0 for ``keep``: its local copy stays)."""
        return 0 if self.offload == "keep" else max(self.footprint_bytes, 0)


@dataclass(frozen=True)
class Placement:
    move: tuple[Candidate, ...]  # heaviest first
    need_bytes: int  # headroom missing (now, or by the horizon)
    stays: tuple[str, ...]  # offload = "never"
    kept: tuple[str, ...]  # offload = "keep": would free nothing
    reason: str

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.move]

    @property
    def freed_bytes(self) -> int:
        return sum(c.frees_bytes for c in self.move)

    @property
    def short_bytes(self) -> int:
        """Headroom still missing after the move (0: it restores the target)."""
        return max(self.need_bytes - self.freed_bytes, 0)

    @property
    def needs_gpu(self) -> bool:
        return any(c.gpu for c in self.move)


def headroom_target(reading: Reading, threshold: float) -> int:
    return math.ceil(reading.limit_bytes * (1.0 - threshold))


def need_bytes(reading: Reading, threshold: float, *, predicted_used: float | None = None,
               pressured: bool = False) -> int:
    """Bytes of headroom to restore. ``predicted_used``: the trend's used fraction at the horizon."""
    available = reading.available_bytes
    if predicted_used is not None:
        predicted_available = round(reading.limit_bytes * (1.0 - min(max(predicted_used, 0.0), 1.0)))
        available = min(available, predicted_available)
    need = max(headroom_target(reading, threshold) - available, 0)
    return max(need, 1) if pressured else need


def _mb(n: int) -> str:
    return f"{n / 2**20:.0f} MB"


def place(reading: Reading, threshold: float, candidates: Sequence[Candidate], *,
          predicted_used: float | None = None, pressured: bool = False) -> Placement:
    need = need_bytes(reading, threshold, predicted_used=predicted_used, pressured=pressured)
    stays = tuple(sorted(c.name for c in candidates if c.offload == "never"))
    kept = tuple(sorted(c.name for c in candidates if c.offload == "keep"))
    movable = sorted((c for c in candidates if c.offload == "default" and c.frees_bytes > 0),
                     key=lambda c: (-c.frees_bytes, c.name))
    if need == 0:
        return Placement((), 0, stays, kept, "headroom is at or above the target: nothing moves")
    if not movable:
        why = "every component is offload = never or keep, or frees nothing" if candidates else "no components"
        return Placement((), need, stays, kept, f"{_mb(need)} of headroom missing but nothing can move: {why}")
    chosen: list[Candidate] = []
    freed = 0
    for c in movable:
        if freed >= need:
            break
        chosen.append(c)
        freed += c.frees_bytes
    p = Placement(tuple(chosen), need, stays, kept, "")
    if p.short_bytes:
        reason = (f"{_mb(need)} of headroom missing; every movable component together frees {_mb(freed)}: "
                  f"all move, {_mb(p.short_bytes)} still short")
    else:
        reason = f"{_mb(need)} of headroom missing; moving {', '.join(p.names)} frees {_mb(freed)}"
    return Placement(p.move, need, stays, kept, reason)
