"""The shutdown that always cleans up.

The original team's bug: ``kill -TERM`` left VMs running. Here every way out — SIGTERM, SIGINT,
SIGHUP, a normal return, an exception, interpreter exit — goes through :meth:`Shutdown.release`,
which publishes ``ReleaseEvent(lease_id, reason="agent shutdown: SIGTERM")`` and waits for Pub/Sub
to confirm it, bounded by ``shutdown_budget_s``. It runs exactly once per process however many
paths fire. If the release cannot be confirmed (no network, emulator down, budget spent) the log
says so, and says that lease expiry (``lease_ttl_s``) will still get every instance deleted.

With a router (``agent.routing``) the release is wrapped: the router sends every new request to the
local copies first, then waits (at most ``DRAIN_SHARE`` of the budget) for the requests in flight on a
remote copy to finish, then the release is published — the control plane deletes the instances at once,
so a drain after it would cut what it waits for — then the router stops, all inside the same budget.

A signal only *asks* to stop (it sets an event the run loop waits on); the release runs in the
main thread once the loop returns. A second signal while stopping exits at once with
``128 + signum``.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import FrameType
from typing import Any, Protocol

from spotleash.adapters.pubsub import EventPublisher
from spotleash.errors import SpotleashError
from spotleash.log import get_logger
from spotleash.signal_event import SignalEvent
from spotleash.wire.events import ReleaseEvent

log = get_logger(__name__)

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class _Settable(Protocol):
    def set(self) -> None: ...


class RouterHooks(Protocol):
    """What the shutdown asks of the agent's router (``agent.routing.AgentRouter``)."""

    def release_lease(self) -> None: ...

    def wait_drained(self, timeout_s: float) -> bool: ...

    def stop(self) -> None: ...


DRAIN_SHARE = 0.5  # of the budget: requests in flight on remote copies may finish for this long before the release


