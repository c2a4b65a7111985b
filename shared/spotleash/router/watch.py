"""Event-driven input: a Firestore listener on the lease's instance records and on the lease itself.

``on_snapshot`` (the official client; it works against the Firestore emulator too) delivers the whole
result set of ``instances where lease_id == <lease>`` at start and again on every change, within
about a second of the write: READY with endpoints and fingerprint, the preemption flag a heartbeat
sets, TERMINATING when the control plane ends an instance (release, reaper, failed components),
TERMINATED. The lease document's ``released`` flag arrives the same way. The callbacks run in the
client's own thread; ``RecordWatch`` hands each snapshot over as plain dicts to the callables it was
given (``RouterService`` passes them into the router's loop). The only module of the router that
imports google.cloud.firestore.

The listener is the fast path, not the only one: the router probes every remote copy it uses, so a
dead or frozen instance is left within ``fall`` probe intervals even while the listener is down.
``ensure()`` re-subscribes a listener that stopped (its stream ended without recovery).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from spotleash.log import get_logger

log = get_logger(__name__)

RecordsCallback = Callable[[list[dict[str, Any]]], None]
LeaseCallback = Callable[[dict[str, Any] | None], None]
HIBERNATIONS = "hibernations"  # the control plane's collection (spotleash.adapters.firestore), doc id = lease id


class RecordWatch:
    def __init__(self, client: Any, lease_id: str, on_records: RecordsCallback, on_lease: LeaseCallback,
                 on_hibernation: LeaseCallback | None = None) -> None:
        """``client``: a ``google.cloud.firestore.Client``. ``on_hibernation``: also listen to the lease's
        hibernation document (the agent's wake-on-request)."""
        self._client = client
        self._lease_id = lease_id
        self._on_records = on_records
        self._on_lease = on_lease
        self._on_hibernation = on_hibernation
        self._watches: list[Any] = []
        self._lock = threading.Lock()
        self.restarts = 0

    def start(self) -> None:
        from google.cloud.firestore_v1.base_query import FieldFilter

        with self._lock:
            query = self._client.collection("instances").where(filter=FieldFilter("lease_id", "==", self._lease_id))
            self._watches = [
                query.on_snapshot(self._records_snapshot),
                self._client.collection("leases").document(self._lease_id).on_snapshot(self._lease_snapshot),
            ]
            if self._on_hibernation is not None:
                self._watches.append(self._client.collection(HIBERNATIONS).document(self._lease_id)
                                     .on_snapshot(self._hibernation_snapshot))
        log.info("watching instance records", lease_id=self._lease_id)

    def stop(self) -> None:
        with self._lock:
            watches, self._watches = self._watches, []
        for w in watches:
            w.unsubscribe()

    def ensure(self) -> bool:
        """Re-subscribe when a listener stopped streaming; True when it had to."""
        with self._lock:
            dead = not self._watches or any(not getattr(w, "is_active", True) for w in self._watches)
        if dead:
            log.warning("record listener stopped; subscribing again", lease_id=self._lease_id)
            self.stop()
            self.start()
            self.restarts += 1
        return dead

    def _records_snapshot(self, docs: list[Any], _changes: Any, _read_time: Any) -> None:
        self._on_records([d.to_dict() or {} for d in docs])

    def _lease_snapshot(self, docs: list[Any], _changes: Any, _read_time: Any) -> None:
        self._on_lease(docs[0].to_dict() if docs and docs[0].exists else None)

    def _hibernation_snapshot(self, docs: list[Any], _changes: Any, _read_time: Any) -> None:
        if self._on_hibernation is not None:
            self._on_hibernation(docs[0].to_dict() if docs and docs[0].exists else None)
