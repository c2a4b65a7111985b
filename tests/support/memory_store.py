"""``spotleash.adapters.firestore.Store`` in memory, for in-process tests of the services (and benches).

Same semantics as ``FirestoreStore`` where the services depend on them, and the shared contract in
``tests/support/store_contract.py`` runs against both to keep it so:

- records round-trip through their stored form (``model_dump`` / ``model_validate``), so a caller
  never holds a reference into the store;
- ``create_intent`` and ``mark_event`` are conditional creates; ``update``, ``update_with_lease``,
  ``update_lease`` and ``retire_lease_if`` are each one atomic read-modify-write (one lock for the whole
  store: a reap deletes from several threads);
- the queries filter as Firestore's do, including that a range filter never matches a missing field
  (a RUNNING record without ``last_heartbeat`` is not "older than" any cut-off);
- ``reads`` counts documents read the way ``FirestoreStore`` counts them.

Tests script races and outages per method: ``store.on("update", hook)`` runs ``hook`` once just before
the next ``update`` (another service acting in between two steps of this one), and
``store.fail("audit", Transient("firestore: 503"))`` makes the next ``audit`` raise.

It lives under ``tests/`` so no deployable can ship it by accident.
"""

from __future__ import annotations

import functools
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar, cast

from spotleash.adapters.firestore import RETENTION, AuditOf
from spotleash.model import (
    LIVE,
    Hibernation,
    InstanceRecord,
    Lease,
    RestorePin,
    SnapshotRecord,
    SnapshotState,
    State,
)
from spotleash.pricing.sheet import CachedPrice

if TYPE_CHECKING:
    from spotleash.adapters.firestore import Store

_HEARTBEATING = (State.RUNNING, State.READY)
_PENDING = (State.REQUESTED, State.PROVISIONING, State.TERMINATING)


F = TypeVar("F", bound=Callable[..., Any])


def _scripted(method: F) -> F:
    """Run the method's pending hook, then raise its scripted fault if one is due, then the method."""

    @functools.wraps(method)
    def run(self: MemoryStore, *args: Any, **kwargs: Any) -> Any:
        self._enter(method.__name__)
        return method(self, *args, **kwargs)

    return cast(F, run)


def _stored(record: InstanceRecord) -> dict[str, Any]:
    return record.model_dump(mode="python")


@dataclass
class _Tables:
    """The "database": shared by every MemoryStore made from one another (one per deployment)."""

    lock: threading.RLock = field(default_factory=threading.RLock)
    instances: dict[str, dict[str, Any]] = field(default_factory=dict)
    leases: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    audit: list[dict[str, Any]] = field(default_factory=list)
    budget: dict[str, dict[str, Any]] = field(default_factory=dict)
    snapshots: dict[str, dict[str, Any]] = field(default_factory=dict)
    hibernations: dict[str, dict[str, Any]] = field(default_factory=dict)
    pins: dict[str, dict[str, Any]] = field(default_factory=dict)
    prices: dict[tuple[str, str], CachedPrice] = field(default_factory=dict)  # shared by deployments, as in Firestore


