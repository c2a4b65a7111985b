"""When a process started, in a form two processes can compare across a step of the wall clock."""

from __future__ import annotations

import os

import psutil


def started(pid: int) -> float:
    """When ``pid`` started, in seconds after boot, which a clock step does not move. psutil's ``create_time``
    adds the boot time, and Linux derives that from the wall clock: a machine's clock stepped 18 s under a
    running local stack, every process of it then looked like a stranger (a recycled pid) to a process that
    compared its recorded figure. NoSuchProcess when it is gone; elsewhere than Linux, the wall clock's figure."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()  # after the command name, which may hold spaces
        return int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime, in clock ticks after boot
    except (OSError, IndexError, ValueError):
        return float(psutil.Process(pid).create_time())
