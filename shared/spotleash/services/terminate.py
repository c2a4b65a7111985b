"""Delete an instance and confirm it is gone before recording it so. Shared by release, reap, launch."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

from spotleash.adapters.firestore import Audit
from spotleash.errors import SpotleashError, Transient
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
    """``confirm_gone`` on the context's ticks and sleep (a test's fake clock advances instead of waiting)."""
    return confirm_gone(provider, provider_id, ctx.settings.confirm_delete_s, clock=ctx.ticks, sleep=ctx.sleep)


def delete_at_provider(ctx: Context, provider_name: str, provider_id: str) -> bool:
    provider = ctx.provider(provider_name)
    provider.delete(provider_id)
    return _confirm_gone(ctx, provider, provider_id)


Gate = Callable[[Lease | None], bool]


def _begin(reason: str, end: State, now: datetime, only_if: Gate | None) -> Callable[
        [InstanceRecord, Lease | None], InstanceRecord | None]:
    """The change that moves a live record to TERMINATING (an ended one is left, a TERMINATING one touched)."""
    def start(r: InstanceRecord, lease: Lease | None) -> InstanceRecord | None:
        if r.state in ENDED:
            return None
        if r.state == State.TERMINATING:
            return r.model_copy(update={"updated_at": now})
        if only_if is not None and not only_if(lease):
            return None
        return transition(r, State.TERMINATING, now, reason=reason, ends_as=str(end))
    return start


def _end(end: State, done_at: datetime) -> Callable[[InstanceRecord], InstanceRecord | None]:
    return lambda r: transition(r, State(r.ends_as) if r.ends_as else end, done_at) if r.state == State.TERMINATING \
        else None


def _delete_confirmed(ctx: Context, rec: InstanceRecord, reason: str, action: str, now: datetime) -> str | None:
    """Delete ``rec``'s instance at its provider and confirm it is gone; its provider id (None: none was found).
    Transient (audited ``delete_unconfirmed``) if the provider still lists it."""
    provider = ctx.provider(rec.provider)
    provider_id = rec.provider_id
    if provider_id is None:  # crashed between create and record: find it by its label
        found = provider.find(rec.instance_id)
        provider_id = found.provider_id if found else None
    if provider_id is not None:
        provider.delete(provider_id)
        if not _confirm_gone(ctx, provider, provider_id):
            ctx.store.audit(action, "delete_unconfirmed", now, instance_id=rec.instance_id, provider=rec.provider,
                            provider_id=provider_id, detail=f"{reason}; provider still lists it")
            raise Transient(f"{rec.instance_id}: {rec.provider} has not confirmed the deletion of {provider_id}")
    return provider_id


def _deleted_entry(rec: InstanceRecord, reason: str, action: str, provider_id: str | None, now: datetime,
                   done_at: datetime) -> Callable[[InstanceRecord | None], Audit]:
    """The ``action`` entry of a confirmed deletion, written in the commit that ends the record."""
    def entry(final: InstanceRecord | None) -> Audit:
        return Audit(action, rec.reason or reason, done_at, {
            "instance_id": rec.instance_id, "lease_id": rec.lease_id, "provider": rec.provider,
            "provider_id": provider_id, "cost_so_far": final.cost_so_far(done_at) if final else 0.0,
            "seconds": (done_at - now).total_seconds()})
    return entry


def _log_deleted(rec: InstanceRecord, reason: str, provider_id: str | None, final: InstanceRecord | None,
                 done_at: datetime) -> None:
    log.info("instance deleted", instance_id=rec.instance_id, lease_id=rec.lease_id, reason=rec.reason or reason,
             provider=rec.provider, provider_id=provider_id, cost_so_far=final.cost_so_far(done_at) if final else 0.0)


def terminate(
    ctx: Context, instance_id: str, reason: str, *, action: str = "delete", end: State = State.TERMINATED,
    only_if: Gate | None = None,
) -> InstanceRecord | None:
    """Move a live record to TERMINATING, delete at the provider, confirm, then ``end`` (TERMINATED, or
    FAILED for an instance that never did its job).

    Idempotent: an ended record is left as it is. Raises Transient if the provider did not confirm
    the deletion in time (the caller's redelivery or the next reap tries again). ``only_if``: asked about
    the record's lease in the transaction that would move it to TERMINATING; False spares a live record
    (returned as it is, not TERMINATING).
    """
    now = ctx.now()
    start = _begin(reason, end, now, only_if)
    if only_if is None:
        rec = ctx.store.update(instance_id, lambda r: start(r, None))
    else:
        rec = ctx.store.update_with_lease(instance_id, start)
    if rec is None or rec.state != State.TERMINATING:
        return rec
    provider_id = _delete_confirmed(ctx, rec, reason, action, now)
    done_at = ctx.now()
    final = ctx.store.update(instance_id, _end(end, done_at),
                             audit=_deleted_entry(rec, reason, action, provider_id, now, done_at))
    _log_deleted(rec, reason, provider_id, final, done_at)
    return final


@dataclass(frozen=True)
class Wanted:
    """One deletion of ``terminate_many``: its reason and, like ``terminate``'s ``only_if``, its lease's gate."""

    reason: str
    only_if: Gate | None = None


@dataclass
class Outcome:
    started: InstanceRecord | None  # the record as the starting transaction left it (spared: not TERMINATING)
    final: InstanceRecord | None = None  # once deleted and confirmed
    error: str | None = None  # the provider's deletion failed or was not confirmed (the next reap retries)


def terminate_many(ctx: Context, wanted: Mapping[str, Wanted], *, action: str, parallel: int,
                   end: State = State.TERMINATED) -> dict[str, Outcome]:
    """``terminate`` for many records at once, with the same guarantees, in three steps: one transaction moves
    them all to TERMINATING (each record and its lease read in it, as ``terminate`` reads them), the providers
    delete and confirm (``parallel`` at a time), one transaction ends those confirmed, with their audit entries.
    Per record, the Firestore round trips of two transactions (six or seven) become a share of two: the reap's
    deletions waited on them, on an emulator that serves them one after another. A crash between the steps
    leaves TERMINATING records, which the next reap's ``retry_delete`` carries on, as after ``terminate``."""
    if not wanted:
        return {}
    now = ctx.now()
    starts = {iid: _begin(w.reason, end, now, w.only_if) for iid, w in wanted.items()}
    started = ctx.store.update_many(starts, read_leases=any(w.only_if is not None for w in wanted.values()))
    out = {iid: Outcome(started.get(iid)) for iid in wanted}
    deleting = {iid: o.started for iid, o in out.items() if o.started is not None
                and o.started.state == State.TERMINATING}

    def delete(rec: InstanceRecord) -> tuple[str, str | None, str | None]:
        try:
            return rec.instance_id, _delete_confirmed(ctx, rec, wanted[rec.instance_id].reason, action, now), None
        except SpotleashError as e:
            return rec.instance_id, None, str(e)

    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(deleting) or 1))) as pool:
        deleted = list(pool.map(delete, deleting.values()))
    done_at = ctx.now()
    confirmed: dict[str, str | None] = {}
    for iid, provider_id, error in deleted:
        if error is not None:
            out[iid].error = error
        else:
            confirmed[iid] = provider_id
    ends = {iid: _end(end, done_at) for iid in confirmed}
    entries = {iid: _deleted_entry(deleting[iid], wanted[iid].reason, action, pid, now, done_at)
               for iid, pid in confirmed.items()}
    finals = ctx.store.update_many({iid: (lambda change: lambda r, _lease: change(r))(c) for iid, c in ends.items()},
                                   audits=entries)
    for iid, provider_id in confirmed.items():
        out[iid].final = finals.get(iid)
        _log_deleted(deleting[iid], wanted[iid].reason, provider_id, out[iid].final, done_at)
    return out
