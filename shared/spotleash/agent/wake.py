"""Waking a HIBERNATED lease on a request (``SPOTLEASH_WAKE_ON_REQUEST``, off by default).

When the control plane hibernates the lease (its idle instance snapshotted, verified, destroyed), it
writes ``hibernations/<lease>``; the agent's Firestore listener hands that document here, and the
instance records of the lease with it. The router calls ``requested(component)`` for every request it
receives and keeps serving from the local copy, as it does whenever no remote copy is READY. The
agent's loop asks ``due(now)`` each turn and publishes one demand (trigger ``request``) for the
hibernated components; the control plane launches, the new instance restores the snapshot, and once
it is READY the router shifts to it as usual and the control plane removes the hibernation.

One demand per hibernation: nothing more is sent while the lease has a live instance (the launch is
under way) or within ``retry_s`` of the last wake demand; after that, a demand that launched nothing
(lost, or refused by the control plane) is sent again on the next request.

Thread-safe: the listener calls in from the Firestore client's thread, the router from its event loop,
the agent loop from the main thread. ``requested`` takes a lock and sets a field — nothing slower.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from spotleash.log import get_logger

log = get_logger(__name__)
ENDED_STATES = frozenset({"TERMINATED", "FAILED"})


@dataclass(frozen=True)
class Hibernated:
    """What the agent knows of its lease's hibernation document."""

    key: str  # snapshot id and time: a new hibernation is a new key
    snapshot_id: str
    components: tuple[str, ...]

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any] | None, deployment_id: str | None = None) -> Hibernated | None:
        """The document as Firestore delivers it; None when absent, unreadable or of another deployment
        (``deployment_id`` given; the document id is the lease id alone). Never raises."""
        if not doc or not isinstance(doc.get("snapshot_id"), str):
            return None
        if deployment_id is not None and doc.get("deployment_id") != deployment_id:
            return None
        comps = doc.get("components")
        names = tuple(c for c in comps if isinstance(c, str)) if isinstance(comps, list) else ()
        return cls(key=f"{doc['snapshot_id']}@{doc.get('hibernated_at')}", snapshot_id=doc["snapshot_id"],
                   components=names)

    def covers(self, component: str) -> bool:
        return not self.components or component in self.components


@dataclass(frozen=True)
class Sent:
    key: str
    at: float


def wake_due(hibernated: Hibernated | None, asked: str | None, live_instances: int, last: Sent | None,
             now: float, retry_s: float) -> bool:
    """Should a wake demand go out now? Pure: the rule of the module docstring."""
    if hibernated is None or asked is None or not hibernated.covers(asked) or live_instances > 0:
        return False
    return last is None or last.key != hibernated.key or now - last.at >= retry_s


@dataclass(frozen=True)
class WakeDemand:
    components: tuple[str, ...]  # empty: the agent's own components
    snapshot_id: str
    asked_by: str  # the component whose request woke it


class Waker:
    def __init__(self, retry_s: float, deployment_id: str | None = None) -> None:
        self.retry_s = retry_s
        self.deployment_id = deployment_id
        self._lock = threading.Lock()
        self._hibernated: Hibernated | None = None
        self._live = 0
        self._asked: str | None = None
        self._last: Sent | None = None

    # --- inputs
    def hibernation_changed(self, doc: Mapping[str, Any] | None) -> None:
        now = Hibernated.from_doc(doc, self.deployment_id)
        with self._lock:
            before, self._hibernated = self._hibernated, now
            if now is None:
                self._asked = None
        if now is not None and (before is None or before.key != now.key):
            log.info("lease hibernated; the next request for one of its components wakes it",
                     snapshot_id=now.snapshot_id, components=list(now.components))
        elif now is None and before is not None:
            log.info("lease awake again: its hibernation is over", snapshot_id=before.snapshot_id)

    def records_changed(self, records: Iterable[Mapping[str, Any]]) -> None:
        live = sum(1 for r in records if str(r.get("state", "")) not in ENDED_STATES)
        with self._lock:
            self._live = live

    def requested(self, component: str) -> None:
        """Called by the router for every request; remembers one only while the lease is hibernated."""
        with self._lock:
            if self._hibernated is not None and self._asked is None:
                self._asked = component

    # --- the agent loop
    @property
    def hibernated(self) -> Hibernated | None:
        with self._lock:
            return self._hibernated

    def due(self, now: float) -> WakeDemand | None:
        """The wake demand to publish now, if one is due (then it counts as sent)."""
        with self._lock:
            h, asked = self._hibernated, self._asked
            self._asked = None  # each request counts once: a later one may ask again
            if h is None or asked is None or not wake_due(h, asked, self._live, self._last, now, self.retry_s):
                return None
            self._last = Sent(h.key, now)
            return WakeDemand(h.components, h.snapshot_id, asked)
