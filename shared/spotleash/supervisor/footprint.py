"""What a component's processes hold, and whether anything but zombies is left of a process group.

``footprint(pid)`` sums the tree under ``pid`` (a server's workers, a model runner's children).
``freeable_bytes`` is what stopping the tree gives back: PSS where the kernel reports it (Linux's
``smaps_rollup``: each shared page split among its users, so a library shared with the rest of the machine is
not counted in full), else RSS. Placement uses it instead of the declared ``ram_gb`` when it has it; the
supervisor reports a stopped copy's RSS (``tree_rss``). One measurement for the laptop and the instance.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class Footprint:
    pids: tuple[int, ...]  # the tree measured, root first
    rss_bytes: int
    pss_bytes: int | None  # None where the platform or permissions give no PSS (macOS, another user's process)
    uss_bytes: int | None  # private to the tree: freed for sure when it stops

    @property
    def freeable_bytes(self) -> int:
        return self.pss_bytes if self.pss_bytes is not None else self.rss_bytes


def _add(total: int | None, part: int | None) -> int | None:
    return None if total is None or part is None else total + part


def footprint(pid: int) -> Footprint | None:
    """The tree under ``pid`` now; None when ``pid`` is gone. Children that end mid-walk are skipped."""
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return None
    pids: list[int] = []
    rss = 0
    pss: int | None = 0
    uss: int | None = 0
    for p in tree:
        try:
            try:
                full = p.memory_full_info()
                rss += full.rss
                pss, uss = _add(pss, getattr(full, "pss", None)), _add(uss, getattr(full, "uss", None))
            except psutil.AccessDenied:  # smaps of another user's process: RSS is still readable
                rss += p.memory_info().rss
                pss = uss = None
        except psutil.NoSuchProcess:
            if p is root:
                return None
            continue
        pids.append(p.pid)
    return Footprint(pids=tuple(pids), rss_bytes=rss, pss_bytes=pss, uss_bytes=uss)


def tree_rss(pid: int) -> int:
    """Bytes resident in ``pid`` and its descendants now; 0 when it is gone. Pages shared between the
    processes are counted in each (RSS), so this is an upper bound of what stopping them frees."""
    fp = footprint(pid)
    return fp.rss_bytes if fp is not None else 0


def only_zombies(pgid: int) -> bool:
    """True when every process left in group ``pgid`` is a zombie (it holds no memory and runs nothing)."""
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                return False
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return True
