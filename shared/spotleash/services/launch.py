"""on_demand: turn a demand into a running instance, idempotently, never leaving one untracked.

Order matters: the intent record is written *before* the provider's create call, and the
instance carries our labels, so a crash anywhere in between leaves something the reaper finds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    stop_any,
    wait_exponential,
)
from tenacity.stop import stop_base

from spotleash.clock import month_start
from spotleash.decide.failover import last_sign_of_life, should_replace
from spotleash.decide.ledger import committed, month_to_date, region_of
from spotleash.decide.policy import LaunchFacts, LaunchPlan, Refusal, choose_provider, plan_launch
from spotleash.errors import BadInput, CapacityExhausted, LeaseUnknown, ProviderPermanent, Transient
from spotleash.log import get_logger
from spotleash.model import LIVE, InstanceRecord, State, instance_id_for, new_record, transition
from spotleash.packaging.package_pin import MISSING, PackageMissing, PinnedPackage, pinned, read_urls, resolve
from spotleash.providers import provider_info
from spotleash.providers.base import GpuRequirements, LaunchSpec, ProviderInstance
from spotleash.services.context import Context, token_hash
from spotleash.services.terminate import terminate
from spotleash.wire.events import DemandEvent

log = get_logger(__name__)
IN_FLIGHT_GRACE_S = 10.0  # beyond the create retry budget, before a redelivery takes over a launch


@dataclass(frozen=True)
class LaunchOutcome:
    instance_id: str
    state: State | None  # None: a dry run, nothing recorded
    created: bool  # False: a duplicate or redelivered event found the existing record
    reason: str | None = None


def gather_facts(ctx: Context, lease_id: str, now: datetime, *, replacing: str | None = None) -> LaunchFacts:
    """``replacing``: the lost instance a failover replaces does not count against the lease's limit."""
    store = ctx.store
    live = store.live_instances()
    month = store.billed_since(month_start(now))
    lease = store.get_lease(lease_id)
    if lease is None:
        # The agent renews its lease before it demands, but the two travel on different topics: wait
        # for the lease (a redelivery) rather than launch something no lease will ever let go of.
        raise LeaseUnknown(lease_id)
    budget = store.get_budget() or {}
    return LaunchFacts(
        lease_live=[r for r in live if r.lease_id == lease_id and r.state != State.TERMINATING
                    and r.instance_id != replacing],
        total_live=len(live),
        month_spend=month_to_date(month, now).total,  # the same ledger `spotleash cost` shows
        month_committed=committed(live, now),
        budget_alert_exceeded=bool(budget.get("exceeded")),
        lease_released=lease.released,
        lease_expired=not lease.released and lease.expired(now),
        spot_price=_spot_price(ctx),
    )


def _spot_price(ctx: Context) -> Callable[[str], float] | None:
    """Spot prices in the region of the first zone tried, from the context's price book (if it has one)."""
    book = ctx.prices
    if book is None:
        return None
    region = region_of(ctx.settings.zones[0]) or ctx.settings.region
    return lambda machine: book.quote(machine, region).usd_per_hour


def pin_package(ctx: Context) -> PinnedPackage | Refusal | None:
    """The package this launch will run, read from the channel's pointer once (None: no bucket configured,
    the instance only beats). A Refusal when nothing runnable is published; raises StorageTransient
    (redelivery) when Cloud Storage does not answer."""
    storage = ctx.package_storage()
    if storage is None:
        return None
    try:
        return resolve(storage, ctx.settings.package_channel)
    except PackageMissing as e:
        return Refusal(MISSING, str(e))


