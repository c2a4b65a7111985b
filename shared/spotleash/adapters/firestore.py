"""The store: the ``Store`` protocol the services use, and ``FirestoreStore``, its Firestore implementation
(the only module that imports google.cloud.firestore). ``tests/support/memory_store.py`` implements the
same protocol in memory; ``tests/support/store_contract.py`` holds both to the same behaviour.

Collections: ``instances`` (InstanceRecord, doc id = instance_id), ``leases`` (Lease), ``events``
(dedup marks), ``rejected`` (bad input with its reason), ``audit`` (every decision and action),
``budget`` (the latest billing alert), ``snapshots`` (SnapshotRecord, doc id = snapshot_id),
``hibernations`` (Hibernation, doc id = lease_id), ``restore_pins`` (RestorePin, doc id = lease_id), ``prices``
(the Spot price cache: CachedPrice, doc id = ``machine@region``, shared by every deployment of the project).
Transactions stay short: the emulator locks pessimistically.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any, NamedTuple, Protocol, TypeVar

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter
from google.cloud.firestore_v1.field_path import FieldPath

from spotleash.adapters.google_errors import TRANSIENT_ERRORS
from spotleash.config import Settings
from spotleash.errors import Transient
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

RETENTION = timedelta(days=30)  # TTL of audit, events and rejected docs (Terraform sets the TTL policy)
# One query asks about this many leases (``lease_id in [...]``, Firestore's limit of 30 disjunctions per query).
# No ``state in LIVE`` beside it: that would count as a product (6 leases a query), and the emulator runs one
# scan of the collection per disjunction (measured: 0.07 s each at 11,000 records), so the state is filtered
# here; the ended records of those leases are read too (a released lease's few), nothing else.
LEASES_PER_QUERY = 30
PARALLEL_QUERIES = 4  # queries of one lookup in flight at once
WRITES_PER_BATCH = 500  # Firestore's limit of writes in one batch
CONTENTION_ROUNDS = 3  # rounds of the client's own 10 attempts, for a transaction under contention (``_transact``)
DOC_LOCKS = 64  # striped in-process locks: this process's writers of one document take turns (``_transact``)
_OfLease = TypeVar("_OfLease", Hibernation, RestorePin)


class Audit(NamedTuple):
    """One audit entry, written by ``Store.update`` in the commit that writes the record (``audit=``)."""

    action: str
    reason: str
    at: datetime
    fields: Mapping[str, Any]


AuditOf = Callable[[InstanceRecord | None], Audit]  # the entry, from the record as the update leaves it


def _doc(record: InstanceRecord) -> dict[str, Any]:
    data = record.model_dump(mode="python")
    data["state"] = str(record.state)
    return data


class Store(Protocol):
    """Exactly what the services (launch, release, terminate, heartbeat, reap, entry) need from storage.

    ``update`` and ``update_lease`` are each one atomic read-modify-write; their ``change`` must be a
    pure function of what is stored, because an implementation may call it again when a transaction is
    retried. Every method may raise ``Transient`` when the storage is unavailable.
    """

    reads: int  # documents read so far (the reap reports its cost with it)

    # instances
    def get(self, instance_id: str) -> InstanceRecord | None: ...
    def get_many(self, instance_ids: Iterable[str]) -> dict[str, InstanceRecord]: ...
    def create_intent(self, record: InstanceRecord) -> tuple[InstanceRecord, bool]: ...
    def update(
        self, instance_id: str, change: Callable[[InstanceRecord], InstanceRecord | None], *,
        audit: AuditOf | None = None,
    ) -> InstanceRecord | None: ...
    def update_with_lease(
        self, instance_id: str, change: Callable[[InstanceRecord, Lease | None], InstanceRecord | None]
    ) -> InstanceRecord | None: ...
    def update_many(
        self, changes: Mapping[str, Callable[[InstanceRecord, Lease | None], InstanceRecord | None]], *,
        read_leases: bool = False, audits: Mapping[str, AuditOf] | None = None,
    ) -> dict[str, InstanceRecord | None]: ...
    def live_instances(self) -> list[InstanceRecord]: ...
    def instances_of_lease(self, lease_id: str, live_only: bool = True) -> list[InstanceRecord]: ...
    def live_instances_of_leases(self, lease_ids: Iterable[str]) -> dict[str, list[InstanceRecord]]: ...
    def instances_since(self, since: datetime) -> list[InstanceRecord]: ...
    def billed_since(self, since: datetime) -> list[InstanceRecord]: ...
    # the reaper's candidate queries
    def past_deadline(self, now: datetime) -> list[InstanceRecord]: ...
    def heartbeat_older_than(self, cutoff: datetime) -> list[InstanceRecord]: ...
    def pending_older_than(self, cutoff: datetime) -> list[InstanceRecord]: ...
    # leases
    def get_lease(self, lease_id: str) -> Lease | None: ...
    def put_lease(self, lease: Lease) -> None: ...
    def update_lease(self, lease_id: str, change: Callable[[Lease | None], Lease | None]) -> Lease | None: ...
    def expired_leases(self, now: datetime) -> list[Lease]: ...
    def retire_lease(self, lease_id: str) -> None: ...
    def retire_lease_if(self, lease_id: str, due: Callable[[Lease], bool]) -> Lease | None: ...
    # dedup marks, rejected input, audit, budget
    def mark_event(self, event_id: str, kind: str, now: datetime) -> bool: ...
    def reject(self, *, source: str, reason: str, detail: str, raw: bytes, message_id: str,
               now: datetime) -> None: ...
    def audit(self, action: str, reason: str, now: datetime, **fields: Any) -> None: ...
    def audit_many(self, now: datetime, entries: Sequence[tuple[str, str, Mapping[str, Any]]]) -> None: ...
    def put_budget(self, data: dict[str, Any]) -> None: ...
    def get_budget(self) -> dict[str, Any] | None: ...
    # snapshots
    def put_snapshot(self, snap: SnapshotRecord) -> None: ...
    def get_snapshot(self, snapshot_id: str) -> SnapshotRecord | None: ...
    def snapshots_of_lease(self, lease_id: str) -> list[SnapshotRecord]: ...
    def uploads_started_before(self, cutoff: datetime) -> list[SnapshotRecord]: ...
    # hibernation and forced restores (per lease)
    def hibernation_pending(self) -> list[InstanceRecord]: ...
    def put_hibernation(self, hibernation: Hibernation) -> None: ...
    def get_hibernation(self, lease_id: str) -> Hibernation | None: ...
    def hibernations(self) -> list[Hibernation]: ...
    def delete_hibernation(self, lease_id: str) -> None: ...
    def put_restore_pin(self, pin: RestorePin) -> None: ...
    def get_restore_pin(self, lease_id: str) -> RestorePin | None: ...
    def delete_restore_pin(self, lease_id: str) -> None: ...


class FirestoreStore:
    """``Store`` on Firestore, plus what the CLI, demo and tests read (``all_instances``, ``audit_entries``...)."""

    def __init__(self, client: firestore.Client, deployment_id: str) -> None:
        self.client = client
        self.deployment_id = deployment_id
        self.reads = 0  # documents read by this Store (the benchmark reports it)
        self._reads_lock = threading.Lock()  # the reap reads from several threads at once
        self._doc_locks = [threading.Lock() for _ in range(DOC_LOCKS)]
        self._instances = client.collection("instances")
        self._leases = client.collection("leases")
        self._snapshots = client.collection("snapshots")
        self._hibernations = client.collection("hibernations")
        self._pins = client.collection("restore_pins")

    @classmethod
    def from_settings(cls, settings: Settings) -> FirestoreStore:
        return cls(firestore.Client(project=settings.project), settings.deployment_id)

    # ---------------------------------------------------------------- helpers
    def _count(self, documents: int) -> None:
        with self._reads_lock:
            self.reads += documents

    def _wrap(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except TRANSIENT_ERRORS as e:
            raise Transient(f"firestore: {e}") from e

    def _transact(self, run: Callable[[Any], None], what: str, docs: Iterable[str] = ()) -> None:
        """One transactional function, run under contention. The client retries an aborted transaction at once,
        without a pause, up to ``max_attempts``: several writers of one document (heartbeats, reaps, launches
        on a loaded machine) can use them all up together. So a few rounds, each after a jittered pause.

        Writers in this process take turns first (one lock per document, striped): two of our own threads
        would only fight over Firestore's locks, and the emulator resolves such a fight slowly: two readers of
        a document deadlock on commit until a ~2 s lock wait aborts one (measured), so 12 updates of one
        document by 4 threads took 21-82 s and, on a loaded machine, used up every round. Other processes'
        writers still contend, and the rounds serve them. ``docs``: the documents a transaction of several writes
        (``what`` otherwise); their stripes are taken in one order, so two such transactions never deadlock."""
        stripes = sorted({hash(d) % DOC_LOCKS for d in (docs or [what])})
        with contextlib.ExitStack() as held:
            for stripe in stripes:
                held.enter_context(self._doc_locks[stripe])
            self._transact_contended(run, what)

    def _transact_contended(self, run: Callable[[Any], None], what: str) -> None:
        for attempt in range(CONTENTION_ROUNDS):
            try:
                self._wrap(lambda: run(self.client.transaction(max_attempts=10)))
                return
            except ValueError as e:  # the client's "Failed to commit transaction in N attempts": contention
                if attempt == CONTENTION_ROUNDS - 1:
                    raise Transient(f"firestore transaction on {what} kept aborting: {e}") from e
                time.sleep(random.uniform(0.05, 0.25) * (attempt + 1))

    def _records(self, query: Any) -> list[InstanceRecord]:
        docs = self._wrap(lambda: list(query.stream()))
        self._count(len(docs))
        return [InstanceRecord.model_validate(d.to_dict()) for d in docs]

    # ---------------------------------------------------------------- instances
    def get(self, instance_id: str) -> InstanceRecord | None:
        snap = self._wrap(lambda: self._instances.document(instance_id).get())
        self._count(1)
        return InstanceRecord.model_validate(snap.to_dict()) if snap.exists else None

    def get_many(self, instance_ids: Iterable[str]) -> dict[str, InstanceRecord]:
        refs = [self._instances.document(i) for i in set(instance_ids)]
        if not refs:
            return {}
        snaps = self._wrap(lambda: list(self.client.get_all(refs)))
        self._count(len(snaps))
        return {s.id: InstanceRecord.model_validate(s.to_dict()) for s in snaps if s.exists}

    def create_intent(self, record: InstanceRecord) -> tuple[InstanceRecord, bool]:
        """Create the record unless it exists. Returns (the stored record, created?)."""
        ref = self._instances.document(record.instance_id)
        try:
            self._wrap(lambda: ref.create(_doc(record)))
            return record, True
        except gexc.AlreadyExists:
            existing = self.get(record.instance_id)
            assert existing is not None
            return existing, False

    def put(self, record: InstanceRecord) -> None:
        self._wrap(lambda: self._instances.document(record.instance_id).set(_doc(record)))

    def update(
        self, instance_id: str, change: Callable[[InstanceRecord], InstanceRecord | None], *,
        audit: AuditOf | None = None,
    ) -> InstanceRecord | None:
        """Read-modify-write in one transaction. ``change`` returns the new record or None (no write).
        ``audit``: an entry made from the record as the update leaves it (None: there is none), written in the
        same commit whatever ``change`` returned: one round trip, where a separate ``audit`` cost another."""
        return self._update(instance_id, lambda rec, _lease: change(rec), read_lease=False, audit=audit)

    def update_with_lease(
        self, instance_id: str, change: Callable[[InstanceRecord, Lease | None], InstanceRecord | None]
    ) -> InstanceRecord | None:
        """``update`` whose ``change`` also sees the record's lease, read in the same transaction: a lease
        written between that read and the commit makes the transaction run again, so the decision taken on
        the lease (the reaper's re-check of an expiry) holds at the instant the record is written."""
        return self._update(instance_id, change, read_lease=True)

    def _update(
        self, instance_id: str, change: Callable[[InstanceRecord, Lease | None], InstanceRecord | None], *,
        read_lease: bool, audit: AuditOf | None = None,
    ) -> InstanceRecord | None:
        ref = self._instances.document(instance_id)
        result: list[InstanceRecord | None] = [None]

        def write_audit(txn: firestore.Transaction, left: InstanceRecord | None) -> None:
            if audit is not None:
                row = audit(left)
                txn.set(self.client.collection("audit").document(),
                        self._audit_entry(row.action, row.reason, row.at, row.fields))

        @firestore.transactional
        def run(txn: firestore.Transaction) -> None:
            snap = ref.get(transaction=txn)
            self._count(1)
            if not snap.exists:
                result[0] = None
                write_audit(txn, None)
                return
            current = InstanceRecord.model_validate(snap.to_dict())
            lease = None
            if read_lease:
                lease_snap = self._leases.document(current.lease_id).get(transaction=txn)
                self._count(1)
                lease = Lease.model_validate(lease_snap.to_dict()) if lease_snap.exists else None
            new = change(current, lease)
            if new is not None and new != current:
                txn.set(ref, _doc(new))
            result[0] = new if new is not None else current
            write_audit(txn, result[0])

        self._transact(run, instance_id)
        return result[0]

    def update_many(
        self, changes: Mapping[str, Callable[[InstanceRecord, Lease | None], InstanceRecord | None]], *,
        read_leases: bool = False, audits: Mapping[str, AuditOf] | None = None,
    ) -> dict[str, InstanceRecord | None]:
        """``update_with_lease`` (``update`` without ``read_leases``: its change gets None) of many records in one
        transaction per ``WRITES_PER_BATCH // 2`` of them: the records read in one round trip, their leases in
        another, every write and audit entry (``audits``, by instance id, as ``update``'s) in one commit. Each
        record as the update left it (None: there is none). All or nothing per transaction."""
        ids = sorted(changes)
        out: dict[str, InstanceRecord | None] = {}
        per = WRITES_PER_BATCH // 2  # a record and its audit entry each
        for start in range(0, len(ids), per):
            out.update(self._update_group(ids[start:start + per], changes, read_leases, audits or {}))
        return out

    def _update_group(
        self, ids: list[str], changes: Mapping[str, Callable[[InstanceRecord, Lease | None], InstanceRecord | None]],
        read_leases: bool, audits: Mapping[str, AuditOf],
    ) -> dict[str, InstanceRecord | None]:
        result: dict[str, InstanceRecord | None] = {}
        audit = self.client.collection("audit")

        @firestore.transactional
        def run(txn: firestore.Transaction) -> None:
            result.clear()  # the transaction may run again
            snaps = list(self.client.get_all([self._instances.document(i) for i in ids], transaction=txn))
            self._count(len(snaps))
            current = {s.id: InstanceRecord.model_validate(s.to_dict()) for s in snaps if s.exists}
            leases: dict[str, Lease] = {}
            lease_ids = sorted({r.lease_id for r in current.values()}) if read_leases else []
            if lease_ids:
                found = list(self.client.get_all([self._leases.document(i) for i in lease_ids], transaction=txn))
                self._count(len(found))
                leases = {s.id: Lease.model_validate(s.to_dict()) for s in found if s.exists}
            for iid in ids:
                now_ = current.get(iid)
                left = now_
                if now_ is not None:
                    new = changes[iid](now_, leases.get(now_.lease_id))
                    if new is not None and new != now_:
                        txn.set(self._instances.document(iid), _doc(new))
                    left = new if new is not None else now_
                result[iid] = left
                if iid in audits:
                    row = audits[iid](left)
                    txn.set(audit.document(), self._audit_entry(row.action, row.reason, row.at, row.fields))

        self._transact(run, f"{len(ids)} instances", docs=ids)  # their writers in this process wait their turn
        return dict(result)

    def _live(self) -> Any:
        return self._instances.where(filter=FieldFilter("deployment_id", "==", self.deployment_id)).where(
            filter=FieldFilter("state", "in", [str(s) for s in LIVE])
        )

    def live_instances(self) -> list[InstanceRecord]:
        return self._records(self._live())

    def instances_of_lease(self, lease_id: str, live_only: bool = True) -> list[InstanceRecord]:
        q = self._instances.where(filter=FieldFilter("lease_id", "==", lease_id))
        if live_only:
            q = q.where(filter=FieldFilter("state", "in", [str(s) for s in LIVE]))
        return [r for r in self._records(q) if r.deployment_id == self.deployment_id]

    def live_instances_of_leases(self, lease_ids: Iterable[str]) -> dict[str, list[InstanceRecord]]:
        """The live instances of each lease (every lease asked for is a key; one with none maps to []), in
        queries of ``LEASES_PER_QUERY`` leases, sent side by side: the reap asks about every expired lease at
        once, and one query per lease cost it a round trip each (on the emulator, five scans each)."""
        wanted = sorted(set(lease_ids))
        # Spread over every query in flight rather than filling the first: the emulator's cost is one scan per
        # lease whatever the grouping, and scans in separate queries run side by side.
        per = max(1, min(LEASES_PER_QUERY, -(-len(wanted) // PARALLEL_QUERIES)))
        chunks = [wanted[start:start + per] for start in range(0, len(wanted), per)]

        def of(chunk: list[str]) -> list[Any]:
            query = self._instances.where(filter=FieldFilter("lease_id", "in", chunk))
            return self._wrap(lambda: list(query.stream()))  # type: ignore[no-any-return]

        with ThreadPoolExecutor(max_workers=max(1, min(len(chunks), PARALLEL_QUERIES))) as pool:
            docs = [d for batch in pool.map(of, chunks) for d in batch]
        self._count(len(docs))
        found: dict[str, list[InstanceRecord]] = {lease_id: [] for lease_id in wanted}
        for r in (InstanceRecord.model_validate(d.to_dict()) for d in docs):
            if r.deployment_id == self.deployment_id and r.state in LIVE:
                found[r.lease_id].append(r)
        return found

    def all_instances(self, limit: int | None = None, *, page_size: int = 500) -> list[InstanceRecord]:
        """The deployment's records, ended ones too, in id order: every one unless ``limit`` caps them.
        Read page by page with a cursor on the document id, so no single query grows without bound."""
        base = self._instances.where(filter=FieldFilter("deployment_id", "==", self.deployment_id)).order_by(
            FieldPath.document_id())
        out: list[InstanceRecord] = []
        last: Any = None
        while limit is None or len(out) < limit:
            want = page_size if limit is None else min(page_size, limit - len(out))
            query = (base if last is None else base.start_after(last)).limit(want)
            docs: list[Any] = self._wrap(lambda: list(query.stream()))  # noqa: B023 - called at once
            self._count(len(docs))
            out.extend(InstanceRecord.model_validate(d.to_dict()) for d in docs)
            if len(docs) < want:
                break
            last = docs[-1]
        return out

    def instances_since(self, since: datetime) -> list[InstanceRecord]:
        q = self._instances.where(filter=FieldFilter("deployment_id", "==", self.deployment_id)).where(
            filter=FieldFilter("created_at", ">=", since)
        )
        return self._records(q)

    def billed_since(self, since: datetime) -> list[InstanceRecord]:
        """Every record that may have billed at or after ``since`` (the ledger's query): the live ones,
        those that ended since, and those created since (FAILED ones included, they bill nothing)."""
        ended = self._instances.where(filter=FieldFilter("deployment_id", "==", self.deployment_id)).where(
            filter=FieldFilter("ended_at", ">=", since)
        )
        found = {r.instance_id: r for r in self.live_instances() + self._records(ended) + self.instances_since(since)}
        return [found[k] for k in sorted(found)]

    # Reap candidates: each query returns only what is due, so a reap costs what is due, not the total.
    def past_deadline(self, now: datetime) -> list[InstanceRecord]:
        return self._records(self._live().where(filter=FieldFilter("deadline", "<=", now)))

    def heartbeat_older_than(self, cutoff: datetime) -> list[InstanceRecord]:
        q = self._instances.where(filter=FieldFilter("deployment_id", "==", self.deployment_id)).where(
            filter=FieldFilter("state", "in", [str(State.RUNNING), str(State.READY)])
        ).where(filter=FieldFilter("last_heartbeat", "<=", cutoff))
        return self._records(q)

    def pending_older_than(self, cutoff: datetime) -> list[InstanceRecord]:
        q = self._instances.where(filter=FieldFilter("deployment_id", "==", self.deployment_id)).where(
            filter=FieldFilter("state", "in", [str(State.REQUESTED), str(State.PROVISIONING), str(State.TERMINATING)])
        ).where(filter=FieldFilter("updated_at", "<=", cutoff))
        return self._records(q)

    # ---------------------------------------------------------------- leases
    def get_lease(self, lease_id: str) -> Lease | None:
        snap = self._wrap(lambda: self._leases.document(lease_id).get())
        self._count(1)
        return Lease.model_validate(snap.to_dict()) if snap.exists else None

    def put_lease(self, lease: Lease) -> None:
        self._wrap(lambda: self._leases.document(lease.lease_id).set(lease.model_dump(mode="python")))

    def update_lease(self, lease_id: str, change: Callable[[Lease | None], Lease | None]) -> Lease | None:
        """Read-modify-write of one lease in one transaction (a renewal and a release handled at the
        same instant must not overwrite each other). ``change`` gets the stored lease or None and
        returns the lease to write or None (no write). Returns the lease as stored afterwards."""
        ref = self._leases.document(lease_id)
        result: list[Lease | None] = [None]

        @firestore.transactional
        def run(txn: firestore.Transaction) -> None:
            snap = ref.get(transaction=txn)
            self._count(1)
            current = Lease.model_validate(snap.to_dict()) if snap.exists else None
            new = change(current)
            if new is not None and new != current:
                txn.set(ref, new.model_dump(mode="python"))
            result[0] = new if new is not None else current

        self._transact(run, f"lease {lease_id}")
        return result[0]

    def expired_leases(self, now: datetime) -> list[Lease]:
        """Leases past expiry (or released) that still own a live instance are reaped."""
        base = self._leases.where(filter=FieldFilter("deployment_id", "==", self.deployment_id))
        docs = self._wrap(lambda: list(base.where(filter=FieldFilter("expires_at", "<=", now)).stream()))
        docs += self._wrap(lambda: list(base.where(filter=FieldFilter("released", "==", True)).stream()))
        self._count(len(docs))
        seen: dict[str, Lease] = {}
        for d in docs:
            lease = Lease.model_validate(d.to_dict())
            seen[lease.lease_id] = lease
        return list(seen.values())

    def retire_lease(self, lease_id: str) -> None:
        """A lease with nothing live left: delete it so expired leases don't pile up in every reap."""
        self._wrap(lambda: self._leases.document(lease_id).delete())

    def retire_lease_if(self, lease_id: str, due: Callable[[Lease], bool]) -> Lease | None:
        """Delete a lease only if ``due`` says so of the lease as stored, read in the same transaction: a renewal
        committed between that read and the deletion makes the transaction run again and see it (the reaper
        re-checks an expiry this way, ``reaper.lease_retirable``). Returns the lease left standing (None:
        deleted, or already gone)."""
        ref = self._leases.document(lease_id)
        result: list[Lease | None] = [None]

        @firestore.transactional
        def run(txn: firestore.Transaction) -> None:
            snap = ref.get(transaction=txn)
            self._count(1)
            current = Lease.model_validate(snap.to_dict()) if snap.exists else None
            if current is not None and due(current):
                txn.delete(ref)
                current = None
            result[0] = current

        self._transact(run, f"lease {lease_id}")
        return result[0]

    # ---------------------------------------------------------------- events, rejects, audit, budget
    def mark_event(self, event_id: str, kind: str, now: datetime) -> bool:
        """True the first time an event id is seen, False for a duplicate delivery."""
        try:
            self._wrap(lambda: self.client.collection("events").document(event_id).create(
                {"kind": kind, "at": now, "expire_at": now + RETENTION}))
            return True
        except gexc.AlreadyExists:
            return False

    def reject(self, *, source: str, reason: str, detail: str, raw: bytes, message_id: str, now: datetime) -> None:
        self._wrap(lambda: self.client.collection("rejected").add({
            "source": source, "reason": reason, "detail": detail[:1000], "message_id": message_id,
            "raw": raw[:4096], "size": len(raw), "at": now, "expire_at": now + RETENTION,
        }))

    def rejected(self, limit: int = 1000) -> list[dict[str, Any]]:
        docs = self._wrap(lambda: list(self.client.collection("rejected").limit(limit).stream()))
        return [d.to_dict() for d in docs]

    def _audit_entry(self, action: str, reason: str, now: datetime, fields: Mapping[str, Any]) -> dict[str, Any]:
        return {"action": action, "reason": reason, "at": now, "expire_at": now + RETENTION,
                "deployment_id": self.deployment_id, **fields}

    def audit(self, action: str, reason: str, now: datetime, **fields: Any) -> None:
        entry = self._audit_entry(action, reason, now, fields)
        self._wrap(lambda: self.client.collection("audit").add(entry))

    def audit_many(self, now: datetime, entries: Sequence[tuple[str, str, Mapping[str, Any]]]) -> None:
        """Several entries (action, reason, fields) at ``now``, in batched writes: a reap writes one per decision,
        and one round trip each made a large reap wait on them in turn."""
        audit = self.client.collection("audit")
        rows = [self._audit_entry(action, reason, now, fields) for action, reason, fields in entries]
        for start in range(0, len(rows), WRITES_PER_BATCH):
            batch = self.client.batch()
            for row in rows[start:start + WRITES_PER_BATCH]:
                batch.set(audit.document(), row)
            self._wrap(batch.commit)

    def audit_entries(self, instance_id: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """The newest ``limit`` entries (of one instance), oldest first."""
        q: Any = self.client.collection("audit").where(
            filter=FieldFilter("deployment_id", "==", self.deployment_id))
        if instance_id:
            q = q.where(filter=FieldFilter("instance_id", "==", instance_id))
        # the newest ``limit`` in the query itself (Terraform's audit indexes serve it), oldest first
        newest = q.order_by("at", direction=firestore.Query.DESCENDING).limit(limit)
        docs = self._wrap(lambda: list(newest.stream()))
        self._count(len(docs))
        return [d.to_dict() for d in reversed(docs)]

    def put_budget(self, data: dict[str, Any]) -> None:
        self._wrap(lambda: self.client.collection("budget").document(self.deployment_id).set(data))

    def get_budget(self) -> dict[str, Any] | None:
        snap = self._wrap(lambda: self.client.collection("budget").document(self.deployment_id).get())
        self._count(1)
        return snap.to_dict() if snap.exists else None

    def read_budget_once(self, timeout_s: float) -> dict[str, Any] | None:
        """``get_budget`` in one attempt bounded by ``timeout_s`` (``spotleash check``: an unreachable Firestore is
        an answer, not something to retry); the client's own error when it fails."""
        snap = self.client.collection("budget").document(self.deployment_id).get(retry=None, timeout=timeout_s)
        self._count(1)
        return snap.to_dict() if snap.exists else None

    # ---------------------------------------------------------------- the price cache (spotleash.pricing.book)
    def _price_doc(self, machine: str, region: str) -> Any:
        return self.client.collection("prices").document(f"{machine}@{region}".replace("/", "_"))

    def cached_price(self, machine: str, region: str) -> CachedPrice | None:
        snap = self._wrap(lambda: self._price_doc(machine, region).get())
        self._count(1)
        return CachedPrice.model_validate(snap.to_dict()) if snap.exists else None

    def put_price(self, price: CachedPrice) -> None:
        self._wrap(lambda: self._price_doc(price.machine, price.region).set(price.model_dump(mode="python")))

    # ---------------------------------------------------------------- snapshots
    def put_snapshot(self, snap: SnapshotRecord) -> None:
        data = snap.model_dump(mode="python")
        data["state"] = str(snap.state)
        self._wrap(lambda: self._snapshots.document(snap.snapshot_id).set(data))

    def get_snapshot(self, snapshot_id: str) -> SnapshotRecord | None:
        snap = self._wrap(lambda: self._snapshots.document(snapshot_id).get())
        self._count(1)
        if not snap.exists:
            return None
        rec = SnapshotRecord.model_validate(snap.to_dict())
        return rec if rec.deployment_id == self.deployment_id else None

    def snapshots_of_lease(self, lease_id: str) -> list[SnapshotRecord]:
        """Every snapshot of the lease (any state), oldest first."""
        q = self._snapshots.where(filter=FieldFilter("lease_id", "==", lease_id))
        docs = self._wrap(lambda: list(q.stream()))
        self._count(len(docs))
        found = [SnapshotRecord.model_validate(d.to_dict()) for d in docs]
        return sorted((s for s in found if s.deployment_id == self.deployment_id),
                      key=lambda s: (s.created_at, s.snapshot_id))

    def uploads_started_before(self, cutoff: datetime) -> list[SnapshotRecord]:
        """Snapshots still UPLOADING that began before ``cutoff`` (an agent killed mid-upload). One equality
        filter (no composite index); few snapshots are ever uploading at once, the rest is filtered here."""
        q = self._snapshots.where(filter=FieldFilter("state", "==", str(SnapshotState.UPLOADING)))
        docs = self._wrap(lambda: list(q.stream()))
        self._count(len(docs))
        found = [SnapshotRecord.model_validate(d.to_dict()) for d in docs]
        return sorted((s for s in found if s.deployment_id == self.deployment_id and s.created_at < cutoff),
                      key=lambda s: (s.created_at, s.snapshot_id))

    # ---------------------------------------------------------------- hibernation, forced restores
    def hibernation_pending(self) -> list[InstanceRecord]:
        """Live records whose hibernation was decided (a snapshot asked for, the destroy not done)."""
        q = self._live().where(filter=FieldFilter("snapshot_request.reason", "==", "hibernate"))
        return self._records(q)

    def put_hibernation(self, hibernation: Hibernation) -> None:
        data = hibernation.model_dump(mode="python")
        self._wrap(lambda: self._hibernations.document(hibernation.lease_id).set(data))

    def get_hibernation(self, lease_id: str) -> Hibernation | None:
        return self._get_of_lease(self._hibernations, lease_id, Hibernation)

    def hibernations(self) -> list[Hibernation]:
        q = self._hibernations.where(filter=FieldFilter("deployment_id", "==", self.deployment_id))
        docs = self._wrap(lambda: list(q.stream()))
        self._count(len(docs))
        return sorted((Hibernation.model_validate(d.to_dict()) for d in docs), key=lambda h: h.lease_id)

    def delete_hibernation(self, lease_id: str) -> None:
        self._wrap(lambda: self._hibernations.document(lease_id).delete())

    def put_restore_pin(self, pin: RestorePin) -> None:
        data = pin.model_dump(mode="python")
        self._wrap(lambda: self._pins.document(pin.lease_id).set(data))

    def get_restore_pin(self, lease_id: str) -> RestorePin | None:
        return self._get_of_lease(self._pins, lease_id, RestorePin)

    def _get_of_lease(self, collection: Any, lease_id: str, model: type[_OfLease]) -> _OfLease | None:
        """A document keyed by lease id, if it belongs to this deployment (lease ids are not per deployment)."""
        snap = self._wrap(lambda: collection.document(lease_id).get())
        self._count(1)
        found = model.model_validate(snap.to_dict()) if snap.exists else None
        return found if found is not None and found.deployment_id == self.deployment_id else None

    def delete_restore_pin(self, lease_id: str) -> None:
        self._wrap(lambda: self._pins.document(lease_id).delete())
