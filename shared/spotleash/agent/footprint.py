"""A component's real memory footprint: its local copy's whole process tree, measured with psutil.

``footprint(pid)`` sums the tree under ``pid`` (a server's workers, a model runner's children).
``freeable_bytes`` is what stopping the tree gives back: PSS where the kernel reports it (Linux's
``smaps_rollup``: cheap; each shared page split among its users, so a library shared with the rest of
the machine is not counted in full), else RSS. The supervisor of the local copies calls this with the
pid of each copy; placement uses it instead of the declared ``ram_gb`` when it has it.
"""

from __future__ import annotations

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
