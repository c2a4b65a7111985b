"""on_reap: gather the facts, let reaper.decide_reaps() decide, execute, audit everything."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from spotleash.decide.failover import LOSS_REASONS
from spotleash.decide.inventory import take_inventory
from spotleash.decide.reap import (
    Decision,
    LeaseRecheck,
    ReapConfig,
    ReapPlan,
    candidate_cutoffs,
    decide_reaps,
    lease_retirable,
    recheck_lease,
)
from spotleash.errors import SpotleashError, Transient
from spotleash.log import get_logger
from spotleash.model import InstanceRecord, Lease, State
from spotleash.providers import enabled_providers
from spotleash.providers.base import Inventory
from spotleash.services.context import Context
from spotleash.services.hibernate import run_hibernations
from spotleash.services.launch import request_replacement
from spotleash.services.terminate import Outcome, Wanted, delete_at_provider, terminate, terminate_many
from spotleash.wire.events import ReapTick

log = get_logger(__name__)
# Deletions confirmed side by side. 8 → 16: the 10,000-record bench (100 due) executed in 3.60 s median (3.17–5.13)
# against 5.01 s (4.91–5.18), same machine, 2026-12-07; a reap deletes at most `reap_max_deletions` anyway.
PARALLEL_DELETES = 16
GATHER_PARALLEL = 6  # the reap's reads: three candidate queries and the providers' listings


@dataclass
class ReapReport:
    plan: ReapPlan
    dry_run: bool
    done: list[Decision] = field(default_factory=list)
    failed: list[tuple[Decision, str]] = field(default_factory=list)
    reads: int = 0
    hibernated: list[str] = field(default_factory=list)
    swept: list[str] = field(default_factory=list)  # snapshots abandoned mid-upload whose objects were deleted
    saved: list[Decision] = field(default_factory=list)  # lease_expired, but renewed before the deletion


def inventory(ctx: Context, name: str) -> Inventory:
    """A provider listing; a failure is recorded as unknown, never as empty."""
    try:
        provider = ctx.provider(name)
    except (SpotleashError, OSError) as e:
        log.warning("provider cannot be built; its listing is unknown", provider=name, detail=str(e))
        return Inventory(name, False, (), str(e))
    return take_inventory(provider, name, ctx.settings.deployment_id)


def configured_providers(ctx: Context) -> list[str]:
    return enabled_providers(ctx.settings)


def gather(ctx: Context, providers: list[str], named: str | None = None,
           ) -> tuple[list[InstanceRecord], dict[str, Lease], dict[str, Inventory]]:
    """Only records that may be due, plus those the inventories name and the one a tick ``named`` (an agent's
    router lost it; its last beat may be recent, so no cut-off would read it): cost follows what is due.
    The queries and the providers' listings are independent round trips: they are all in flight at once."""
    store, now = ctx.store, ctx.now()
    cfg = ReapConfig.from_settings(ctx.settings)
    cut = candidate_cutoffs(now, cfg)
    with ThreadPoolExecutor(max_workers=GATHER_PARALLEL) as pool:
        listings = {name: pool.submit(inventory, ctx, name) for name in providers}
        candidates = [pool.submit(store.past_deadline, now), pool.submit(store.heartbeat_older_than, cut["heartbeat"]),
                      pool.submit(store.pending_older_than, cut["pending"])]
        expired = store.expired_leases(now)
        live_of = store.live_instances_of_leases(lease.lease_id for lease in expired)  # a few queries, not one each
        found: dict[str, InstanceRecord] = {}
        for batch in candidates:
            found.update((r.instance_id, r) for r in batch.result())
        inventories = {name: listing.result() for name, listing in listings.items()}
    leases = {}
    for lease in expired:
        live = live_of.get(lease.lease_id, [])
        if live:
            leases[lease.lease_id] = lease
            found.update((r.instance_id, r) for r in live)
        elif lease_retirable(lease, now):
            _retire_if_still_due(ctx, lease)
    listed = {p.instance_id for inv in inventories.values() for p in inv.instances if p.instance_id}
    found.update(store.get_many((listed | ({named} if named else set())) - found.keys()))
    return list(found.values()), leases, inventories


