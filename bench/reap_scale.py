"""A reap pass over 100 / 1,000 / 10,000 tracked instances of which 1 % are due.

Records are seeded straight into the Firestore emulator (batched writes, 500 per commit) under a
deployment id of their own, so the stack's scheduled reaper (deployment ``default``) never touches
them. The reap runs against the real Compute and VAST fakes, with a fixed ``now``. Baseline in the
same run: a naive reap that reads every live record (``FirestoreStore.live_instances()``) and decides over all.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from google.cloud.firestore_v1.base_query import FieldFilter

from bench.harness import Harness, log
from bench.stats import ratio, summary
from spotleash.adapters.firestore import FirestoreStore
from spotleash.decide.reap import ReapConfig, ReapPlan, decide_reaps
from spotleash.model import InstanceRecord, Lease, State, new_record, transition
from spotleash.providers.base import Inventory
from spotleash.services.context import Context
from spotleash.services.reap import configured_providers, inventory, run_reap
from spotleash.wire.events import ReapTick

BATCH = 500
PER_LEASE = 10


def _records(dep: str, n: int, now: datetime) -> tuple[list[InstanceRecord], list[Lease]]:
    """n RUNNING records with fresh heartbeats, 1 % due (half past their deadline, half silent).

    A silent record's lease is one of its own that its agent released: a silent instance of a live lease
    is replaced (a failover launch, whose launch facts read every live record: 10,000 here, beyond any
    global limit), which is launch work, not reap work.
    """
    recs: list[InstanceRecord] = []
    leases: dict[str, Lease] = {}
    born = now - timedelta(minutes=10)
    for i in range(n):
        iid = f"{dep}-{i:05d}"
        lid = f"{dep}-l{i // PER_LEASE:04d}"
        leases.setdefault(lid, Lease(lease_id=lid, deployment_id=dep, expires_at=now + timedelta(hours=1),
                                     renewed_at=now))
        r = new_record(instance_id=iid, lease_id=lid, deployment_id=dep, event_id=f"e-{iid}", provider="gce",
                       now=born, max_runtime_s=3 * 3600, ram_gb=8.0, components=["vision"])
        r = transition(r, State.PROVISIONING, born)
        r = transition(r, State.RUNNING, born + timedelta(seconds=30), provider_id=iid, zone="us-central1-a",
                       price_per_hour=0.03, last_heartbeat=now - timedelta(seconds=1))
        if i % 100 == 0:  # due
            if (i // 100) % 2 == 0:
                r = r.model_copy(update={"deadline": now - timedelta(minutes=1)})
            else:
                gone = f"{dep}-gone{i:05d}"
                leases[gone] = Lease(lease_id=gone, deployment_id=dep, expires_at=now - timedelta(minutes=1),
                                     renewed_at=now - timedelta(minutes=2), released=True)
                r = r.model_copy(update={"last_heartbeat": now - timedelta(hours=1), "lease_id": gone})
        recs.append(r)
    return recs, list(leases.values())


def seed(store: FirestoreStore, recs: list[InstanceRecord], leases: list[Lease]) -> float:
    """Batched writes straight to the emulator; returns the seconds it took."""
    t0 = time.monotonic()
    client = store.client
    docs: list[tuple[Any, dict[str, Any]]] = []
    for r in recs:
        data = r.model_dump(mode="python")
        data["state"] = str(r.state)  # as Store writes it
        docs.append((client.collection("instances").document(r.instance_id), data))
    docs += [(client.collection("leases").document(lease.lease_id), lease.model_dump(mode="python"))
             for lease in leases]
    for start in range(0, len(docs), BATCH):
        batch = client.batch()
        for ref, data in docs[start:start + BATCH]:
            batch.set(ref, data)
        batch.commit()
    return time.monotonic() - t0


def unseed(store: FirestoreStore, dep: str) -> float:
    """Delete a seeded deployment's records and leases (batched), so the next deployment is seeded into a
    collection of the same size: the emulator scans the whole collection per query. Returns the seconds."""
    t0 = time.monotonic()
    client = store.client
    refs = [d.reference for name in ("instances", "leases")
            for d in client.collection(name).where(filter=FieldFilter("deployment_id", "==", dep)).stream()]
    for start in range(0, len(refs), BATCH):
        batch = client.batch()
        for ref in refs[start:start + BATCH]:
            batch.delete(ref)
        batch.commit()
    return time.monotonic() - t0


def naive_reap(ctx: Context, providers: list[str]) -> tuple[ReapPlan, int, float]:
    """The baseline: read every live record and every expired lease, list the providers, decide.

    The seeded records have no VMs behind them, so the listings (really made, really timed) are handed
    to decide_reaps() as unknown: otherwise every healthy record would read as "vanished".
    """
    store, now = ctx.store, ctx.now()
    reads0, t0 = store.reads, time.monotonic()
    records = store.live_instances()
    leases = {lease.lease_id: lease for lease in store.expired_leases(now)}
    listed = {name: inventory(ctx, name) for name in providers}
    budget = store.get_budget() or {}
    blind = {name: Inventory(name, False, (), "bench: seeded records have no VMs") for name in listed}
    plan = decide_reaps(records, leases, blind, now, ReapConfig.from_settings(ctx.settings),
                  budget_exceeded=bool(budget.get("stop_all")))
    return plan, store.reads - reads0, time.monotonic() - t0


def _decided(plan: ReapPlan) -> set[tuple[str | None, str]]:
    return {(d.instance_id, d.reason) for d in plan.decisions}


def _seeded(h: Harness, n: int, now: datetime) -> tuple[Context, str, int, float]:
    """A deployment of its own with ``n`` records seeded: (its context, its id, how many are due, seed seconds)."""
    dep = f"bench-reap-{n}-{uuid.uuid4().hex[:6]}"
    recs, leases = _records(dep, n, now)
    due = sum(1 for r in recs if r.deadline <= now or (r.last_heartbeat and r.last_heartbeat < now - timedelta(minutes=5)))
    seed_s = seed(h.store, recs, leases)
    settings = h.settings.model_copy(update={"deployment_id": dep, "reap_max_deletions": max(n, 100)})
    return Context(settings=settings, store=FirestoreStore(h.store.client, dep), clock=lambda: now), dep, due, seed_s


def _executed(ctx: Context, providers: list[str]) -> tuple[float, Any, int]:
    """One executed reap: (seconds, its report, due records it left not TERMINATED)."""
    t0 = time.monotonic()
    executed = run_reap(ctx, ReapTick(), providers)
    exec_s = time.monotonic() - t0
    left = [r for r in ctx.store.get_many(d.instance_id for d in executed.plan.decisions if d.instance_id).values()
            if r.state != State.TERMINATED]
    return exec_s, executed, len(left)


def reap_at_scale(h: Harness, n: int, repeats: int, executions: int = 1) -> dict[str, Any]:
    """``repeats`` dry runs beside the naive baseline, then ``executions`` executed reaps: the first on the same
    records, each further one on a fresh deployment seeded alike once the one before was removed (``unseed``):
    the emulator holds as many records for each, as for the first."""
    now = datetime.now(UTC).replace(microsecond=0)
    ctx, dep, due, seed_s = _seeded(h, n, now)
    providers = configured_providers(ctx)

    naive_t: list[float] = []
    naive_reads: list[float] = []
    smart_t: list[float] = []
    smart_reads: list[float] = []
    same = True
    for _ in range(repeats):
        plan_n, reads_n, dt_n = naive_reap(ctx, providers)
        naive_t.append(dt_n)
        naive_reads.append(reads_n)
        t0 = time.monotonic()
        rep = run_reap(ctx, ReapTick(dry_run=True), providers)
        smart_t.append(time.monotonic() - t0)
        smart_reads.append(rep.reads)
        same = same and _decided(plan_n) == _decided(rep.plan)
    exec_s, executed, left_due = _executed(ctx, providers)
    exec_samples, left_total = [exec_s], left_due
    if executions > 1:
        unseed(h.store, dep)
    for _ in range(executions - 1):
        more, more_dep, _due, _seed_s = _seeded(h, n, now)
        s, _rep, left = _executed(more, configured_providers(more))
        exec_samples.append(s)
        left_total += left
        unseed(h.store, more_dep)
    out = {
        "tracked": n, "due": due, "deployment_id": dep, "seed_s": seed_s, "providers": providers,
        "naive_s": summary(naive_t), "naive_reads": summary(naive_reads),
        "dry_run_s": summary(smart_t), "dry_run_reads": summary(smart_reads),
        "decisions": len(executed.plan.decisions), "same_decisions_as_naive": same,
        "executed_s": exec_s, "executed_reads": executed.reads, "executed_done": len(executed.done),
        "executed_failed": len(executed.failed), "due_not_terminated_after": left_total,
        "executed_runs_s": summary(exec_samples), "loadavg": list(os.getloadavg()),
    }
    log.info("bench reap", tracked=n, due=due, dry_s=round(min(smart_t), 3), naive_s=round(min(naive_t), 3),
             reads=smart_reads[0], naive_reads=naive_reads[0], executed_s=round(exec_s, 3))
    return out


def reap_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for r in results:
        label = f"reap pass, {r['tracked']:,} tracked / {r['due']} due"
        st, nt, sr, nr = r["dry_run_s"], r["naive_s"], r["dry_run_reads"], r["naive_reads"]
        rows.append({"key": f"reap_{r['tracked']}_time", "metric": f"{label}: gather + decide (dry run)", "unit": "s",
                     "n": st["n"], "median": st["median"], "p99": st["p99"], "max": st["max"],
                     "baseline_name": "naive: read all live", "baseline": nt["median"],
                     "ratio": ratio(st["median"], nt["median"]), "target": None, "within_target": None})
        rows.append({"key": f"reap_{r['tracked']}_reads", "metric": f"{label}: Firestore documents read",
                     "unit": "reads", "n": sr["n"], "median": sr["median"], "p99": None, "max": sr["max"],
                     "baseline_name": "naive: read all live", "baseline": nr["median"],
                     "ratio": ratio(sr["median"], nr["median"]), "target": None, "within_target": None})
        big = r["tracked"] >= 10_000
        ex = r.get("executed_runs_s") or {"n": 1, "median": r["executed_s"], "max": r["executed_s"]}
        rows.append({"key": f"reap_{r['tracked']}_executed", "metric": f"{label}: executed, deletions confirmed",
                     "unit": "s", "n": ex["n"], "median": ex["median"], "p99": None, "max": ex["max"],
                     "baseline_name": None, "baseline": None, "ratio": None,
                     "target": "< 5 s" if big else None, "within_target": (ex["median"] < 5) if big else None})
    return rows
