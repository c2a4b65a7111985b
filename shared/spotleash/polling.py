"""Wait for a condition with a deadline: the only way spotleash (and its tests) wait."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from spotleash.errors import Transient

T = TypeVar("T")


class WaitTimeout(Transient):
    """The condition did not hold before the deadline."""


def wait_until(
    check: Callable[[], T | None], *, timeout_s: float, interval_s: float = 0.2, what: str = "condition",
    clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``check`` until it returns something truthy; return it. WaitTimeout past ``timeout_s``.
    ``clock`` and ``sleep``: a caller with an injected clock (a service's ``Context``, a test's fake clock)
    passes its own, so the wait advances that clock instead of the wall's."""
    deadline = clock() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if clock() >= deadline:
            raise WaitTimeout(f"timed out after {timeout_s:.0f}s waiting for {what}")
        sleep(min(interval_s, max(deadline - clock(), 0.0)))