def _retire_if_still_due(ctx: Context, read: Lease) -> None:
    """Delete a lease found retirable on the reap's read, if it still is in the deleting transaction: a renewal
    handled in between keeps it (audited ``lease_saved``), so the agent's next demand finds its lease."""
    kept = ctx.store.retire_lease_if(read.lease_id, lambda current: lease_retirable(current, ctx.now()))
    if kept is None:
        return
    detail = (f"retirable on the read (renewed at {read.renewed_at.isoformat()}, expires at "
              f"{read.expires_at.isoformat()}, released={read.released}); at the deletion: renewed at "
              f"{kept.renewed_at.isoformat()}, expires at {kept.expires_at.isoformat()}, released={kept.released}")
    ctx.store.audit("lease_saved", "lease_renewed", ctx.now(), lease_id=read.lease_id, detail=detail)
    log.info("reap kept a lease: it was renewed after the reap read it", lease_id=read.lease_id, detail=detail)


def _lease_gate(ctx: Context, seen: list[LeaseRecheck]) -> Callable[[Lease | None], bool]:
    """A ``lease_expired`` decision, taken on a read: the lease is read again in the transaction that moves
    the instance to TERMINATING (``reaper.recheck_lease``). A renewal committed before it spares the
    instance (audited ``reap_saved``); one committed after it finds the deletion under way. ``seen``: what the
    last run of the gate found (the transaction may run it more than once)."""
    def still_expired(lease: Lease | None) -> bool:
        seen[:] = [recheck_lease(lease, ctx.now())]
        return seen[0].expired
    return still_expired


def _spared(ctx: Context, rec: InstanceRecord, d: Decision, seen: list[LeaseRecheck],
            after: InstanceRecord | None) -> bool:
    """True (and audited ``reap_saved``) if the gate found the lease renewed and the record was left live."""
    if not (seen and not seen[0].expired and after is not None and after.live and after.state != State.TERMINATING):
        return False
    ctx.store.audit("reap_saved", "lease_renewed", ctx.now(), instance_id=rec.instance_id,
                    lease_id=rec.lease_id, provider=rec.provider, provider_id=rec.provider_id,
                    detail=f"decided lease_expired ({d.detail}); at the deletion: {seen[0].detail}")
    log.info("reap spared an instance: its lease was renewed after the reap read it",
             instance_id=rec.instance_id, lease_id=rec.lease_id, detail=seen[0].detail)
    return True


def _prepare(ctx: Context, rec: InstanceRecord, d: Decision) -> None:
    """What a decision on a record does before its deletion: a stopped box's storage billed from now, a lost
    one's replacement asked for."""
    if d.reason == "stopped_at_provider":
        seen = ctx.now()  # the ledger bills a stopped VAST box's storage only, from here on
        ctx.store.update(rec.instance_id, lambda r: r.model_copy(update={"stopped_at": seen})
                         if r.stopped_at is None and r.live else None)
    if d.reason in LOSS_REASONS and rec.state in (State.RUNNING, State.READY) and rec.replaced_by is None:
        request_replacement(ctx, rec, d.reason)  # outbid, stopped, deleted behind our back, silent


def _execute(ctx: Context, d: Decision) -> bool:
    """Carry out one decision on its own: True once done, False if a ``lease_expired`` decision's lease was
    renewed since the reap read it (nothing deleted, the save audited). The reap runs its decisions on the
    records it read together (``_execute_all``); this serves orphans and records it did not read."""
    rec = ctx.store.get(d.instance_id) if d.instance_id is not None and d.reason != "orphan" else None
    if rec is not None:
        _prepare(ctx, rec, d)
        seen: list[LeaseRecheck] = []
        gate = _lease_gate(ctx, seen) if d.reason == "lease_expired" else None
        after = terminate(ctx, rec.instance_id, d.reason, action="reap", only_if=gate)
        return not _spared(ctx, rec, d, seen, after)
    if d.provider_id is None:
        raise Transient(f"orphan without a provider id: {d}")
    if not delete_at_provider(ctx, d.provider, d.provider_id):
        raise Transient(f"{d.provider} has not confirmed the deletion of orphan {d.provider_id}")
    ctx.store.audit("reap", d.reason, ctx.now(), instance_id=d.instance_id, provider=d.provider,
                    provider_id=d.provider_id, lease_id=d.lease_id, detail=d.detail)
    return True