def _package_fields(ctx: Context, rec: InstanceRecord, now: datetime) -> tuple[str, str, str, dict[str, str]]:
    """The pinned package's fields of the launch spec: its sha256 and URI, and for a provider whose boxes
    have no Google identity signed URLs valid until the instance's deadline (secrets): the manifest's and
    one per blob."""
    storage = ctx.package_storage()
    if not rec.package_sha256:
        return "", "", "", {}
    if storage is None:
        raise PackageMissing(f"{rec.instance_id} pinned package {rec.package_sha256[:12]}… but "
                             "SPOTLEASH_PACKAGE_BUCKET is no longer set")
    pkg = pinned(storage, rec.package_sha256)
    if provider_info(rec.provider).google_identity:
        return pkg.sha256, pkg.uri, "", {}
    url, blob_urls = read_urls(storage, pkg, now=now, until=rec.deadline)
    return pkg.sha256, pkg.uri, url, blob_urls


def build_spec(ctx: Context, rec: InstanceRecord, plan_machine: str, now: datetime) -> LaunchSpec:
    s = ctx.settings
    remaining = int((rec.deadline - now).total_seconds())
    gpu = GpuRequirements.from_settings(s) if provider_info(rec.provider).gpu else None
    sha, uri, url, blob_urls = _package_fields(ctx, rec, now)
    return LaunchSpec(
        package_sha256=sha, package_uri=uri, package_url=url, blob_urls=blob_urls, components=tuple(rec.components),
        package_fetch_retry_s=s.package_fetch_retry_s,
        instance_id=rec.instance_id, lease_id=rec.lease_id, deployment_id=rec.deployment_id,
        deadline=rec.deadline, max_run_s=max(remaining, 30), machine_type=plan_machine, zones=tuple(s.zones),
        gpu=gpu, image=s.gpu_image, heartbeat_url=s.heartbeat_url or "",
        heartbeat_token=ctx.heartbeat_token(rec.instance_id), heartbeat_interval_s=s.heartbeat_interval_s,
        route_credential_sha256=rec.route_credential_sha256 or "", snapshot_interval_s=s.snapshot_interval_s,
        idle_cpu_percent=s.idle_cpu_percent,
    )


def _still_wanted(ctx: Context, instance_id: str) -> bool:
    rec = ctx.store.get(instance_id)
    return rec is not None and rec.state in (State.REQUESTED, State.PROVISIONING)


class _Abandoned(stop_base):
    """Stop retrying a create once the launch is no longer wanted (released, reaped)."""

    def __init__(self, ctx: Context, instance_id: str) -> None:
        self.ctx, self.instance_id = ctx, instance_id

    def __call__(self, retry_state: RetryCallState) -> bool:  # noqa: ARG002 - tenacity's signature
        return not _still_wanted(self.ctx, self.instance_id)


def _create_with_retry(ctx: Context, spec: LaunchSpec, provider_name: str) -> ProviderInstance:
    """create() with backoff on transient errors; stops retrying once the launch is no longer wanted."""
    provider = ctx.provider(provider_name)
    for attempt in Retrying(
        retry=retry_if_exception_type(Transient),
        stop=stop_any(stop_after_delay(ctx.settings.launch_retry_s), _Abandoned(ctx, spec.instance_id)),
        wait=wait_exponential(multiplier=0.5, max=8),
        sleep=ctx.sleep,
        reraise=True,
    ):
        with attempt:
            return provider.create(spec)
    raise AssertionError("unreachable")  # pragma: no cover


def _fail(ctx: Context, rec: InstanceRecord, reason: str, detail: str) -> LaunchOutcome:
    """A permanent failure: make sure nothing is left at the provider, then record FAILED."""
    found = ctx.provider(rec.provider).find(rec.instance_id)
    if found is not None:  # a partial create: delete it, it must not outlive the record
        terminate(ctx, rec.instance_id, f"launch failed: {reason}", action="launch_cleanup")
        return LaunchOutcome(rec.instance_id, State.TERMINATED, True, reason)
    now = ctx.now()
    ctx.store.update(rec.instance_id, lambda r: transition(r, State.FAILED, now, reason=f"{reason}: {detail}")
                     if r.state in (State.REQUESTED, State.PROVISIONING) else None)
    ctx.store.audit("launch_failed", reason, now, instance_id=rec.instance_id, lease_id=rec.lease_id,
                    provider=rec.provider, detail=detail)
    log.warning("launch failed", instance_id=rec.instance_id, lease_id=rec.lease_id, reason=reason, detail=detail)
    return LaunchOutcome(rec.instance_id, State.FAILED, True, reason)


