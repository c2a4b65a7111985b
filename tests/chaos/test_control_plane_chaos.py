"""The control plane itself under faults: functions killed mid-call, Firestore restarted, odd deliveries,
provider errors in bursts, preemption, hung VMs, deadlines and an exhausted budget."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import psutil
import pytest
from tests.chaos.conftest import HB_TIMEOUT, PENDING_BOUND, REAP_BOUND, SEEDS, Chaos, new_lease, observed

from spotleash.decide.reap import RETRY_DELETE_AFTER_S
from spotleash.model import ENDED, State
from spotleash.polling import wait_until
from spotleash.wire.events import LeaseEvent, ReleaseEvent

pytestmark = [pytest.mark.chaos]


def _lease_vms(chaos: Chaos, lid: str) -> list[dict[str, object]]:
    return [v for v in chaos.vms() if v["labels"].get("spotleash-lease") == lid]


# ------------------------------------------------------------------ functions killed mid-call
@pytest.mark.parametrize("seed", SEEDS)
def test_on_demand_killed_between_create_and_record(chaos: Chaos, seed: int) -> None:
    """The insert is slow (latency in the fake); on_demand's process group dies while it waits, after
    the intent is written and before the VM is recorded; it is restarted. The VM is created anyway
    (the fake finishes the insert), carrying our labels: redelivery resumes it or the reaper deletes it."""
    latency = 5.0 + random.Random(seed).uniform(0, 2)
    chaos.compute("POST", "faults", operation="instances.insert", count=1, latency_s=latency)
    lid = new_lease("odkill")
    with observed(chaos) as obs:
        with chaos.lease_kept(lid):
            chaos.demand(lid)
            # The fault is taken when the insert arrives: from then on the fake sits on the request.
            wait_until(lambda: chaos.faults_left() == 0, timeout_s=30, interval_s=0.05, what="the slow insert")
            assert [r for r in chaos.records_of(lid) if r.state == State.PROVISIONING and not r.provider_id]
            t0 = time.monotonic()
            try:
                chaos.cs.kill("on_demand")
            finally:
                chaos.cs.restart("on_demand")
        wait_until(lambda: _lease_vms(chaos, lid) or chaos.records_of(lid)[0].provider_id, timeout_s=latency + 15,
                   what="the VM the dead launcher asked for")
        # Nobody renews the lease any more: whatever the redelivery did, the reaper must end it all.
        chaos.verdict("on_demand killed between create and record", obs, [lid], t_fault=t0,
                      bound_s=PENDING_BOUND + 20, min_seen=1)


@pytest.mark.parametrize("seed", SEEDS)
def test_on_reap_killed_mid_reap(chaos: Chaos, seed: int) -> None:
    """on_reap dies while the fake sits on its delete; it is restarted. The record stays TERMINATING (the
    VM's delete completes without its killed caller): the reaper steps in once that delete has stalled
    RETRY_DELETE_AFTER_S. The decision must be the reaper's alone: a lease left to expire is caught first
    by the instance's own heartbeat (on_heartbeat deletes an instance whose lease is gone, within a
    heartbeat interval), so the lease is kept and the record's deadline passes instead (``max_runtime``,
    which only the reaper decides)."""
    lid = new_lease("reapkill")
    with observed(chaos) as obs:
        with chaos.lease_kept(lid):
            chaos.demand(lid)
            rec = chaos.wait_ready(lid)
            # Make the reaper's delete slow, and kill on_reap while the fake sits on it.
            chaos.compute("POST", "faults", operation="instances.delete", count=1,
                          latency_s=4.0 + random.Random(seed).uniform(0, 2))
            chaos.store.update(rec.instance_id, lambda r: r.model_copy(update={"deadline": datetime.now(UTC)}))
            decision = wait_until(lambda: [e for e in chaos.audit(rec.instance_id) if e["action"] == "reap_decision"],
                                  timeout_s=REAP_BOUND, interval_s=0.1, what="the reap decision")[0]
            assert decision["reason"] == "max_runtime", decision
            # The fault is taken when the delete arrives: from then on the fake sits on it.
            wait_until(lambda: chaos.faults_left() == 0, timeout_s=30, interval_s=0.05, what="the slow delete")
            t0 = time.monotonic()
            try:
                chaos.cs.kill("on_reap")
            finally:
                chaos.cs.restart("on_reap")
        assert chaos.store.get(rec.instance_id).state == State.TERMINATING  # type: ignore[union-attr]
        chaos.verdict("on_reap killed mid-reap", obs, [lid], t_fault=t0, bound_s=RETRY_DELETE_AFTER_S + REAP_BOUND + 30,
                      min_seen=1)
    assert chaos.store.get(rec.instance_id).reason == "max_runtime"  # type: ignore[union-attr]


# ------------------------------------------------------------------ deliveries
@pytest.mark.parametrize("seed", SEEDS)
def test_duplicate_late_and_out_of_order_deliveries(chaos: Chaos, seed: int) -> None:
    rng = random.Random(seed)
    dup, early, stale = new_lease("dup"), new_lease("early"), new_lease("stale")
    with observed(chaos) as obs:
        # The same demand N times, some straight to the function at once (concurrent redeliveries).
        with chaos.lease_kept(dup):
            event = chaos.demand(dup)
            for _ in range(rng.randint(3, 6)):
                chaos.publish(event)
            # Concurrent copies may be nacked (5xx: Firestore transaction contention) and then redelivered;
            # what matters is one record and one VM.
            codes = [chaos.push("on_demand", "demand", event.to_bytes()) for _ in range(2)]
            assert all(c < 300 or c >= 500 for c in codes), codes
            rec = chaos.wait_ready(dup)
            time.sleep(2)
            assert len(chaos.records_of(dup)) == 1 and len(_lease_vms(chaos, dup)) == 1
            # A release before its demand: the demand arrives late and must not launch.
            chaos.renew(early)
            chaos.release(early)
            wait_until(lambda: (lease := chaos.store.get_lease(early)) and lease.released, timeout_s=60,
                       what="the early release")
            chaos.demand(early)
            refused = wait_until(lambda: chaos.records_of(early), timeout_s=60, what="the late demand's record")[0]
            assert refused.state == State.FAILED and refused.reason, refused
            # A renewal older than a release must not revive the lease.
            chaos.renew(stale)
            release = ReleaseEvent(lease_id=stale, reason="chaos release")
            chaos.publish(release)
            wait_until(lambda: (lease := chaos.store.get_lease(stale)) and lease.released, timeout_s=60,
                       what="the release")
            old = LeaseEvent(lease_id=stale, ttl_s=600, holder="late",
                             created_at=release.created_at - timedelta(seconds=5))
            chaos.publish(old)
            time.sleep(2)
            lease = chaos.store.get_lease(stale)
            assert lease is not None and lease.released, "an old renewal revived a released lease"
            chaos.demand(stale)
            late = wait_until(lambda: chaos.records_of(stale), timeout_s=60, what="the stale lease's demand")[0]
            assert late.state == State.FAILED, late
            chaos.release(dup)
            t0 = time.monotonic()
        chaos.verdict("duplicate, late, out-of-order deliveries", obs, [dup, early, stale], t_fault=t0,
                      bound_s=REAP_BOUND, min_seen=1)
    assert chaos.store.get(rec.instance_id).reason.startswith("release")  # type: ignore[union-attr]


RACE_PAIRS = 12


@pytest.mark.parametrize("seed", SEEDS)
def test_release_and_first_renewal_at_the_same_instant(chaos: Chaos, seed: int) -> None:
    """An agent's first renewal and its release, sent in that order, reach on_lease and on_release at the
    same instant (two topics, two push subscriptions: nothing orders them). Whatever the interleaving,
    the release must stand: a renewal older than the release never reopens the lease.
    Pushed straight to the functions, each pair released together; a 5xx is pushed again, as Pub/Sub does."""
    rng = random.Random(seed)
    leases = [new_lease("race") for _ in range(RACE_PAIRS)]

    def deliver(function: str, kind: str, data: bytes) -> int:
        for _ in range(10):  # Pub/Sub redelivers a nacked push; the function answers 2xx once it is handled
            code = chaos.push(function, kind, data)
            if code < 500:
                return code
            time.sleep(0.5)
        return code

    def pair(lid: str) -> list[int]:
        renewal = LeaseEvent(lease_id=lid, ttl_s=60, holder="race")
        release = ReleaseEvent(lease_id=lid, reason="chaos release")
        gate = threading.Barrier(2)

        def send(function: str, kind: str, data: bytes) -> int:
            gate.wait(timeout=10)
            time.sleep(rng.uniform(0, 0.02))
            return deliver(function, kind, data)

        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = [pool.submit(send, "on_lease", "lease", renewal.to_bytes()),
                       pool.submit(send, "on_release", "release", release.to_bytes())]
            return [f.result() for f in futures]

    with observed(chaos) as obs:
        t0 = time.monotonic()
        codes = [pair(lid) for lid in leases]
        assert all(c < 300 for cs in codes for c in cs), codes
        reopened = [lid for lid in leases if not ((lease := chaos.store.get_lease(lid)) and lease.released)]
        assert not reopened, f"{len(reopened)}/{len(leases)} releases lost to a renewal handled at the same time"
        chaos.verdict("release and first renewal at the same instant", obs, leases, t_fault=t0, bound_s=30,
                      note=f"{RACE_PAIRS} renewal/release pairs per run, pushed together")
    assert not obs.seen


# ------------------------------------------------------------------ Firestore restarted
@pytest.mark.parametrize("seed", SEEDS)
def test_firestore_restarted_mid_run(chaos: Chaos, seed: int) -> None:
    """The emulator keeps its data in memory: a restart loses every record. The orphan sweep (list by
    label, delete what has no record) must still delete every VM of ours, and audit why."""
    lids = [new_lease("fs") for _ in range(1 + seed % 2)]
    with observed(chaos) as obs:
        for lid in lids:
            # One renewal, long enough for both VMs to get READY one after the other (the default 6 s TTL
            # ran out before a loaded machine's second VM sent its first heartbeat, which then rightly
            # deleted it as its lease's). After the restart the lease is gone with every record anyway.
            chaos.renew(lid, ttl_s=120)
            chaos.demand(lid)
        for lid in lids:
            chaos.wait_ready(lid)
        t0 = time.monotonic()
        chaos.cs.restart("firestore")
        assert all(not chaos.records_of(lid) for lid in lids), "the emulator was expected to start empty"
        chaos.verdict("Firestore emulator restarted", obs, lids, t_fault=t0, bound_s=REAP_BOUND + 15,
                      lost_records_ok=True, min_seen=len(lids),
                      note="records lost with the in-memory emulator; every VM deleted by the orphan sweep "
                           "and audited as reap/orphan")


# ------------------------------------------------------------------ provider errors in bursts
def _fault_count(rng: random.Random, code: int | None) -> int:
    """1-2 of each error (the provider retries 5 times: 4 errors at most, then the slow answer), and one slow
    answer: a slow call succeeds, so a second slow fault on the same operation is never taken."""
    n = rng.randint(1, 2)
    return n if code is not None else 1


@pytest.mark.parametrize("seed", SEEDS)
def test_compute_429_503_and_timeouts_during_launch_and_delete(chaos: Chaos, seed: int) -> None:
    rng = random.Random(seed)
    lid = new_lease("gceerr")
    codes = [(429, "rateLimitExceeded"), (503, "backendError"), (None, "slow")]
    with observed(chaos) as obs:
        with chaos.lease_kept(lid):
            # Errors first, the slow answer last and once: a slow insert succeeds, so nothing inserts again
            # and any fault queued after it (or a second slow one) would never fire.
            for code, reason in [*rng.sample(codes[:2], k=2), codes[2]]:
                chaos.compute("POST", "faults", operation="instances.insert", count=_fault_count(rng, code),
                              status=code, reason=reason, latency_s=3.0 if code is None else 0.0)
            chaos.compute("POST", "faults", operation="*", count=rng.randint(2, 4), status=503,
                          reason="backendError")
            chaos.demand(lid)
            rec = chaos.wait_ready(lid, timeout_s=90)
            chaos.wait_faults_fired("every launch fault to fire")
            for code, reason in [*rng.sample(codes[:2], k=2), codes[2]]:  # likewise: the slow delete succeeds
                chaos.compute("POST", "faults", operation="instances.delete", count=_fault_count(rng, code),
                              status=code, reason=reason, latency_s=3.0 if code is None else 0.0)
            chaos.compute("POST", "faults", operation="*", count=rng.randint(2, 4), status=429,
                          reason="rateLimitExceeded")
            t0 = time.monotonic()
            chaos.release(lid)
            chaos.verdict("Compute 429/503/timeouts at launch and delete", obs, [lid], t_fault=t0,
                          bound_s=REAP_BOUND + 30, min_seen=1)
            chaos.wait_faults_fired("every delete fault to fire")
    assert chaos.store.get(rec.instance_id).state == State.TERMINATED  # type: ignore[union-attr]


# ------------------------------------------------------------------ GCE preemption, hung VM, deadline
@pytest.mark.parametrize("seed", SEEDS)
def test_gce_preemption(chaos: Chaos, seed: int) -> None:
    lid = new_lease("preempt")
    with observed(chaos) as obs:
        with chaos.lease_kept(lid):
            chaos.demand(lid)
            old = chaos.wait_ready(lid)
            time.sleep(random.Random(seed).uniform(0, 1))
            t0 = time.monotonic()
            chaos.compute("POST", f"instances/{old.zone}/{old.provider_id}/preempt")
            chaos.wait_gone(old, timeout_s=60)
            new = wait_until(lambda: [r for r in chaos.records_of(lid) if r.replaces == old.instance_id
                                      and r.state == State.READY], timeout_s=60, what="the replacement")[0]
            chaos.release(lid)
        chaos.verdict("GCE preemption", obs, [lid], t_fault=t0, bound_s=120, min_seen=2)
    assert chaos.store.get(old.instance_id).reason == "preempted"  # type: ignore[union-attr]
    assert chaos.store.get(new.instance_id).state in ENDED  # type: ignore[union-attr]


@pytest.mark.parametrize("seed", SEEDS)
def test_instance_agent_hangs(chaos: Chaos, seed: int) -> None:
    lid = new_lease("hang")
    with observed(chaos) as obs:
        with chaos.lease_kept(lid):
            chaos.demand(lid)
            rec = chaos.wait_ready(lid)
            pid = int(chaos.vm(rec.provider_id or "")["pid"])  # type: ignore[index]
            time.sleep(random.Random(seed).uniform(0, 1))
            t0 = time.monotonic()
            os.killpg(os.getpgid(pid), signal.SIGSTOP)
            try:
                # The agent still wants the capacity: the silent VM is deleted and replaced.
                chaos.wait_gone(rec, timeout_s=HB_TIMEOUT + REAP_BOUND)
                new = wait_until(lambda: [r for r in chaos.records_of(lid) if r.replaces == rec.instance_id
                                          and r.state == State.READY], timeout_s=60, what="the replacement")[0]
                chaos.release(lid)
                chaos.verdict("instance agent hangs (SIGSTOP)", obs, [lid], t_fault=t0,
                              bound_s=HB_TIMEOUT + REAP_BOUND + 60, min_seen=2)
            finally:
                if psutil.pid_exists(pid):
                    os.killpg(os.getpgid(pid), signal.SIGCONT)
    assert chaos.store.get(rec.instance_id).reason == "heartbeat_lost"  # type: ignore[union-attr]
    assert chaos.store.get(new.instance_id).state in ENDED  # type: ignore[union-attr]


@pytest.mark.parametrize("seed", SEEDS)
def test_deadline_hit_mid_launch(chaos: Chaos, seed: int) -> None:
    chaos.compute("POST", "config", boot_delay_s=10.0 + seed)
    lid = new_lease("deadline")
    with observed(chaos) as obs:
        with chaos.lease_kept(lid):
            chaos.demand(lid)
            rec = wait_until(lambda: [r for r in chaos.records_of(lid) if r.state == State.PROVISIONING],
                             timeout_s=30, interval_s=0.1, what="the launch")[0]
            wait_until(lambda: _lease_vms(chaos, lid), timeout_s=30, interval_s=0.1, what="the booting VM")
            t0 = time.monotonic()
            chaos.store.update(rec.instance_id, lambda r: r.model_copy(update={"deadline": datetime.now(UTC)}))
            chaos.verdict("deadline hit mid-launch", obs, [lid], t_fault=t0, bound_s=REAP_BOUND + 15, min_seen=1)
    assert chaos.store.get(rec.instance_id).reason  # type: ignore[union-attr]


# ------------------------------------------------------------------ budget
@pytest.mark.parametrize("seed", SEEDS)
def test_budget_exhausted_mid_run(chaos: Chaos, seed: int) -> None:
    lid = new_lease("budget")
    alert = {"budgetDisplayName": "spotleash", "costAmount": 100.0 + 10 * (seed + 1), "budgetAmount": 100.0,
             "alertThresholdExceeded": 1.0, "costIntervalStart": "2026-11-01T00:00:00Z", "currencyCode": "USD"}
    try:
        with observed(chaos) as obs:
            with chaos.lease_kept(lid):
                chaos.demand(lid)
                rec = chaos.wait_ready(lid)
                t0 = time.monotonic()
                chaos.publish_raw("budget", json.dumps(alert).encode())
                chaos.verdict("budget exhausted mid-run", obs, [lid], t_fault=t0, bound_s=REAP_BOUND, min_seen=1)
                chaos.demand(lid)  # refused now
                refused = wait_until(lambda: [r for r in chaos.records_of(lid) if r.instance_id != rec.instance_id],
                                     timeout_s=30, what="the refused demand")[0]
                assert refused.state == State.FAILED and (refused.reason or "").startswith("budget_exceeded")
                assert not _lease_vms(chaos, lid)
    finally:
        chaos.store.put_budget({"exceeded": False, "stop_all": False, "at": datetime.now(UTC)})
    assert chaos.store.get(rec.instance_id).state in ENDED  # type: ignore[union-attr]
