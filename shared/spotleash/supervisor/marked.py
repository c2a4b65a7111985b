"""Processes found by a marker in their environment (children inherit it, a reused pid never has it)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence

import psutil

WAIT_POLL_S = 0.02  # how often ``wait_gone`` looks again


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def wait_gone(procs: Sequence[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait (at most ``timeout``) until every one of ``procs`` has exited; those still running.

    An exited process is gone even before it is reaped: ``psutil.wait_procs`` waits for a process that is not
    our child until it disappears, and an orphan (a service started in the background by a startup script) is
    reaped by init, which on these machines took 1.5 s after its exit, and more on a loaded machine: past a
    stop grace of 3 s, a process that had exited at once was SIGKILLed and its stop counted as a hang."""
    deadline = time.monotonic() + timeout
    left = [p for p in procs if _running(p)]
    while left and time.monotonic() < deadline:
        time.sleep(min(WAIT_POLL_S, max(0.0, deadline - time.monotonic())))
        left = [p for p in left if _running(p)]
    return left


def find_marked(var: str, value: str) -> list[psutil.Process]:
    """Live processes of this user whose environment has ``var=value``."""
    me = os.getuid()
    found = []
    for p in psutil.process_iter():
        try:
            if p.uids().real != me or p.pid == os.getpid() or p.status() == psutil.STATUS_ZOMBIE:
                continue
            if p.environ().get(var) == value:
                found.append(p)
        except psutil.Error:
            continue
    return found


def end_marked(var: str, value: str, *, grace_s: float = 2.0, rounds: int = 10) -> list[psutil.Process]:
    """SIGTERM every process marked ``var=value``, SIGKILL what is left after ``grace_s``, and look again
    until none is left (one may fork between a search and its signal); those that were running."""
    procs = find_marked(var, value)
    seen = {p.pid: p for p in procs}
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    wait_gone(procs, grace_s)
    for _ in range(rounds):
        still = find_marked(var, value)
        if not still:
            break
        seen.update({p.pid: p for p in still})
        for p in still:
            with contextlib.suppress(psutil.Error):
                p.kill()
        wait_gone(still, 2.0)
    return list(seen.values())