def dry_run(ctx: Context, event: DemandEvent) -> LaunchOutcome:
    """What a demand would do, audited as ``demand_dry_run`` under the instance id it would get: the whole
    event path proven (Pub/Sub, the push, the function, Firestore reads and a write) without renting anything."""
    now = ctx.now()
    try:
        decision = plan_launch(event, gather_facts(ctx, event.lease_id, now), ctx.settings, now)
        would = f"launch_{decision.provider}" if isinstance(decision, LaunchPlan) else decision.reason
    except LeaseUnknown:
        would = "wait_for_lease"  # a real demand would wait for the lease's first renewal
    instance_id = instance_id_for(event.event_id)
    ctx.store.audit("demand_dry_run", would, now, instance_id=instance_id, lease_id=event.lease_id,
                    event_id=event.event_id)
    log.info("dry-run demand", event_id=event.event_id, lease_id=event.lease_id, would=would)
    return LaunchOutcome(instance_id, None, False, would)


def handle_demand(ctx: Context, event: DemandEvent) -> LaunchOutcome:
    """One demand: decide and record the intent (or resume it), create the instance, record it RUNNING.
    Each step returns the record to go on with, or the outcome when the launch ends there. A dry run
    only decides and audits (``dry_run``)."""
    if event.dry_run:
        return dry_run(ctx, event)
    now = ctx.now()
    instance_id = instance_id_for(event.event_id)
    existing = ctx.store.get(instance_id)
    if existing is not None and existing.state not in (State.REQUESTED, State.PROVISIONING):
        log.info("duplicate demand ignored", event_id=event.event_id, instance_id=instance_id,
                 state=str(existing.state))
        return LaunchOutcome(instance_id, existing.state, False, existing.reason)
    rec = _record_intent(ctx, event, instance_id, now) if existing is None else _resume(ctx, existing, now)
    if isinstance(rec, LaunchOutcome):
        return rec
    rec = ctx.store.update(instance_id, lambda r: transition(r, State.PROVISIONING, ctx.now(),
                                                               attempts=r.attempts + 1)
                           if r.state in (State.REQUESTED, State.PROVISIONING) else None) or rec
    if rec.state != State.PROVISIONING:
        return LaunchOutcome(instance_id, rec.state, False, rec.reason)
    made = _create(ctx, rec)
    if isinstance(made, LaunchOutcome):
        return made
    return _record_running(ctx, event, rec, made, now)


def _record_intent(ctx: Context, event: DemandEvent, instance_id: str, now: datetime) -> InstanceRecord | LaunchOutcome:
    """Decide the launch (or refuse it) and make the intent durable before any provider call: a crash
    after this point leaves a record."""
    s = ctx.settings
    facts = gather_facts(ctx, event.lease_id, now, replacing=event.replaces)
    decision: LaunchPlan | Refusal = plan_launch(event, facts, s, now)
    package = pin_package(ctx) if isinstance(decision, LaunchPlan) else None
    if isinstance(package, Refusal):
        decision, package = package, None
    provider_name = decision.provider if isinstance(decision, LaunchPlan) else choose_provider(event)
    intent = new_record(
        instance_id=instance_id, lease_id=event.lease_id, deployment_id=s.deployment_id,
        event_id=event.event_id, provider=provider_name, now=now, max_runtime_s=s.max_runtime_s,
        ram_gb=event.ram_gb, gpu=event.needs_gpu, components=[c.name for c in event.components],
        replaces=event.replaces, lost_at=event.lost_at, token_hash=token_hash(ctx.heartbeat_token(instance_id)),
        machine=decision.machine if isinstance(decision, LaunchPlan) else None,
        price_per_hour=decision.price_cap if isinstance(decision, LaunchPlan) else 0.0,
        route_credential_sha256=event.route_credential_sha256,
        package_sha256=package.sha256 if package else None,
    )
    if isinstance(decision, Refusal):
        refused = transition(intent, State.FAILED, now, reason=f"{decision.reason}: {decision.detail}")
        stored, created = ctx.store.create_intent(refused)
        if created:
            ctx.store.audit("launch_refused", decision.reason, now, instance_id=instance_id,
                            lease_id=event.lease_id, event_id=event.event_id, detail=decision.detail)
            log.warning("launch refused", event_id=event.event_id, lease_id=event.lease_id,
                        reason=decision.reason, detail=decision.detail)
        return LaunchOutcome(instance_id, stored.state, created, decision.reason)
    rec, created = ctx.store.create_intent(intent)
    if created:
        ctx.store.audit("launch_intent", event.trigger, now, instance_id=instance_id, lease_id=event.lease_id,
                        event_id=event.event_id, provider=provider_name, machine=intent.machine,
                        package_sha256=intent.package_sha256)
        return rec
    if rec.state not in (State.REQUESTED, State.PROVISIONING):
        return LaunchOutcome(instance_id, rec.state, False, rec.reason)
    # a concurrent copy of this event created it a moment ago and is launching it
    raise Transient(f"{instance_id}: a launch is in flight")


