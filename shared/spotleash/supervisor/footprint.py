"""What a component's processes hold: the resident memory (RSS) of a process and all its descendants; whether
anything but zombies is left of a process group."""

from __future__ import annotations

import os

import psutil


def tree_rss(pid: int) -> int:
    """Bytes resident in ``pid`` and its descendants now; 0 when it is gone. Pages shared between the
    processes are counted in each (RSS), so this is an upper bound of what stopping them frees."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            total += int(p.memory_info().rss)
        except psutil.Error:
            continue  # ended between the listing and the reading: it holds nothing any more
    return total


def only_zombies(pgid: int) -> bool:
    """True when every process left in group ``pgid`` is a zombie (it holds no memory and runs nothing)."""
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                return False
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return True
