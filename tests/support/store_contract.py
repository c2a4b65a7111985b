"""The behaviour every ``Store`` must have, as one test body run against each implementation.

    class TestMemoryStore(StoreContract):          # tests/unit/services/test_memory_store.py
        @pytest.fixture
        def make_store(self): ...                  # deployment id -> a store on one shared database

The memory store runs it in the unit tier; ``tests/emulator/test_firestore_store.py`` runs the very
same methods against ``FirestoreStore`` on Google's Firestore emulator. A difference between the two
fails one of them, which is what keeps the in-memory store honest.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import pytest

from spotleash.adapters.firestore import LEASES_PER_QUERY, WRITES_PER_BATCH, Audit, Store
from spotleash.model import (
    Hibernation,
    InstanceRecord,
    Lease,
    RequestedSnapshot,
    RestorePin,
    SnapshotRecord,
    SnapshotState,
    State,
    new_record,
    transition,
)
from spotleash.pricing.sheet import CachedPrice

NOW = datetime(2025, 3, 10, 12, 0, 0, 123456, tzinfo=UTC)  # microseconds: both must keep them
DEP = "dep-contract"


class ContractStore(Store, Protocol):
    """A Store plus what tests and the CLI read back; both implementations have these too."""

    def put(self, record: InstanceRecord) -> None: ...
    def all_instances(self, limit: int | None = None) -> list[InstanceRecord]: ...
    def rejected(self, limit: int = 1000) -> list[dict[str, Any]]: ...
    def audit_entries(self, instance_id: str | None = None, limit: int = 1000) -> list[dict[str, Any]]: ...
    def cached_price(self, machine: str, region: str) -> CachedPrice | None: ...
    def put_price(self, price: CachedPrice) -> None: ...


MakeStore = Callable[[str], ContractStore]


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def record(iid: str, state: State = State.REQUESTED, *, lease: str = "lease-1", dep: str = DEP,
           created: float = -600, **kw: Any) -> InstanceRecord:
    """A record created ``created`` seconds from NOW and moved to ``state``; ``kw`` overrides fields."""
    r = new_record(instance_id=iid, lease_id=lease, deployment_id=dep, event_id=f"ev-{iid}", provider="gce",
                   now=at(created), max_runtime_s=3600, ram_gb=6.0, components=["vision", "chatbots"])
    path = {State.REQUESTED: [], State.PROVISIONING: [State.PROVISIONING],
            State.RUNNING: [State.PROVISIONING, State.RUNNING], State.READY: [State.PROVISIONING, State.READY],
            State.TERMINATING: [State.PROVISIONING, State.RUNNING, State.TERMINATING],
            State.TERMINATED: [State.PROVISIONING, State.RUNNING, State.TERMINATING, State.TERMINATED],
            State.FAILED: [State.FAILED]}[state]
    for s in path:
        r = transition(r, s, at(created))
    return r.model_copy(update=kw)


def ids(records: list[InstanceRecord]) -> list[str]:
    return sorted(r.instance_id for r in records)


class StoreContract:
    """Subclasses provide ``make_store``; every store it makes shares one empty database."""

    @pytest.fixture
    def store(self, make_store: MakeStore) -> ContractStore:
        return make_store(DEP)

    # ---------------------------------------------------------------- instances
    def test_a_record_round_trips_whole(self, store: ContractStore) -> None:
        r = record("sl-a", State.READY, zone="us-central1-b", provider_id="gce-1", token_hash="ab" * 32,
                   last_heartbeat=at(-5), ssh_port=2222, preempted=True, replaces="sl-z")
        assert store.get("sl-a") is None
        assert store.create_intent(r) == (r, True)
        got = store.get("sl-a")
        assert got == r and got.state is State.READY and got.components == ["vision", "chatbots"]
        assert got.last_heartbeat == at(-5) and got.last_heartbeat.tzinfo is not None

    def test_create_intent_is_a_conditional_create(self, store: ContractStore) -> None:
        first = record("sl-a")
        second = record("sl-a", lease="lease-2")
        assert store.create_intent(first) == (first, True)
        stored, created = store.create_intent(second)
        assert not created and stored == first  # the one already there wins, and is returned
        assert store.get("sl-a") == first

    def test_update_reads_modifies_and_writes(self, store: ContractStore) -> None:
        calls: list[InstanceRecord] = []

        def provisioning(r: InstanceRecord) -> InstanceRecord:
            calls.append(r)
            return transition(r, State.PROVISIONING, at(1), attempts=r.attempts + 1)

        assert store.update("sl-none", provisioning) is None and calls == []  # missing: change never runs
        store.create_intent(record("sl-a"))
        new = store.update("sl-a", provisioning)
        assert new is not None and new.state is State.PROVISIONING and new.attempts == 1
        assert store.get("sl-a") == new
        unchanged = store.update("sl-a", lambda r: None)  # None: no write, the current record comes back
        assert unchanged == new and store.get("sl-a") == new

    def test_update_writes_its_audit_entry_from_the_record_it_leaves(self, store: ContractStore) -> None:
        """``audit=``: the entry goes in the update's own commit, made from the record as the update left it,
        whether ``change`` wrote or not, and for a missing record too (terminate's "deleted" entry)."""
        def entry(left: InstanceRecord | None) -> Audit:
            return Audit("delete", "released", at(3), {"instance_id": "sl-a",
                                                       "state": str(left.state) if left else None})

        assert store.update("sl-a", lambda r: r, audit=entry) is None  # missing: the entry says so
        store.create_intent(record("sl-a"))
        moved = store.update("sl-a", lambda r: transition(r, State.PROVISIONING, at(1)), audit=entry)
        assert moved is not None and store.get("sl-a") == moved
        store.update("sl-a", lambda r: None, audit=entry)
        got = store.audit_entries("sl-a")
        assert sorted((e["action"], e["reason"], e["state"] or "-", e["at"]) for e in got) == [
            ("delete", "released", "-", at(3)), ("delete", "released", "PROVISIONING", at(3)),
            ("delete", "released", "PROVISIONING", at(3))]  # one instant: the order among them is the store's
        assert all(e["deployment_id"] == DEP and e["expire_at"] > e["at"] for e in got)

    def test_update_many_changes_each_record_with_its_lease_and_audits_it(self, store: ContractStore) -> None:
        """One transaction for many records (the reap's deletions): each change sees its record and, with
        ``read_leases``, its lease as stored; a missing record maps to None; each audit entry goes with it."""
        store.put_lease(Lease(lease_id="lease-1", deployment_id=DEP, expires_at=at(100), renewed_at=at(0)))
        store.create_intent(record("sl-a"))
        store.create_intent(record("sl-b", lease="lease-gone"))
        seen: dict[str, Lease | None] = {}

        def change(r: InstanceRecord, lease_: Lease | None) -> InstanceRecord | None:
            seen[r.instance_id] = lease_
            return transition(r, State.PROVISIONING, at(1)) if r.instance_id == "sl-a" else None

        def entry(left: InstanceRecord | None) -> Audit:
            return Audit("reap", "max_runtime", at(2), {"instance_id": left.instance_id if left else "sl-none",
                                                        "state": str(left.state) if left else None})

        got = store.update_many({"sl-a": change, "sl-b": change, "sl-none": change}, read_leases=True,
                                audits={"sl-a": entry, "sl-none": entry})
        assert got["sl-none"] is None and got["sl-b"] == store.get("sl-b") == record("sl-b", lease="lease-gone")
        assert got["sl-a"] is not None and got["sl-a"].state is State.PROVISIONING and store.get("sl-a") == got["sl-a"]
        assert seen["sl-a"] is not None and seen["sl-a"].lease_id == "lease-1" and seen["sl-b"] is None
        assert sorted((e["instance_id"], e["state"] or "-") for e in store.audit_entries()) == [
            ("sl-a", "PROVISIONING"), ("sl-none", "-")]
        assert store.update_many({}) == {}

    def test_concurrent_updates_lose_nothing(self, store: ContractStore) -> None:
        store.create_intent(record("sl-a"))
        errors: list[BaseException] = []

        def bump() -> None:
            for _ in range(3):
                try:
                    store.update("sl-a", lambda r: r.model_copy(update={"attempts": r.attempts + 1}))
                except BaseException as e:  # noqa: BLE001 - collected and asserted below
                    errors.append(e)

        threads = [threading.Thread(target=bump) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert errors == [], [repr(e) for e in errors]
        got = store.get("sl-a")
        assert got is not None and got.attempts == 12

    def test_update_many_beside_single_updates_of_its_records_loses_nothing(self, store: ContractStore) -> None:
        """The reap's transaction of many records while other writers update some of them one at a time
        (heartbeats, a release): every change of either kind lands, none overwrites another."""
        ids = [f"sl-{i}" for i in range(6)]
        for iid in ids:
            store.create_intent(record(iid))
        errors: list[BaseException] = []

        def bump(r: InstanceRecord, _lease: Lease | None = None) -> InstanceRecord:
            return r.model_copy(update={"attempts": r.attempts + 1})

        def many() -> None:
            for _ in range(3):
                try:
                    store.update_many(dict.fromkeys(ids, bump))
                except BaseException as e:  # noqa: BLE001 - collected and asserted below
                    errors.append(e)

        def single(iid: str) -> None:
            for _ in range(3):
                try:
                    store.update(iid, bump)
                except BaseException as e:  # noqa: BLE001 - collected and asserted below
                    errors.append(e)

        threads = [threading.Thread(target=many), *(threading.Thread(target=single, args=(i,)) for i in ids[:3])]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert errors == [], [repr(e) for e in errors]
        assert {iid: r.attempts for iid, r in store.get_many(ids).items()} == {
            iid: 6 if iid in ids[:3] else 3 for iid in ids}

    def test_get_many_returns_only_what_exists(self, store: ContractStore) -> None:
        store.create_intent(record("sl-a"))
        store.create_intent(record("sl-b"))
        assert store.get_many([]) == {}
        got = store.get_many(["sl-a", "sl-b", "sl-missing", "sl-a"])
        assert sorted(got) == ["sl-a", "sl-b"] and got["sl-a"] == store.get("sl-a")

    def test_listings_see_only_this_deployment(self, store: ContractStore, make_store: MakeStore) -> None:
        other = make_store("dep-other")
        for r in (record("sl-req"), record("sl-ready", State.READY), record("sl-term", State.TERMINATING),
                  record("sl-done", State.TERMINATED), record("sl-failed", State.FAILED),
                  record("sl-other-lease", State.RUNNING, lease="lease-2")):
            store.put(r)
        other.put(record("sl-theirs", State.READY, dep="dep-other"))
        assert ids(store.live_instances()) == ["sl-other-lease", "sl-ready", "sl-req", "sl-term"]
        assert ids(store.instances_of_lease("lease-1")) == ["sl-ready", "sl-req", "sl-term"]
        assert ids(store.instances_of_lease("lease-1", live_only=False)) == [
            "sl-done", "sl-failed", "sl-ready", "sl-req", "sl-term"]
        assert "sl-theirs" not in ids(store.all_instances()) and len(store.all_instances()) == 6
        assert len(store.all_instances(limit=2)) == 2
        assert ids(other.live_instances()) == ["sl-theirs"]
        assert store.get("sl-theirs") is not None  # a read by id is not filtered (ids are global)

    def test_live_instances_of_many_leases_at_once(self, store: ContractStore, make_store: MakeStore) -> None:
        """The reap's batched read: more leases than one query takes (``LEASES_PER_QUERY``), live records only,
        this deployment's only, every lease asked for a key (one with nothing live maps to [])."""
        lease_ids = [f"lease-{i:02d}" for i in range(2 * LEASES_PER_QUERY + 1)]
        for i, lid in enumerate(lease_ids):
            store.put(record(f"sl-{i:02d}-live", State.READY if i % 2 else State.TERMINATING, lease=lid))
            store.put(record(f"sl-{i:02d}-done", State.TERMINATED, lease=lid))
        store.put(record("sl-empty-done", State.FAILED, lease="lease-empty"))
        store.put(record("sl-unasked", State.READY, lease="lease-unasked"))
        make_store("dep-other").put(record("sl-theirs", State.READY, lease="lease-00", dep="dep-other"))
        reads = store.reads
        got = store.live_instances_of_leases([*lease_ids, "lease-empty", "lease-00"])
        assert sorted(got) == sorted([*lease_ids, "lease-empty"])
        assert {lid: ids(recs) for lid, recs in got.items()} == {
            **{lid: [f"sl-{i:02d}-live"] for i, lid in enumerate(lease_ids)}, "lease-empty": []}
        # the records of those leases (ended ones too, and the other deployment's), none of another lease
        assert store.reads - reads == 2 * len(lease_ids) + 2
        assert store.live_instances_of_leases([]) == {}

    def test_instances_since_includes_its_boundary(self, store: ContractStore) -> None:
        store.put(record("sl-old", State.TERMINATED, created=-7200))
        store.put(record("sl-edge", State.FAILED, created=-3600))
        store.put(record("sl-new", State.READY, created=-10))
        assert ids(store.instances_since(at(-3600))) == ["sl-edge", "sl-new"]

    def test_billed_since_finds_what_may_have_billed_in_the_window(self, store: ContractStore,
                                                                  make_store: MakeStore) -> None:
        store.put(record("sl-gone", State.TERMINATED, created=-9000, ended_at=at(-5000)))  # ended before
        store.put(record("sl-ended-in", State.TERMINATED, created=-9000, ended_at=at(-3600)))  # at the edge
        store.put(record("sl-live-old", State.READY, created=-9000))  # created before, still billing
        store.put(record("sl-stuck", State.TERMINATING, created=-9000))
        store.put(record("sl-new", State.FAILED, created=-10))
        make_store("dep-other").put(record("sl-theirs", State.READY, dep="dep-other", created=-10))
        got = store.billed_since(at(-3600))
        assert ids(got) == ["sl-ended-in", "sl-live-old", "sl-new", "sl-stuck"]
        assert len({r.instance_id for r in got}) == len(got)  # a record matching twice is listed once

    # ---------------------------------------------------------------- the reaper's queries
    def test_past_deadline(self, store: ContractStore, make_store: MakeStore) -> None:
        store.put(record("sl-due", State.READY, deadline=at(0)))  # exactly at the deadline: due
        store.put(record("sl-due-term", State.TERMINATING, deadline=at(-1)))
        store.put(record("sl-not-yet", State.READY, deadline=at(1)))
        store.put(record("sl-ended", State.TERMINATED, deadline=at(-100)))
        make_store("dep-other").put(record("sl-theirs", State.READY, dep="dep-other", deadline=at(-100)))
        assert ids(store.past_deadline(NOW)) == ["sl-due", "sl-due-term"]

    def test_heartbeat_older_than(self, store: ContractStore) -> None:
        store.put(record("sl-silent", State.READY, last_heartbeat=at(-180)))  # at the cut-off: included
        store.put(record("sl-running", State.RUNNING, last_heartbeat=at(-500)))
        store.put(record("sl-fresh", State.READY, last_heartbeat=at(-179)))
        store.put(record("sl-never", State.RUNNING))  # no last_heartbeat: a range filter never matches it
        store.put(record("sl-term", State.TERMINATING, last_heartbeat=at(-500)))
        assert ids(store.heartbeat_older_than(at(-180))) == ["sl-running", "sl-silent"]

    def test_pending_older_than(self, store: ContractStore) -> None:
        store.put(record("sl-req", State.REQUESTED, created=-30))  # updated exactly at the cut-off
        store.put(record("sl-prov", State.PROVISIONING, created=-100))
        store.put(record("sl-term", State.TERMINATING, created=-100))
        store.put(record("sl-young", State.PROVISIONING, created=-29))
        store.put(record("sl-ready", State.READY, created=-100))
        assert ids(store.pending_older_than(at(-30))) == ["sl-prov", "sl-req", "sl-term"]

    # ---------------------------------------------------------------- leases
    def test_leases_round_trip_and_retire(self, store: ContractStore) -> None:
        lease = Lease(lease_id="lease-1", deployment_id=DEP, expires_at=at(60), renewed_at=at(-30), holder="h")
        assert store.get_lease("lease-1") is None
        store.put_lease(lease)
        assert store.get_lease("lease-1") == lease
        store.put_lease(lease.model_copy(update={"released": True}))
        got = store.get_lease("lease-1")
        assert got is not None and got.released
        store.retire_lease("lease-1")
        store.retire_lease("lease-1")  # retiring what is gone is fine
        assert store.get_lease("lease-1") is None

    def test_update_lease_creates_changes_or_leaves_alone(self, store: ContractStore) -> None:
        lease = Lease(lease_id="lease-u", deployment_id=DEP, expires_at=at(60), renewed_at=at(0), holder="h")
        assert store.update_lease("lease-u", lambda cur: None) is None  # nothing stored, nothing written
        assert store.get_lease("lease-u") is None
        assert store.update_lease("lease-u", lambda cur: lease if cur is None else None) == lease
        assert store.get_lease("lease-u") == lease
        assert store.update_lease("lease-u", lambda cur: None) == lease  # no write: what is stored
        released = store.update_lease("lease-u", lambda cur: cur.model_copy(update={"released": True})
                                      if cur is not None else None)
        assert released is not None and released.released and store.get_lease("lease-u") == released

    def test_update_lease_is_atomic(self, store: ContractStore) -> None:
        """Read-modify-writes of one lease at the same instant lose nothing (a renewal and a release handled
        together: the one written last must have seen the other)."""
        start = Lease(lease_id="lease-c", deployment_id=DEP, expires_at=at(60), renewed_at=at(0), holder="0")
        store.put_lease(start)
        gate = threading.Barrier(4)

        def bump(cur: Lease | None) -> Lease | None:
            assert cur is not None
            return cur.model_copy(update={"holder": str(int(cur.holder) + 1)})

        def worker() -> None:
            gate.wait(timeout=10)
            store.update_lease("lease-c", bump)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        got = store.get_lease("lease-c")
        assert got is not None and got.holder == "4"

    def test_update_with_lease_shows_the_change_the_records_lease(self, store: ContractStore) -> None:
        """The reaper's re-check stands on it: ``change`` sees the record's stored lease (or None), read in
        the same transaction, and what it returns is written, or nothing is."""
        lease = Lease(lease_id="lease-1", deployment_id=DEP, expires_at=at(60), renewed_at=at(0), holder="h")
        store.put_lease(lease)
        store.put(record("sl-w", State.READY))
        seen: list[Lease | None] = []

        def mark(r: InstanceRecord, current: Lease | None) -> InstanceRecord | None:
            seen.append(current)
            return r.model_copy(update={"zone": "seen"}) if current is not None else None

        after = store.update_with_lease("sl-w", mark)
        assert after is not None and after.zone == "seen" and seen == [lease]
        stored = store.get("sl-w")
        assert stored is not None and stored.zone == "seen"
        store.retire_lease("lease-1")
        assert store.update_with_lease("sl-w", mark) == stored and seen[-1] is None
        assert store.update_with_lease("sl-nobody", mark) is None

    def test_retire_lease_if_deletes_only_what_due_says_of_the_stored_lease(self, store: ContractStore) -> None:
        """The reaper's retirement of a lease stands on it: ``due`` sees the lease as stored, in the deleting
        transaction; the lease is deleted only if ``due`` says so, and what is left standing is returned."""
        stale = Lease(lease_id="lease-r", deployment_id=DEP, expires_at=at(-1), renewed_at=at(-91), holder="h")
        store.put_lease(stale)
        renewed = stale.model_copy(update={"expires_at": at(90), "renewed_at": at(0)})
        seen: list[Lease] = []

        def due(current: Lease) -> bool:
            seen.append(current)
            return current.expired(at(0))

        store.put_lease(renewed)  # the renewal lands after the caller read ``stale``
        assert store.retire_lease_if("lease-r", due) == renewed and seen == [renewed]
        assert store.get_lease("lease-r") == renewed
        store.put_lease(stale)
        assert store.retire_lease_if("lease-r", due) is None and seen[-1] == stale
        assert store.get_lease("lease-r") is None
        assert store.retire_lease_if("lease-r", due) is None and len(seen) == 2  # gone: nothing to ask

    def test_expired_leases(self, store: ContractStore, make_store: MakeStore) -> None:
        def put(lid: str, expires: float, released: bool = False, dep: str = DEP) -> None:
            target = store if dep == DEP else make_store(dep)
            target.put_lease(Lease(lease_id=lid, deployment_id=dep, expires_at=at(expires), renewed_at=at(-90),
                                   released=released))

        put("l-expired", -1)
        put("l-edge", 0)  # expires exactly now: expired
        put("l-released", 600, released=True)
        put("l-both", -10, released=True)  # matches both queries: listed once
        put("l-live", 1)
        put("l-theirs", -100, dep="dep-other")
        found = store.expired_leases(NOW)
        assert sorted(lease.lease_id for lease in found) == ["l-both", "l-edge", "l-expired", "l-released"]

    # ---------------------------------------------------------------- marks, rejects, audit, budget
    def test_mark_event_is_true_only_the_first_time(self, store: ContractStore) -> None:
        assert store.mark_event("on_demand-e1", "on_demand", NOW) is True
        assert store.mark_event("on_demand-e1", "on_demand", at(5)) is False
        assert store.mark_event("on_demand-e2", "on_demand", NOW) is True

    def test_rejected_keeps_the_reason_and_bounds_the_payload(self, store: ContractStore) -> None:
        raw = b"x" * 5000
        store.reject(source="on_demand", reason="bad_json", detail="d" * 1500, raw=raw, message_id="m-1", now=NOW)
        [got] = [r for r in store.rejected() if r["message_id"] == "m-1"]
        assert got["source"] == "on_demand" and got["reason"] == "bad_json"
        assert got["detail"] == "d" * 1000 and got["raw"] == b"x" * 4096 and got["size"] == 5000
        assert got["at"] == NOW and got["expire_at"] > NOW

    def test_audit_is_per_deployment_filtered_and_in_time_order(self, store: ContractStore,
                                                                make_store: MakeStore) -> None:
        store.audit("reap", "heartbeat_lost", at(2), instance_id="sl-a", detail="late")
        store.audit("launch_intent", "threshold", at(0), instance_id="sl-a", lease_id="lease-1")
        store.audit("release", "released", at(1), lease_id="lease-1", instances=["sl-a"])
        make_store("dep-other").audit("reap", "orphan", at(0), instance_id="sl-a")
        everything = store.audit_entries()
        assert [e["action"] for e in everything] == ["launch_intent", "release", "reap"]
        assert all(e["deployment_id"] == DEP and e["expire_at"] > e["at"] for e in everything)
        mine = store.audit_entries("sl-a")
        assert [(e["action"], e["reason"]) for e in mine] == [("launch_intent", "threshold"),
                                                             ("reap", "heartbeat_lost")]
        assert mine[1]["detail"] == "late" and everything[1]["instances"] == ["sl-a"]

    def test_audit_many_writes_every_entry_as_audit_would(self, store: ContractStore, make_store: MakeStore) -> None:
        """The reap's decisions in batched writes (more than one batch holds): each entry as ``audit`` writes it."""
        n = WRITES_PER_BATCH + 3
        store.audit_many(at(5), [("reap_decision", "orphan" if i % 2 else "max_runtime",
                                  {"instance_id": f"sl-{i:04d}", "dry_run": False}) for i in range(n)])
        store.audit_many(at(6), [])
        make_store("dep-other").audit_many(at(5), [("reap_decision", "orphan", {"instance_id": "sl-0001"})])
        got = store.audit_entries(limit=2 * n)
        assert len(got) == n and sorted(e["instance_id"] for e in got) == [f"sl-{i:04d}" for i in range(n)]
        assert all(e["action"] == "reap_decision" and e["at"] == at(5) and e["expire_at"] > e["at"]
                   and e["deployment_id"] == DEP and e["dry_run"] is False for e in got)
        assert [(e["reason"]) for e in store.audit_entries("sl-0001")] == ["orphan"]

    def test_audit_entries_are_the_newest_up_to_the_limit_oldest_first(self, store: ContractStore) -> None:
        for i in (3, 11, 0, 7, 9, 1, 10, 5, 2, 8, 4, 6):  # written out of time order
            store.audit("reap", f"r{i}", at(i), instance_id="sl-a" if i % 2 else "sl-b")
        before = store.reads
        assert [e["reason"] for e in store.audit_entries(limit=5)] == ["r7", "r8", "r9", "r10", "r11"]
        assert store.reads - before == 5  # the limit is in the query: five documents read, not twelve
        assert [e["reason"] for e in store.audit_entries("sl-a", limit=2)] == ["r9", "r11"]
        assert len(store.audit_entries()) == 12

    def test_cached_prices_round_trip_per_machine_and_region(self, store: ContractStore,
                                                             make_store: MakeStore) -> None:
        price = CachedPrice(machine="e2-highmem-4", region="europe-west4", usd_per_hour=0.0593, fetched_at=NOW)
        assert store.cached_price("e2-highmem-4", "europe-west4") is None
        store.put_price(price)
        assert store.cached_price("e2-highmem-4", "europe-west4") == price
        assert store.cached_price("e2-highmem-4", "us-central1") is None
        assert make_store("dep-other").cached_price("e2-highmem-4", "europe-west4") == price  # prices are the project's
        newer = price.model_copy(update={"usd_per_hour": 0.06, "fetched_at": at(86400)})
        store.put_price(newer)
        assert store.cached_price("e2-highmem-4", "europe-west4") == newer

    def test_budget_is_per_deployment(self, store: ContractStore, make_store: MakeStore) -> None:
        assert store.get_budget() is None
        store.put_budget({"exceeded": True, "stop_all": False, "cost": 51.5, "at": NOW})
        assert store.get_budget() == {"exceeded": True, "stop_all": False, "cost": 51.5, "at": NOW}
        assert make_store("dep-other").get_budget() is None

    def test_snapshots_round_trip_per_lease_oldest_first(self, store: ContractStore,
                                                         make_store: MakeStore) -> None:
        def snap(sid: str, lease: str, created: float, state: SnapshotState, dep: str = DEP) -> SnapshotRecord:
            return SnapshotRecord(snapshot_id=sid, lease_id=lease, instance_id="sl-a", deployment_id=dep,
                                  state=state, created_at=at(created), updated_at=at(created), parts=2,
                                  objects=[f"snapshots/{lease}/{sid}/manifest.json"], manifest_sha256="a" * 64,
                                  size_bytes=10, raw_bytes=30, files=3, verified_at=at(created + 1))

        newer = snap("s2", "lease-1", 5, SnapshotState.VERIFIED)
        store.put_snapshot(newer)
        store.put_snapshot(snap("s1", "lease-1", 0, SnapshotState.UPLOADING))
        store.put_snapshot(snap("s3", "lease-2", 1, SnapshotState.VERIFIED))
        make_store("dep-other").put_snapshot(snap("s4", "lease-1", 2, SnapshotState.VERIFIED, dep="dep-other"))
        assert store.get_snapshot("s2") == newer
        assert store.get_snapshot("nope") is None and store.get_snapshot("s4") is None
        assert [s.snapshot_id for s in store.snapshots_of_lease("lease-1")] == ["s1", "s2"]
        store.put_snapshot(snap("s5", "lease-2", 3, SnapshotState.UPLOADING))
        make_store("dep-other").put_snapshot(snap("s6", "lease-1", 0, SnapshotState.UPLOADING, dep="dep-other"))
        assert [s.snapshot_id for s in store.uploads_started_before(at(3))] == ["s1"]
        assert [s.snapshot_id for s in store.uploads_started_before(at(4))] == ["s1", "s5"]
        store.put_snapshot(newer.model_copy(update={"state": SnapshotState.CORRUPT, "reason": "sha256 mismatch"}))
        got = store.get_snapshot("s2")
        assert got is not None and got.state is SnapshotState.CORRUPT and got.reason == "sha256 mismatch"

    def test_reads_are_counted_alike(self, store: ContractStore) -> None:
        store.put(record("sl-a", State.READY, last_heartbeat=at(-500)))
        store.put(record("sl-b", State.READY, last_heartbeat=at(-500)))
        before = store.reads
        store.get("sl-a")  # 1
        store.get("sl-missing")  # 1: a miss is a read too
        store.get_many(["sl-a", "sl-b", "sl-missing"])  # 3
        store.heartbeat_older_than(at(-180))  # 2
        store.update("sl-a", lambda r: None)  # 1
        store.get_lease("nope")  # 1
        store.get_budget()  # 1
        store.audit("x", "y", NOW)  # writes are not reads
        assert store.reads - before == 10

    # ---------------------------------------------------------------- hibernation, forced restores
    def test_hibernation_pending_finds_live_records_asked_to_hibernate_only(self, store: ContractStore,
                                                                            make_store: MakeStore) -> None:
        def asked(reason: str) -> RequestedSnapshot:
            return RequestedSnapshot(request_id=f"{reason}-1", reason=reason, requested_at=at(0),
                                   by="heartbeat")

        store.create_intent(record("sl-hib", State.READY, snapshot_request=asked("hibernate"), idle_s=900.5))
        store.create_intent(record("sl-served", State.READY, snapshot_request=asked("hibernate").model_copy(
            update={"served": True})))
        store.create_intent(record("sl-demand", State.READY, snapshot_request=asked("on_demand")))
        store.create_intent(record("sl-none", State.READY))
        store.create_intent(record("sl-gone", State.TERMINATED, snapshot_request=asked("hibernate")))
        make_store("dep-other").create_intent(record("sl-other", State.READY, dep="dep-other",
                                                     snapshot_request=asked("hibernate")))
        found = store.hibernation_pending()
        assert ids(found) == ["sl-hib", "sl-served"]
        hib = next(r for r in found if r.instance_id == "sl-hib")
        assert hib.snapshot_request == asked("hibernate") and hib.idle_s == 900.5

    def test_hibernations_and_restore_pins_per_lease(self, store: ContractStore, make_store: MakeStore) -> None:
        h = Hibernation(lease_id="lease-1", deployment_id=DEP, snapshot_id="s1", instance_id="sl-a",
                        components=["vision"], snapshot_created_at=at(0), size_bytes=10, raw_bytes=30,
                        hibernated_at=at(5))
        store.put_hibernation(h)
        make_store("dep-other").put_hibernation(h.model_copy(update={"lease_id": "lease-9", "deployment_id": "dep-other"}))
        assert store.get_hibernation("lease-1") == h and store.get_hibernation("lease-2") is None
        assert store.hibernations() == [h] and store.get_hibernation("lease-9") is None
        store.delete_hibernation("lease-1")
        store.delete_hibernation("lease-1")  # deleting what is gone is no error
        assert store.get_hibernation("lease-1") is None and store.hibernations() == []

        pin = RestorePin(lease_id="lease-1", deployment_id=DEP, snapshot_id="s1", pinned_at=at(1))
        store.put_restore_pin(pin)
        assert store.get_restore_pin("lease-1") == pin and make_store("dep-other").get_restore_pin("lease-1") is None
        store.put_restore_pin(pin.model_copy(update={"snapshot_id": "s2"}))
        assert store.get_restore_pin("lease-1") == pin.model_copy(update={"snapshot_id": "s2"})
        store.delete_restore_pin("lease-1")
        assert store.get_restore_pin("lease-1") is None