def _execute_all(ctx: Context, decisions: Sequence[Decision], read: Mapping[str, InstanceRecord],
                 ) -> list[tuple[Decision, bool, str | None]]:
    """Every decision: (decision, carried out, the error as text or None). The records read by the reap are
    deleted together (``terminate_many``: two transactions for all of them, the providers' deletions side by side);
    orphans and records the reap did not read, one by one beside them. One failure does not stop the others."""
    results: dict[int, tuple[bool, str | None]] = {}
    together: dict[str, tuple[int, Decision]] = {}
    alone: list[tuple[int, Decision]] = []
    for i, d in enumerate(decisions):
        iid = d.instance_id
        if d.reason != "orphan" and iid is not None and iid in read and iid not in together:
            together[iid] = (i, d)
        else:
            alone.append((i, d))

    def prepare(iid: str) -> str | None:
        try:
            _prepare(ctx, read[iid], together[iid][1])
            return None
        except SpotleashError as e:
            log.warning("reap action failed", instance_id=iid, reason=together[iid][1].reason, detail=str(e))
            return str(e)

    with ThreadPoolExecutor(max_workers=PARALLEL_DELETES) as pool:
        preparing = {iid: pool.submit(prepare, iid) for iid in together}  # first: the batch waits on them
        singles = [(i, pool.submit(_attempt, ctx, d)) for i, d in alone]
        prepared = {iid: f.result() for iid, f in preparing.items()}
        seen: dict[str, list[LeaseRecheck]] = {}
        wanted: dict[str, Wanted] = {}
        for iid, error in prepared.items():
            i, d = together[iid]
            if error is not None:
                results[i] = (False, error)
                continue
            seen[iid] = []
            wanted[iid] = Wanted(d.reason, _lease_gate(ctx, seen[iid]) if d.reason == "lease_expired" else None)
        try:
            outcomes = terminate_many(ctx, wanted, action="reap", parallel=PARALLEL_DELETES)
        except SpotleashError as e:  # a transaction of the batch failed: none of it is done; the next reap retries
            log.warning("reap deletions failed", count=len(wanted), detail=str(e))
            outcomes = {iid: Outcome(None, error=str(e)) for iid in wanted}
        for iid, o in outcomes.items():
            i, d = together[iid]
            if o.error is not None:
                log.warning("reap action failed", instance_id=iid, reason=d.reason, detail=o.error)
                results[i] = (False, o.error)
            else:
                results[i] = (not _spared(ctx, read[iid], d, seen[iid], o.started), None)
        for i, single in singles:
            results[i] = single.result()
    return [(d, *results[i]) for i, d in enumerate(decisions)]


def sweep_abandoned_uploads(ctx: Context) -> list[str]:
    """Snapshots left UPLOADING past the upload timeout (an agent killed mid-upload): their objects go, by
    the names recorded. The next verified snapshot of the lease does it too, but a lease that is released
    or hibernated may never take another. Retention of those leases runs here (``apply_retention``)."""
    if not ctx.settings.package_bucket:
        return []
    from spotleash.services.snapshots import apply_retention  # Cloud Storage's client only with a bucket

    cutoff = ctx.now() - timedelta(seconds=ctx.settings.snapshot_upload_timeout_s)
    swept: list[str] = []
    for lease_id in sorted({s.lease_id for s in ctx.store.uploads_started_before(cutoff)}):
        try:
            swept += apply_retention(ctx, lease_id)
        except SpotleashError as e:  # the next tick sweeps again
            log.warning("snapshot sweep failed", lease_id=lease_id, detail=str(e)[:300])
    return swept