def _resume(ctx: Context, existing: InstanceRecord, now: datetime) -> InstanceRecord:
    """A redelivery resumes an interrupted launch (create() reconciles by label). While another delivery
    is still inside its launch window, step back instead of fighting over the record."""
    busy_for = ctx.settings.launch_retry_s + IN_FLIGHT_GRACE_S - (now - existing.updated_at).total_seconds()
    if busy_for > 0:
        raise Transient(f"{existing.instance_id}: a launch is in flight; retry in {busy_for:.0f}s")
    return existing


def _create(ctx: Context, rec: InstanceRecord) -> ProviderInstance | LaunchOutcome:
    """Create the instance at its provider; a refusal fails the launch, a release meanwhile abandons it."""
    try:
        spec = build_spec(ctx, rec, rec.machine or ctx.settings.machine_type, ctx.now())
    except PackageMissing as e:
        return _fail(ctx, rec, MISSING, str(e))
    try:
        return _create_with_retry(ctx, spec, rec.provider)
    except CapacityExhausted as e:
        return _fail(ctx, rec, "no_capacity", str(e))
    except (ProviderPermanent, BadInput) as e:
        return _fail(ctx, rec, "provider_refused", str(e))
    except Transient:
        if _still_wanted(ctx, rec.instance_id):
            raise  # past the retry budget: the event is redelivered and resumes here
        # Released while we were creating: whatever the create left must not outlive the record.
        found = ctx.provider(rec.provider).find(rec.instance_id)
        if found is not None:
            ctx.provider(rec.provider).delete(found.provider_id)
        log.warning("launch abandoned: released during create", instance_id=rec.instance_id)
        return LaunchOutcome(rec.instance_id, State.TERMINATED, False, "released during launch")


