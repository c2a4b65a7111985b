"""Asking the control plane to check an instance the router may have lost without notice.

A VAST box that is outbid, a VM deleted behind our back or a frozen box sends nothing; the reaper would
see it on its next pass once the box missed its beats (a minute or two at production timings). The
router sees it sooner: a probe of the copy fails (``router.table.suspect_without_notice``, which leaves
out every planned ending). Then the agent publishes a ``ReapTick`` naming that instance (reason
``probe_failed``): the reap reads its record and asks its provider in that
pass, and a box the provider shows stopped or no longer lists is replaced at once. A box the provider
still shows running (a network blip) is left alone; the reap audits the check.

Debounced: at most one tick per instance per ``every_s``, so a flapping link cannot flood the reap topic
(a box that is fine but missed one probe costs one reap pass and one provider read per ``every_s``).
Thread-safe (the router calls in from a worker thread); never raises (a lost tick is a slower detection,
the scheduler's reap still comes).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from spotleash.adapters.pubsub import EventPublisher
from spotleash.log import get_logger
from spotleash.wire.events import ReapTick

log = get_logger(__name__)
REASON = "probe_failed"
DEFAULT_EVERY_S = 30.0
PUBLISH_WAIT_S = 10.0


def check_due(last_sent: float | None, now: float, every_s: float) -> bool:
    """Should a check of one instance go out now, given when the last one for it did? Pure."""
    return last_sent is None or now - last_sent >= every_s


class LossReporter:
    def __init__(self, lease_id: str, publisher: EventPublisher, every_s: float = DEFAULT_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.lease_id = lease_id
        self.publisher = publisher
        self.every_s = every_s
        self.clock = clock
        self._lock = threading.Lock()
        self._sent: dict[str, float] = {}  # instance id → when its last check went out

    def lost(self, instance_id: str, error: str) -> ReapTick | None:
        """The router lost ``instance_id`` (``error``: its last failed probe): publish a check unless one for
        it went out within ``every_s``. Returns the tick published, None when debounced or not published."""
        now = self.clock()
        with self._lock:
            if not check_due(self._sent.get(instance_id), now, self.every_s):
                log.info("instance lost again; a check of it went out recently", instance_id=instance_id)
                return None
            self._sent[instance_id] = now
        try:
            tick = ReapTick(lease_id=self.lease_id, instance_id=instance_id, reason=REASON,
                            detail=f"the router's probes failed: {error}"[:300])
            self.publisher.publish_and_wait(tick, PUBLISH_WAIT_S)
        except Exception as e:  # noqa: BLE001 - the scheduler's reap still comes; a later fall may try again
            with self._lock:
                self._sent.pop(instance_id, None)
            log.warning("could not ask the control plane to check a lost instance", instance_id=instance_id,
                        error=f"{type(e).__name__}: {e}"[:300])
            return None
        log.info("asked the control plane to check a lost instance", instance_id=instance_id,
                 event_id=tick.event_id, reason=REASON)
        return tick