def _attempt(ctx: Context, d: Decision) -> tuple[bool, str | None]:
    """Execute one decision: (carried out, the error as text or None)."""
    try:
        return _execute(ctx, d), None
    except SpotleashError as e:
        log.warning("reap action failed", instance_id=d.instance_id, reason=d.reason, detail=str(e))
        return False, str(e)


def _audit_check(ctx: Context, tick: ReapTick, plan: ReapPlan, now: datetime, dry: bool) -> None:
    """A tick naming an instance (an agent's router lost it): say what the check found, acted on or not."""
    verdict = next((d for d in plan.decisions if d.instance_id == tick.instance_id), None)
    found = (f"decided {verdict.reason}: {verdict.detail}" if verdict is not None
             else "nothing to do: its provider and its record show no loss (a network blip?)")
    ctx.store.audit("reap_check", tick.reason or "named", now, event_id=tick.event_id,
                    instance_id=tick.instance_id, lease_id=tick.lease_id, dry_run=dry, blocked=plan.blocked,
                    decided=verdict.reason if verdict is not None else None, detail=f"{tick.detail}; {found}"[:500])
    log.info("reap checked a named instance", instance_id=tick.instance_id, reason=tick.reason,
             decided=verdict.reason if verdict is not None else None, event_id=tick.event_id)


def run_reap(ctx: Context, tick: ReapTick, providers: list[str] | None = None) -> ReapReport:
    now = ctx.now()
    reads_before = ctx.store.reads
    records, leases, inventories = gather(ctx, providers or configured_providers(ctx), tick.instance_id)
    budget = ctx.store.get_budget() or {}
    plan = decide_reaps(records, leases, inventories, now, ReapConfig.from_settings(ctx.settings),
                  budget_exceeded=bool(budget.get("stop_all")), force=tick.force)
    dry = tick.dry_run or ctx.settings.reap_dry_run
    report = ReapReport(plan, dry)
    for note in plan.notes:
        log.warning(note, event_id=tick.event_id)
    if plan.blocked:
        ctx.store.audit("reap_blocked", "mass_deletion_guard", now, event_id=tick.event_id,
                        count=len(plan.decisions), detail="; ".join(plan.notes))
        log.error("reap refused: too many deletions", count=len(plan.decisions), event_id=tick.event_id)
    ctx.store.audit_many(now, [("reap_decision", d.reason, {
        "instance_id": d.instance_id, "provider": d.provider, "provider_id": d.provider_id, "lease_id": d.lease_id,
        "detail": d.detail, "dry_run": dry, "blocked": plan.blocked}) for d in plan.decisions])
    if tick.instance_id is not None:  # before acting: the check's entry precedes what it caused
        _audit_check(ctx, tick, plan, now, dry)
    if not (dry or plan.blocked):
        # Deletions are independent and mostly wait on the provider: run a few at once.
        read = {r.instance_id: r for r in records}
        with ThreadPoolExecutor(max_workers=1) as pool:
            # the hibernation pass's query, read while the deletions run (it skips what they decided on anyway)
            pending = pool.submit(ctx.store.hibernation_pending) if ctx.settings.idle_after_s > 0 else None
            outcomes = _execute_all(ctx, plan.decisions, read)
        for d, acted, error in outcomes:
            if error is not None:  # one failure must not stop the others; the next tick retries
                report.failed.append((d, error))
            elif acted:
                report.done.append(d)
            else:
                report.saved.append(d)
        decided = {d.instance_id for d in plan.decisions}
        report.hibernated = run_hibernations(ctx, skip=decided, pending=pending.result() if pending else None)
        report.swept = sweep_abandoned_uploads(ctx)
    report.reads = ctx.store.reads - reads_before
    log.info("reap done", event_id=tick.event_id, decisions=len(plan.decisions), done=len(report.done),
             saved=len(report.saved), failed=len(report.failed), swept=len(report.swept), dry_run=dry,
             blocked=plan.blocked, reads=report.reads)
    return report