def _record_running(ctx: Context, event: DemandEvent, rec: InstanceRecord, made: ProviderInstance,
                    started: datetime) -> LaunchOutcome:
    """Record the created instance RUNNING (where it is, from when its heartbeats count); one ended meanwhile
    is deleted at once."""
    instance_id = rec.instance_id
    at = ctx.now()

    def where(r: InstanceRecord) -> dict[str, object]:
        return {"provider_id": made.provider_id, "zone": made.zone, "machine": made.machine or r.machine,
                "price_per_hour": made.price_per_hour or r.price_per_hour,
                "storage_per_hour": made.storage_per_hour, "ssh_host": made.ssh_host,
                "ssh_port": made.ssh_port}

    def record_running(r: InstanceRecord) -> InstanceRecord | None:
        if r.state == State.READY and r.provider_id is None:
            return r.model_copy(update=where(r))  # its first beat got here first: stay READY, learn where it is
        if r.state not in (State.REQUESTED, State.PROVISIONING):
            return None  # released (or reaped) while we were creating
        stamped = ctx.now()  # the heartbeat baseline: when the record says RUNNING, not when we began writing
        return transition(r, State.RUNNING, stamped, last_heartbeat=at, **where(r))

    final = ctx.store.update(instance_id, record_running)
    if final is None or final.state not in (State.RUNNING, State.READY):
        # Someone ended it while create was in flight: the new instance must not outlive the record.
        log.warning("instance created after its lease ended; deleting it", instance_id=instance_id)
        if final is not None and final.state in LIVE:
            terminate(ctx, instance_id, "released during launch", action="launch_cleanup")
        else:
            ctx.provider(rec.provider).delete(made.provider_id)
        return LaunchOutcome(instance_id, State.TERMINATED, True, "released during launch")
    ctx.store.audit("launched", event.trigger, at, instance_id=instance_id, lease_id=event.lease_id,
                    event_id=event.event_id, provider=rec.provider, provider_id=made.provider_id, zone=made.zone,
                    price_per_hour=made.price_per_hour, seconds=(at - started).total_seconds(),
                    deadline=final.deadline)
    log.info("instance running", instance_id=instance_id, lease_id=event.lease_id, event_id=event.event_id,
             provider=rec.provider, provider_id=made.provider_id, zone=made.zone)
    return LaunchOutcome(instance_id, State.RUNNING, True)


def request_replacement(ctx: Context, rec: InstanceRecord, why: str) -> str | None:
    """``rec`` was lost (``spotleash.decide.failover.LOSS_REASONS``: preempted, outbid or stopped, deleted behind
    our back, silent): if its lease still wants capacity, publish a failover demand. Returns the
    replacement's id (derived from the demand's id, so known before the launch).

    Published, not launched here: the reaper and the heartbeat may not create instances (least privilege:
    only on_demand holds the launcher role), and a reap with many lost instances stays short. Idempotent:
    the failover event id derives from ``rec`` and on_demand drops a duplicate. The replacement's record
    carries ``replaces`` and ``lost_at`` (the lost one's last sign of life), the lost one's ``replaced_by``."""
    now = ctx.now()
    replace, why_not = should_replace(rec, why)
    lease = ctx.store.get_lease(rec.lease_id)
    if lease is None or lease.expired(now):
        why_not = "its lease is gone" if lease is None else "its lease expired or was released"
    if not replace or lease is None or lease.expired(now):
        ctx.store.audit("failover_skipped", why, now, instance_id=rec.instance_id, lease_id=rec.lease_id,
                        detail=why_not)
        log.info("no failover", instance_id=rec.instance_id, reason=why, detail=why_not)
        return None
    event = failover_event(rec, now)
    replacement = instance_id_for(event.event_id)
    ctx.publish_demand(event)  # Transient when not confirmed: the caller's retry publishes the same event again
    ctx.store.update(rec.instance_id, lambda r: r.model_copy(update={"replaced_by": replacement}))
    ctx.store.audit("failover", why, ctx.now(), instance_id=rec.instance_id, replacement=replacement,
                    lease_id=rec.lease_id, event_id=event.event_id)
    log.info("failover requested", instance_id=rec.instance_id, replacement=replacement, reason=why)
    return replacement


def failover_event(rec: InstanceRecord, now: datetime) -> DemandEvent:
    """The demand that replaces a preempted instance: deterministic id, so it launches at most once."""
    from spotleash.wire.events import Component

    names = rec.components or ["workload"]
    per = max(rec.ram_gb / len(names), 0.5)
    return DemandEvent(
        event_id=f"failover-{rec.instance_id}"[:63], created_at=now, lease_id=rec.lease_id, trigger="failover",
        ram_percent=100.0, provider=rec.provider, route_credential_sha256=rec.route_credential_sha256,
        components=[Component(name=n, ram_gb=per, gpu=rec.gpu) for n in names],
        replaces=rec.instance_id, lost_at=last_sign_of_life(rec),
    )