class MemoryStore:
    def __init__(self, deployment_id: str = "default", *, _tables: _Tables | None = None) -> None:
        self.deployment_id = deployment_id
        self.reads = 0  # per store object, like FirestoreStore's
        tables = _tables or _Tables()
        self._db = tables
        self._lock = tables.lock
        self._instances = tables.instances
        self._leases = tables.leases
        self._events = tables.events
        self._rejected = tables.rejected
        self._audit = tables.audit
        self._budget = tables.budget
        self._snapshots = tables.snapshots
        self._hibernations = tables.hibernations
        self._pins = tables.pins
        self._hooks: dict[str, list[Callable[[], None]]] = defaultdict(list)
        self._faults: dict[str, list[tuple[Exception, list[int]]]] = defaultdict(list)

    def for_deployment(self, deployment_id: str) -> MemoryStore:
        """Another deployment's view of the same data (as two FirestoreStores on one project)."""
        return MemoryStore(deployment_id, _tables=self._db)

    # ---------------------------------------------------------------- scripting
    def on(self, method: str, hook: Callable[[], None]) -> None:
        """Run ``hook`` once, just before the next call of ``method`` (a race, placed exactly)."""
        with self._lock:
            self._hooks[method].append(hook)

    def fail(self, method: str, error: Exception, *, times: int = 1) -> None:
        """The next ``times`` calls of ``method`` raise ``error`` (after any hook ran)."""
        with self._lock:
            self._faults[method].append((error, [times]))

    def _enter(self, method: str) -> None:
        with self._lock:
            hooks, self._hooks[method] = self._hooks[method][:1], self._hooks[method][1:]
        for hook in hooks:  # outside the lock: a hook may call the store, or a service
            hook()
        with self._lock:
            if self._faults[method]:
                error, left = self._faults[method][0]
                left[0] -= 1
                if left[0] <= 0:
                    self._faults[method].pop(0)
                raise error

    # ---------------------------------------------------------------- helpers
    def _records(self, keep: Callable[[InstanceRecord], bool]) -> list[InstanceRecord]:
        with self._lock:
            found = [r for r in (InstanceRecord.model_validate(d) for d in self._instances.values()) if keep(r)]
            self.reads += len(found)
        return sorted(found, key=lambda r: r.instance_id)  # Firestore's default order: by document id

    def _ours(self, r: InstanceRecord) -> bool:
        return r.deployment_id == self.deployment_id

    # ---------------------------------------------------------------- instances
    @_scripted
    def get(self, instance_id: str) -> InstanceRecord | None:
        with self._lock:
            self.reads += 1
            doc = self._instances.get(instance_id)
        return InstanceRecord.model_validate(doc) if doc is not None else None

    @_scripted
    def get_many(self, instance_ids: Iterable[str]) -> dict[str, InstanceRecord]:
        wanted = set(instance_ids)
        with self._lock:
            self.reads += len(wanted)
            docs = {i: self._instances[i] for i in wanted if i in self._instances}
        return {i: InstanceRecord.model_validate(d) for i, d in docs.items()}

    @_scripted
    def create_intent(self, record: InstanceRecord) -> tuple[InstanceRecord, bool]:
        with self._lock:
            existing = self._instances.get(record.instance_id)
            if existing is not None:
                self.reads += 1
                return InstanceRecord.model_validate(existing), False
            self._instances[record.instance_id] = _stored(record)
        return record, True

    def put(self, record: InstanceRecord) -> None:
        with self._lock:
            self._instances[record.instance_id] = _stored(record)

    @_scripted
    def update(
        self, instance_id: str, change: Callable[[InstanceRecord], InstanceRecord | None], *,
        audit: AuditOf | None = None,
    ) -> InstanceRecord | None:
        return self._update(instance_id, lambda rec, _lease: change(rec), read_lease=False, audit=audit)

    @_scripted
    def update_with_lease(
        self, instance_id: str, change: Callable[[InstanceRecord, Lease | None], InstanceRecord | None]
    ) -> InstanceRecord | None:
        return self._update(instance_id, change, read_lease=True)

    def _update(
        self, instance_id: str, change: Callable[[InstanceRecord, Lease | None], InstanceRecord | None], *,
        read_lease: bool, audit: AuditOf | None = None,
    ) -> InstanceRecord | None:
        with self._lock:
            self.reads += 1
            doc = self._instances.get(instance_id)
            if doc is None:
                self._audit_of(audit, None)
                return None
            current = InstanceRecord.model_validate(doc)
            lease = None
            if read_lease:
                self.reads += 1
                lease_doc = self._leases.get(current.lease_id)
                lease = Lease.model_validate(lease_doc) if lease_doc is not None else None
            new = change(current, lease)
            if new is not None and new != current:
                self._instances[instance_id] = _stored(new)
            left = new if new is not None else current
            self._audit_of(audit, left)
            return left

    @_scripted
    def update_many(
        self, changes: Mapping[str, Callable[[InstanceRecord, Lease | None], InstanceRecord | None]], *,
        read_leases: bool = False, audits: Mapping[str, AuditOf] | None = None,
    ) -> dict[str, InstanceRecord | None]:
        out: dict[str, InstanceRecord | None] = {}
        with self._lock:  # all at once, as one transaction
            for iid in sorted(changes):
                self.reads += 1
                doc = self._instances.get(iid)
                current = InstanceRecord.model_validate(doc) if doc is not None else None
                left = current
                if current is not None:
                    lease = None
                    if read_leases:
                        self.reads += 1
                        lease_doc = self._leases.get(current.lease_id)
                        lease = Lease.model_validate(lease_doc) if lease_doc is not None else None
                    new = changes[iid](current, lease)
                    if new is not None and new != current:
                        self._instances[iid] = _stored(new)
                    left = new if new is not None else current
                out[iid] = left
                self._audit_of((audits or {}).get(iid), left)
        return out

    def _audit_of(self, audit: AuditOf | None, left: InstanceRecord | None) -> None:
        """``update``'s entry, in the same step as the record (the caller holds the lock)."""
        if audit is not None:
            row = audit(left)
            self._audit.append({"action": row.action, "reason": row.reason, "at": row.at,
                                "expire_at": row.at + RETENTION, "deployment_id": self.deployment_id, **row.fields})

    @_scripted
    def live_instances(self) -> list[InstanceRecord]:
        return self._records(lambda r: self._ours(r) and r.state in LIVE)

    @_scripted
    def instances_of_lease(self, lease_id: str, live_only: bool = True) -> list[InstanceRecord]:
        return [r for r in self._records(lambda r: r.lease_id == lease_id and (not live_only or r.state in LIVE))
                if self._ours(r)]

    @_scripted
    def live_instances_of_leases(self, lease_ids: Iterable[str]) -> dict[str, list[InstanceRecord]]:
        wanted = set(lease_ids)
        found: dict[str, list[InstanceRecord]] = {lease_id: [] for lease_id in sorted(wanted)}
        for r in self._records(lambda r: r.lease_id in wanted):  # Firestore's query: every record of those leases
            if self._ours(r) and r.state in LIVE:
                found[r.lease_id].append(r)
        return found

    def all_instances(self, limit: int | None = None) -> list[InstanceRecord]:
        return self._records(self._ours)[:limit]

    @_scripted
    def instances_since(self, since: datetime) -> list[InstanceRecord]:
        return self._records(lambda r: self._ours(r) and r.created_at >= since)

    @_scripted
    def billed_since(self, since: datetime) -> list[InstanceRecord]:
        # Firestore's three queries (live, ended since, created since), each counted as read
        found = {r.instance_id: r for r in
                 self._records(lambda r: self._ours(r) and r.state in LIVE)
                 + self._records(lambda r: self._ours(r) and r.ended_at is not None and r.ended_at >= since)
                 + self._records(lambda r: self._ours(r) and r.created_at >= since)}
        return [found[k] for k in sorted(found)]

    @_scripted
    def past_deadline(self, now: datetime) -> list[InstanceRecord]:
        return self._records(lambda r: self._ours(r) and r.state in LIVE and r.deadline <= now)

    @_scripted
    def heartbeat_older_than(self, cutoff: datetime) -> list[InstanceRecord]:
        return self._records(lambda r: self._ours(r) and r.state in _HEARTBEATING
                             and r.last_heartbeat is not None and r.last_heartbeat <= cutoff)

    @_scripted
    def pending_older_than(self, cutoff: datetime) -> list[InstanceRecord]:
        return self._records(lambda r: self._ours(r) and r.state in _PENDING and r.updated_at <= cutoff)

    # ---------------------------------------------------------------- leases
    @_scripted
    def get_lease(self, lease_id: str) -> Lease | None:
        with self._lock:
            self.reads += 1
            doc = self._leases.get(lease_id)
        return Lease.model_validate(doc) if doc is not None else None

    @_scripted
    def put_lease(self, lease: Lease) -> None:
        with self._lock:
            self._leases[lease.lease_id] = lease.model_dump(mode="python")

    @_scripted
    def update_lease(self, lease_id: str, change: Callable[[Lease | None], Lease | None]) -> Lease | None:
        with self._lock:
            self.reads += 1
            doc = self._leases.get(lease_id)
            current = Lease.model_validate(doc) if doc is not None else None
            new = change(current)
            if new is not None and new != current:
                self._leases[lease_id] = new.model_dump(mode="python")
            return new if new is not None else current

    @_scripted
    def expired_leases(self, now: datetime) -> list[Lease]:
        with self._lock:
            ours = [Lease.model_validate(d) for d in self._leases.values()
                    if d["deployment_id"] == self.deployment_id]
        due = [lease for lease in ours if lease.expires_at <= now]
        released = [lease for lease in ours if lease.released]
        with self._lock:
            self.reads += len(due) + len(released)  # two queries, as FirestoreStore runs them
        return list({lease.lease_id: lease for lease in due + released}.values())

    @_scripted
    def retire_lease(self, lease_id: str) -> None:
        with self._lock:
            self._leases.pop(lease_id, None)

    @_scripted
    def retire_lease_if(self, lease_id: str, due: Callable[[Lease], bool]) -> Lease | None:
        with self._lock:
            self.reads += 1
            doc = self._leases.get(lease_id)
            current = Lease.model_validate(doc) if doc is not None else None
            if current is None or due(current):
                self._leases.pop(lease_id, None)
                return None
            return current

    # ---------------------------------------------------------------- events, rejects, audit, budget
    @_scripted
    def mark_event(self, event_id: str, kind: str, now: datetime) -> bool:
        with self._lock:
            if event_id in self._events:
                return False
            self._events[event_id] = {"kind": kind, "at": now, "expire_at": now + RETENTION}
            return True

    @_scripted
    def reject(self, *, source: str, reason: str, detail: str, raw: bytes, message_id: str, now: datetime) -> None:
        with self._lock:
            self._rejected.append({
                "source": source, "reason": reason, "detail": detail[:1000], "message_id": message_id,
                "raw": raw[:4096], "size": len(raw), "at": now, "expire_at": now + RETENTION,
            })

    def rejected(self, limit: int = 1000) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(d) for d in self._rejected[:limit]]

    @_scripted
    def audit(self, action: str, reason: str, now: datetime, **fields: Any) -> None:
        entry = {"action": action, "reason": reason, "at": now, "expire_at": now + RETENTION,
                 "deployment_id": self.deployment_id, **fields}
        with self._lock:
            self._audit.append(entry)

    @_scripted
    def audit_many(self, now: datetime, entries: Sequence[tuple[str, str, Mapping[str, Any]]]) -> None:
        rows = [{"action": action, "reason": reason, "at": now, "expire_at": now + RETENTION,
                 "deployment_id": self.deployment_id, **fields} for action, reason, fields in entries]
        with self._lock:
            self._audit.extend(rows)

    def audit_entries(self, instance_id: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        with self._lock:
            found = [dict(e) for e in self._audit
                     if e["deployment_id"] == self.deployment_id
                     and (not instance_id or e.get("instance_id") == instance_id)]
            newest = sorted(found, key=lambda e: e["at"])[-limit:] if limit > 0 else []
            self.reads += len(newest)
        return newest

    @_scripted
    def put_budget(self, data: dict[str, Any]) -> None:
        with self._lock:
            self._budget[self.deployment_id] = dict(data)

    @_scripted
    def get_budget(self) -> dict[str, Any] | None:
        with self._lock:
            self.reads += 1
            data = self._budget.get(self.deployment_id)
        return dict(data) if data is not None else None

    # ---------------------------------------------------------------- the price cache
    @_scripted
    def cached_price(self, machine: str, region: str) -> CachedPrice | None:
        with self._lock:
            self.reads += 1
            return self._db.prices.get((machine, region))

    @_scripted
    def put_price(self, price: CachedPrice) -> None:
        with self._lock:
            self._db.prices[(price.machine, price.region)] = price

    # ---------------------------------------------------------------- snapshots
    @_scripted
    def put_snapshot(self, snap: SnapshotRecord) -> None:
        with self._lock:
            self._snapshots[snap.snapshot_id] = snap.model_dump(mode="python")

    @_scripted
    def get_snapshot(self, snapshot_id: str) -> SnapshotRecord | None:
        with self._lock:
            self.reads += 1
            doc = self._snapshots.get(snapshot_id)
        rec = SnapshotRecord.model_validate(doc) if doc is not None else None
        return rec if rec is not None and rec.deployment_id == self.deployment_id else None

    @_scripted
    def snapshots_of_lease(self, lease_id: str) -> list[SnapshotRecord]:
        with self._lock:
            found = [SnapshotRecord.model_validate(d) for d in self._snapshots.values() if d["lease_id"] == lease_id]
            self.reads += len(found)
        return sorted((s for s in found if s.deployment_id == self.deployment_id),
                      key=lambda s: (s.created_at, s.snapshot_id))

    @_scripted
    def uploads_started_before(self, cutoff: datetime) -> list[SnapshotRecord]:
        with self._lock:
            found = [SnapshotRecord.model_validate(d) for d in self._snapshots.values()
                     if d["state"] == str(SnapshotState.UPLOADING)]
            self.reads += len(found)
        return sorted((s for s in found if s.deployment_id == self.deployment_id and s.created_at < cutoff),
                      key=lambda s: (s.created_at, s.snapshot_id))

    # ---------------------------------------------------------------- hibernation, forced restores
    @_scripted
    def hibernation_pending(self) -> list[InstanceRecord]:
        return self._records(lambda r: self._ours(r) and r.state in LIVE and r.snapshot_request is not None
                             and r.snapshot_request.reason == "hibernate")

    @_scripted
    def put_hibernation(self, hibernation: Hibernation) -> None:
        with self._lock:
            self._hibernations[hibernation.lease_id] = hibernation.model_dump(mode="python")

    @_scripted
    def get_hibernation(self, lease_id: str) -> Hibernation | None:
        with self._lock:
            self.reads += 1
            doc = self._hibernations.get(lease_id)
        found = Hibernation.model_validate(doc) if doc is not None else None
        return found if found is not None and found.deployment_id == self.deployment_id else None

    @_scripted
    def hibernations(self) -> list[Hibernation]:
        with self._lock:
            found = [Hibernation.model_validate(d) for d in self._hibernations.values()
                     if d["deployment_id"] == self.deployment_id]
            self.reads += len(found)
        return sorted(found, key=lambda h: h.lease_id)

    @_scripted
    def delete_hibernation(self, lease_id: str) -> None:
        with self._lock:
            self._hibernations.pop(lease_id, None)

    @_scripted
    def put_restore_pin(self, pin: RestorePin) -> None:
        with self._lock:
            self._pins[pin.lease_id] = pin.model_dump(mode="python")

    @_scripted
    def get_restore_pin(self, lease_id: str) -> RestorePin | None:
        with self._lock:
            self.reads += 1
            doc = self._pins.get(lease_id)
        found = RestorePin.model_validate(doc) if doc is not None else None
        return found if found is not None and found.deployment_id == self.deployment_id else None

    @_scripted
    def delete_restore_pin(self, lease_id: str) -> None:
        with self._lock:
            self._pins.pop(lease_id, None)


if TYPE_CHECKING:  # mypy (strict, over tests/support) holds it to the protocol the services use
    _conforms: Store = MemoryStore()