class Shutdown:
    def __init__(
        self,
        *,
        lease_id: str,
        publisher: EventPublisher,
        budget_s: float,
        lease_ttl_s: float,
        stop: _Settable | None = None,
        clock: Callable[[], float] = time.monotonic,
        hard_exit: Callable[[int], Any] = os._exit,
        router: RouterHooks | None = None,
    ) -> None:
        self.router = router
        self.lease_id = lease_id
        self.publisher = publisher
        self.budget_s = budget_s
        self.lease_ttl_s = lease_ttl_s
        self.stop: _Settable = stop if stop is not None else SignalEvent()
        self._clock = clock
        self._hard_exit = hard_exit
        self._lock = threading.Lock()
        self._outcome: bool | None = None  # None: release not attempted yet
        self.signal_received: int | None = None
        self._signal_at: float | None = None
        self._previous: dict[int, Any] = {}

    # ---------------------------------------------------------------- signals
    def install(self) -> None:
        """Handle SIGTERM/SIGINT/SIGHUP and interpreter exit (main thread only)."""
        for sig in HANDLED_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        atexit.register(self._at_exit)

    def uninstall(self) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
        self._previous.clear()
        atexit.unregister(self._at_exit)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signal_received is not None:
            # Second signal: the user means it. No logging machinery (we may be inside it).
            line = {"severity": "WARNING", "time": datetime.now(UTC).isoformat(),
                    "logger": "spotleash.agent.shutdown", "message": "second signal: exiting at once",
                    "signal": name, "lease_id": self.lease_id, "exit_code": 128 + signum,
                    "lease_ttl_s": self.lease_ttl_s}
            try:
                os.write(2, (json.dumps(line) + "\n").encode())
            finally:
                self._hard_exit(128 + signum)
            return
        self.signal_received = signum
        self._signal_at = self._clock()
        log.info("signal received: stopping and releasing the lease", signal=name, lease_id=self.lease_id,
                 budget_s=self.budget_s)
        self.stop.set()

    def _at_exit(self) -> None:
        if self._outcome is None:
            self.release("agent shutdown: exit")

    @property
    def reason(self) -> str:
        if self.signal_received is not None:
            return f"agent shutdown: {signal.Signals(self.signal_received).name}"
        return "agent shutdown: exit"

    @property
    def released(self) -> bool | None:
        """True: release confirmed; False: attempted, not confirmed; None: not attempted."""
        return self._outcome

    # ---------------------------------------------------------------- release
    def release(self, reason: str | None = None) -> bool:
        """Publish the release once and wait for it within the budget; True if confirmed.

        The budget runs from the first signal (or from this call when there was none). Later
        calls return the first outcome without publishing again.
        """
        with self._lock:
            if self._outcome is not None:
                return self._outcome
            self._outcome = self._release(reason or self.reason)
            return self._outcome

    def _release(self, reason: str) -> bool:
        started = self._signal_at if self._signal_at is not None else self._clock()
        router = self.router
        if router is None:
            return self._publish_release(reason, started)
        try:
            router.release_lease()
            log.info("shutdown: router sends every new request to the local copies", lease_id=self.lease_id)
        except Exception as e:  # noqa: BLE001 - the release must be published whatever the router does
            log.error("shutdown: router did not take the release", lease_id=self.lease_id,
                      error=f"{type(e).__name__}: {e}")
        drained = self._drain(router, started)
        try:
            return self._publish_release(reason, started)
        finally:
            self._stop_router(router, started, drained)

    def _drain(self, router: RouterHooks, started: float) -> bool | None:
        """Let requests in flight on remote copies finish before the release deletes their instances."""
        left = self.budget_s * DRAIN_SHARE - (self._clock() - started)
        try:
            drained = router.wait_drained(max(left, 0.0))
        except Exception as e:  # noqa: BLE001 - the release must be published whatever the router does
            log.error("shutdown: router did not drain", lease_id=self.lease_id, error=f"{type(e).__name__}: {e}")
            return None
        if not drained:
            log.warning("shutdown: requests still in flight on remote copies; releasing anyway",
                        lease_id=self.lease_id, waited_s=round(max(left, 0.0), 3))
        return drained

    def _stop_router(self, router: RouterHooks, started: float, drained: bool | None) -> None:
        try:
            router.stop()
        except Exception as e:  # noqa: BLE001 - a failing router must not keep the agent from exiting
            log.error("shutdown: router did not stop cleanly", lease_id=self.lease_id,
                      error=f"{type(e).__name__}: {e}")
            return
        log.info("shutdown: router stopped", lease_id=self.lease_id, remote_requests_drained=drained,
                 elapsed_s=round(self._clock() - started, 3))

    def _publish_release(self, reason: str, started: float) -> bool:
        remaining = self.budget_s - (self._clock() - started)
        log.info("shutdown: publishing release", lease_id=self.lease_id, reason=reason,
                 budget_s=self.budget_s, remaining_s=round(remaining, 3))
        if remaining <= 0:
            return self._unconfirmed(reason, "the shutdown budget was already spent")
        event = ReleaseEvent(lease_id=self.lease_id, reason=reason[:200])
        try:
            message_id = self.publisher.publish_and_wait(event, remaining)
        except SpotleashError as e:
            return self._unconfirmed(reason, str(e), event_id=event.event_id)
        elapsed = self._clock() - started
        log.info("shutdown: release confirmed", lease_id=self.lease_id, reason=reason, event_id=event.event_id,
                 message_id=message_id, elapsed_s=round(elapsed, 3))
        return True

    def _unconfirmed(self, reason: str, why: str, **fields: Any) -> bool:
        log.error(
            "shutdown: release NOT confirmed; lease expiry will still delete every instance of this lease "
            f"within {self.lease_ttl_s:.0f}s (lease_ttl_s) plus one reap",
            lease_id=self.lease_id, reason=reason, error=why, lease_ttl_s=self.lease_ttl_s, **fields,
        )
        return False
