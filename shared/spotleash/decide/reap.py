"""The reaper's decisions: a pure function of (records, leases, inventories, now, config).

Each decision names one instance and one reason. A TERMINATING record is being deleted by someone
else: it only gets ``retry_delete`` once that delete has stalled. Otherwise, in order of precedence:
``budget_exceeded`` > ``max_runtime`` > ``lease_expired`` > ``provisioning_timeout`` > ``preempted`` >
``stopped_at_provider`` > ``vanished`` > ``heartbeat_lost``. A preempted instance was replaced at its notice
and lives on only to save its state (``spotleash.decide.preemption``): it ends as ``preempted`` once the provider
took it, its grace is over, or it went silent. Otherwise the provider's own verdict on a running
instance (outbid, stopped; deleted behind our back) says more than our silence does, so an
outbid box that is also past the heartbeat timeout is ``stopped_at_provider``. The last four are
losses: the reap service replaces such an instance while its lease wants it (``spotleash.decide.failover``).
Then provider
instances that carry our labels but no live record owns become ``orphan`` once older than a grace
period. A provider whose listing failed is *unknown*: it yields no orphan or vanished decision.

``lease_expired`` is decided from a read; the lease may be renewed before the deletion. ``recheck_lease``
is the second look, made in the transaction that moves the instance to TERMINATING (see
``services.reap``): still expired → the deletion goes on, else the instance is spared. A lease with
nothing live left is deleted on the same kind of second look: ``lease_retirable``, asked in the transaction
that deletes it (``Store.retire_lease_if``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from spotleash.clock import age_s
from spotleash.config import Settings
from spotleash.decide.preemption import grace_over
from spotleash.model import LIVE, InstanceRecord, Lease, State
from spotleash.providers.base import LABEL_DEPLOYMENT, Inventory, ProviderInstance, ProviderStatus

RETRY_DELETE_AFTER_S = 30.0


@dataclass(frozen=True)
class ReapConfig:
    deployment_id: str
    heartbeat_timeout_s: float
    provisioning_timeout_s: float
    orphan_grace_s: float
    max_deletions: int
    heartbeat_interval_s: float = 30.0
    preemption_grace_s: float = 30.0

    @classmethod
    def from_settings(cls, s: Settings) -> ReapConfig:
        return cls(s.deployment_id, s.heartbeat_timeout_s, s.provisioning_timeout_s, s.orphan_grace_s,
                   s.reap_max_deletions, s.heartbeat_interval_s, s.preemption_grace_s)


@dataclass(frozen=True)
class Decision:
    reason: str
    provider: str
    instance_id: str | None  # None for an orphan that carries no instance label
    provider_id: str | None
    lease_id: str | None
    detail: str


@dataclass(frozen=True)
class ReapPlan:
    decisions: tuple[Decision, ...]
    blocked: bool = False  # the mass-deletion guard refused to act
    notes: tuple[str, ...] = field(default_factory=tuple)


def _record_reason(
    r: InstanceRecord,
    lease: Lease | None,
    seen: ProviderInstance | None,
    listing_ok: bool,
    now: datetime,
    cfg: ReapConfig,
    budget_exceeded: bool,
) -> tuple[str, str] | None:
    if r.state == State.TERMINATING:  # someone is deleting it already; step in only if they stalled
        if age_s(r.updated_at, now) > RETRY_DELETE_AFTER_S:
            return "retry_delete", f"delete not confirmed after {age_s(r.updated_at, now):.0f}s ({r.reason})"
        return None
    if budget_exceeded:
        return "budget_exceeded", "the monthly budget is spent: every instance stops"
    if now >= r.deadline:
        return "max_runtime", f"past its deadline {r.deadline.isoformat()}"
    if lease is not None and lease.expired(now):
        why = "released" if lease.released else f"expired at {lease.expires_at.isoformat()}"
        return "lease_expired", f"lease {r.lease_id} {why}"
    if r.state in (State.REQUESTED, State.PROVISIONING) and age_s(r.updated_at, now) > cfg.provisioning_timeout_s:
        return "provisioning_timeout", f"{r.state} for {age_s(r.updated_at, now):.0f}s"
    if r.state in (State.RUNNING, State.READY):
        last = r.last_heartbeat or r.running_at or r.updated_at
        if r.preempted_at is not None:  # replaced at its notice; alive only to save its state (spotleash.decide.preemption)
            gone = (listing_ok and seen is None) or (seen is not None and seen.status in (ProviderStatus.STOPPED,
                                                                                      ProviderStatus.TERMINATED))
            if gone or grace_over(r, now, cfg.preemption_grace_s) or age_s(last, now) > cfg.heartbeat_timeout_s:
                took = "the provider took it" if gone else f"its grace of {cfg.preemption_grace_s:.0f}s is over"
                return "preempted", f"preempted at {r.preempted_at.isoformat()}; {took}"
            return None
        if seen is not None and seen.status in (ProviderStatus.STOPPED, ProviderStatus.TERMINATED):
            return "stopped_at_provider", f"provider status {seen.native_status or seen.status}"
        if listing_ok and seen is None:
            return "vanished", f"the provider no longer lists it (last heartbeat {age_s(last, now):.0f}s ago)"
        if age_s(last, now) > cfg.heartbeat_timeout_s:
            return "heartbeat_lost", f"no heartbeat for {age_s(last, now):.0f}s"
    return None


@dataclass(frozen=True)
class LeaseRecheck:
    expired: bool  # still expired: carry out the decision
    detail: str


def recheck_lease(current: Lease | None, now: datetime) -> LeaseRecheck:
    """A ``lease_expired`` decision looked at again at ``now``, with the lease read in the same transaction
    that starts the instance's deletion (``Store.update_with_lease``). Renewed (or reopened after a release)
    since the reap read it → not expired: the instance is spared. Gone (retired by another reap) → nothing
    renewed it: expired."""
    if current is None:
        return LeaseRecheck(True, "the lease is gone")
    if not current.expired(now):
        return LeaseRecheck(False, f"renewed at {current.renewed_at.isoformat()}, "
                                   f"now expires at {current.expires_at.isoformat()}")
    return LeaseRecheck(True, "released" if current.released else f"expired at {current.expires_at.isoformat()}")


RELEASED_LEASE_HOLD = timedelta(hours=1)  # how long a released lease outlives its last instance


def lease_retirable(lease: Lease, now: datetime) -> bool:
    """May a lease with no live instance left be deleted at ``now``? Expired, yes; released, only once
    ``RELEASED_LEASE_HOLD`` has passed since its last renewal: deleted at once, a late renewal (sent before the
    release, delivered after) would open it again and a late demand would launch. Asked on the reap's read
    and again in the deleting transaction, so a renewal handled in between keeps the lease."""
    return lease.expired(now) and (not lease.released or now - lease.renewed_at > RELEASED_LEASE_HOLD)


def decide_reaps(
    records: Iterable[InstanceRecord],
    leases: Mapping[str, Lease],
    inventories: Mapping[str, Inventory],
    now: datetime,
    cfg: ReapConfig,
    *,
    budget_exceeded: bool = False,
    force: bool = False,
) -> ReapPlan:
    by_id = {r.instance_id: r for r in records if r.deployment_id == cfg.deployment_id}
    seen: dict[str, ProviderInstance] = {}
    for inv in inventories.values():
        if not inv.ok:
            continue  # unknown: neither "it is there" nor "it is gone"
        for p in inv.instances:
            if p.instance_id and p.owned and p.labels.get(LABEL_DEPLOYMENT) == cfg.deployment_id:
                seen[p.instance_id] = p
    decisions: list[Decision] = []
    notes: list[str] = []

    for r in by_id.values():
        if r.state not in LIVE:
            continue
        listing_of = inventories.get(r.provider)
        listing_ok = listing_of is not None and listing_of.ok
        verdict = _record_reason(r, leases.get(r.lease_id), seen.get(r.instance_id), listing_ok, now, cfg,
                                 budget_exceeded)
        if verdict:
            decisions.append(Decision(verdict[0], r.provider, r.instance_id, r.provider_id, r.lease_id, verdict[1]))

    for name, listing in inventories.items():
        if not listing.ok:
            notes.append(f"{name}: listing failed ({listing.error}); no orphan decisions for it")
            continue
        for p in listing.instances:
            if not p.owned or p.labels.get(LABEL_DEPLOYMENT) != cfg.deployment_id:
                continue  # never touch what is not ours
            if p.status == ProviderStatus.TERMINATED and p.native_status in (None, "DELETED"):
                continue
            rec = by_id.get(p.instance_id or "")
            if rec is not None and rec.state in LIVE:
                continue
            age = age_s(p.created_at, now) if p.created_at else float("inf")
            if age < cfg.orphan_grace_s:
                continue
            why = f"record is {rec.state}" if rec else "no record owns it"
            decisions.append(Decision("orphan", name, p.instance_id, p.provider_id, p.lease_id,
                                      f"{why}; at the provider for {age:.0f}s"))

    if len(decisions) > cfg.max_deletions and not force:
        notes.append(f"REFUSED: {len(decisions)} deletions exceed the guard of {cfg.max_deletions}; "
                     "run the reap with force to proceed")
        return ReapPlan(tuple(decisions), blocked=True, notes=tuple(notes))
    return ReapPlan(tuple(decisions), notes=tuple(notes))


def candidate_cutoffs(now: datetime, cfg: ReapConfig) -> dict[str, datetime]:
    """Cut-offs the reap run uses to query only records that may be due. ``heartbeat``: records that missed
    two beats, so one deleted behind our back is seen ``vanished`` (and replaced) within a reap or two
    instead of only after the heartbeat timeout; it covers every record past that timeout too. A record a tick
    names (an agent's router lost it, ``spotleash.agent.loss``) is read whatever its times: the provider's
    verdict on it is then decided in that pass."""
    return {
        "heartbeat": now - timedelta(seconds=min(2 * cfg.heartbeat_interval_s, cfg.heartbeat_timeout_s)),
        "pending": now - timedelta(seconds=min(cfg.provisioning_timeout_s, RETRY_DELETE_AFTER_S)),
    }
