"""on_release, on_lease and on_budget: small services over the store."""

from __future__ import annotations

from datetime import timedelta

from spotleash.errors import Transient
from spotleash.log import get_logger
from spotleash.model import Lease
from spotleash.services.context import Context
from spotleash.services.terminate import terminate
from spotleash.wire.events import BudgetAlert, LeaseEvent, ReleaseEvent

log = get_logger(__name__)


def handle_release(ctx: Context, event: ReleaseEvent) -> list[str]:
    """Delete every live instance of the lease (or the one named), confirming each. Idempotent."""
    now = ctx.now()
    if event.instance_id is None:
        # Mark the lease released first, so a launch racing with us refuses or cleans up after itself.
        # In a transaction: a renewal handled at the same instant must not write over the release.
        ctx.store.update_lease(event.lease_id, lambda lease: Lease(
            lease_id=event.lease_id, deployment_id=ctx.settings.deployment_id, expires_at=now,
            renewed_at=event.created_at, holder=lease.holder if lease else "", released=True))
        targets = [r.instance_id for r in ctx.store.instances_of_lease(event.lease_id)]
    else:
        rec = ctx.store.get(event.instance_id)
        targets = [rec.instance_id] if rec and rec.lease_id == event.lease_id and rec.live else []
    failures: list[str] = []
    for instance_id in targets:
        try:
            terminate(ctx, instance_id, f"release: {event.reason}", action="release")
        except Transient as e:
            failures.append(f"{instance_id}: {e}")
    ctx.store.audit("release", event.reason, now, lease_id=event.lease_id, event_id=event.event_id,
                    instances=targets, failures=failures)
    log.info("lease released", lease_id=event.lease_id, event_id=event.event_id, instances=targets,
             failures=len(failures))
    if failures:  # a redelivery tries the unconfirmed ones again; the reaper is the backstop
        raise Transient("; ".join(failures))
    return targets


def handle_lease(ctx: Context, event: LeaseEvent) -> Lease:
    """Renew the lease. Out-of-order renewals never move the expiry backwards."""
    now = ctx.now()
    expires = event.created_at + timedelta(seconds=event.ttl_s)
    # An agent's clock may be off; never trust an expiry further out than ttl from our own now.
    expires = min(expires, now + timedelta(seconds=event.ttl_s))
    opened: list[bool] = [False]

    def renew(current: Lease | None) -> Lease | None:
        opened[0] = False  # the transaction may run this more than once
        if current is not None and not current.released and current.expires_at >= expires:
            return None
        if current is not None and current.released and event.created_at <= current.renewed_at:
            return None  # a late renewal from before the release must not revive the lease
        opened[0] = current is None or current.released
        return Lease(lease_id=event.lease_id, deployment_id=ctx.settings.deployment_id, expires_at=expires,
                     renewed_at=event.created_at, holder=event.holder, released=False)

    # In a transaction: a release handled at the same instant must not be written over.
    lease = ctx.store.update_lease(event.lease_id, renew)
    assert lease is not None  # renew() writes when nothing is stored
    if opened[0]:
        ctx.store.audit("lease_opened", "lease", now, lease_id=event.lease_id, holder=event.holder)
    log.debug("lease renewed", lease_id=event.lease_id, event_id=event.event_id, expires_at=expires)
    return lease


def handle_budget(ctx: Context, alert: BudgetAlert) -> bool:
    """Record the billing alert; past 100 % launches are refused (and, if configured, all reaped)."""
    now = ctx.now()
    exceeded = alert.costAmount >= alert.budgetAmount
    ctx.store.put_budget({"cost": alert.costAmount, "budget": alert.budgetAmount,
                          "threshold": alert.alertThresholdExceeded, "exceeded": exceeded,
                          "stop_all": exceeded and ctx.settings.budget_stop_all, "at": now})
    ctx.store.audit("budget_alert", "budget_exceeded" if exceeded else "budget_threshold", now,
                    cost=alert.costAmount, budget=alert.budgetAmount, threshold=alert.alertThresholdExceeded)
    log.warning("budget alert", cost=alert.costAmount, budget=alert.budgetAmount, exceeded=exceeded)
    return exceeded
