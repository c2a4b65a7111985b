"""Real component processes for the supervisor's tests: the test component script and a short-interval wait.

Shared by the tests of the supervisor, the local copies and the hand-off actor (tests/instance/).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from local_emulator.procs import free_port
from spotleash.polling import wait_until as _poll

__all__ = ["COMPONENT", "free_port", "wait_until"]

COMPONENT = Path(__file__).resolve().parents[1] / "instance" / "components.py"  # MODE=ok|crash|sick|... (its docstring)


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    """Until ``cond()`` holds, polled every 50 ms (processes start and die fast); WaitTimeout past ``timeout`` s."""
    _poll(lambda: cond() or None, timeout_s=timeout, interval_s=0.05, what=what)
