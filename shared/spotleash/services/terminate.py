"""Delete an instance and confirm it is gone before recording it so. Shared by release, reap, launch."""

from __future__ import annotations

import time
from collections.abc import Callable

from spotleash.adapters.firestore import Audit
from spotleash.errors import Transient
from spotleash.log import get_logger
from spotleash.model import ENDED, InstanceRecord, Lease, State, transition
from spotleash.polling import WaitTimeout, wait_until
from spotleash.providers.base import Provider
from spotleash.services.context import Context

log = get_logger(__name__)
CONFIRM_POLL_S = 0.25  # how often a deletion's confirmation asks the provider again


def confirm_gone(provider: Provider, provider_id: str, timeout_s: float, *,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> bool:
    """True once the provider's get() says the instance no longer exists. Bounded by ``timeout_s``."""
    try:
        return wait_until(lambda: provider.get(provider_id) is None, timeout_s=timeout_s, interval_s=CONFIRM_POLL_S,
                          what=f"the deletion of {provider_id}", clock=clock, sleep=sleep)
    except WaitTimeout:
        return False


def _confirm_gone(ctx: Context, provider: Provider, provider_id: str) -> bool:
    """``confirm_gone`` on the context's clock and sleep (a test's fake clock advances instead of waiting)."""
    return confirm_gone(provider, provider_id, ctx.settings.confirm_delete_s,
                        clock=lambda: ctx.now().timestamp(), sleep=ctx.sleep)


def delete_at_provider(ctx: Context, provider_name: str, provider_id: str) -> bool:
    provider = ctx.provider(provider_name)
    provider.delete(provider_id)
    return _confirm_gone(ctx, provider, provider_id)


def terminate(
    ctx: Context, instance_id: str, reason: str, *, action: str = "delete", end: State = State.TERMINATED,
    only_if: Callable[[Lease | None], bool] | None = None,
) -> InstanceRecord | None:
    """Move a live record to TERMINATING, delete at the provider, confirm, then ``end`` (TERMINATED, or
    FAILED for an instance that never did its job).

    Idempotent: an ended record is left as it is. Raises Transient if the provider did not confirm
    the deletion in time (the caller's redelivery or the next reap tries again). ``only_if``: asked about
    the record's lease in the transaction that would move it to TERMINATING; False spares a live record
    (returned as it is, not TERMINATING).
    """
    now = ctx.now()

    def start(r: InstanceRecord) -> InstanceRecord | None:
        if r.state in ENDED:
            return None
        if r.state == State.TERMINATING:
            return r.model_copy(update={"updated_at": now})
        return transition(r, State.TERMINATING, now, reason=reason, ends_as=str(end))

    if only_if is None:
        rec = ctx.store.update(instance_id, start)
    else:
        gate = only_if
        rec = ctx.store.update_with_lease(instance_id, lambda r, lease: start(r) if (
            r.state in ENDED or r.state == State.TERMINATING or gate(lease)) else None)
    if rec is None or rec.state in ENDED or rec.state != State.TERMINATING:
        return rec
    provider = ctx.provider(rec.provider)
    provider_id = rec.provider_id
    if provider_id is None:  # crashed between create and record: find it by its label
        found = provider.find(rec.instance_id)
        provider_id = found.provider_id if found else None
    if provider_id is not None:
        provider.delete(provider_id)
        if not _confirm_gone(ctx, provider, provider_id):
            ctx.store.audit(action, "delete_unconfirmed", now, instance_id=instance_id, provider=rec.provider,
                            provider_id=provider_id, detail=f"{reason}; provider still lists it")
            raise Transient(f"{instance_id}: {rec.provider} has not confirmed the deletion of {provider_id}")
    done_at = ctx.now()

    def deleted(final: InstanceRecord | None) -> Audit:  # written in the commit that ends the record
        return Audit(action, rec.reason or reason, done_at, {
            "instance_id": instance_id, "lease_id": rec.lease_id, "provider": rec.provider, "provider_id": provider_id,
            "cost_so_far": final.cost_so_far(done_at) if final else 0.0, "seconds": (done_at - now).total_seconds()})

    final = ctx.store.update(instance_id, lambda r: transition(r, State(r.ends_as) if r.ends_as else end, done_at)
                             if r.state == State.TERMINATING else None, audit=deleted)
    log.info("instance deleted", instance_id=instance_id, lease_id=rec.lease_id, reason=rec.reason or reason,
             provider=rec.provider, provider_id=provider_id, cost_so_far=final.cost_so_far(done_at) if final else 0.0)
    return final
