"""Fewer idle wake-ups of the threads that wait on gRPC calls (the agent's Firestore listeners).

gRPC's synchronous Python API never waits on a call's condition without a timeout: it waits
``grpc._common.MAXIMUM_WAIT_TIMEOUT`` (0.1 s) at a time, so that a wait in the *main* thread cannot keep
signal handlers from running (grpc/grpc#19464). Every thread blocked on a stream therefore wakes 10 times
a second, takes the GIL and goes back to sleep: the router's two Firestore listeners (the lease's records,
its lease document) cost the idle agent 20 wake-ups a second. A response, an error or a cancel still
notifies the condition at once; only the idle re-check slows down.

The agent's main thread never waits in gRPC (its loop waits on a ``SignalEvent``, a pipe; publishes are awaited
through their futures), so the longer period delays no signal. A later grpcio without the constant leaves
everything as it was (``slower_idle_waits`` says so).
"""

from __future__ import annotations

IDLE_WAIT_S = 1.0


def slower_idle_waits(period_s: float = IDLE_WAIT_S) -> bool:
    """Make gRPC's idle re-check ``period_s`` (never shorter than its own); False when grpcio has no such knob."""
    try:
        from grpc import _common  # type: ignore[import-untyped]
    except ImportError:
        return False
    current = getattr(_common, "MAXIMUM_WAIT_TIMEOUT", None)
    if not isinstance(current, float):
        return False
    _common.MAXIMUM_WAIT_TIMEOUT = max(current, period_s)
    return True
