"""Processes found by a marker in their environment (children inherit it, a reused pid never has it)."""

from __future__ import annotations

import contextlib
import os

import psutil


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
    psutil.wait_procs(procs, timeout=grace_s)
    for _ in range(rounds):
        still = find_marked(var, value)
        if not still:
            break
        seen.update({p.pid: p for p in still})
        for p in still:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(still, timeout=2.0)
    return list(seen.values())
