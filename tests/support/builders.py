"""Small builders for in-process service tests: events, leases, and readers of the store's audit."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Literal

from tests.support.memory_store import MemoryStore

from spotleash.adapters.firestore import Store
from spotleash.model import InstanceRecord, Lease, State, new_record, transition
from spotleash.providers import ProviderName
from spotleash.services.context import Context
from spotleash.services.lifecycle import handle_lease
from spotleash.wire.events import Component, DemandEvent, Heartbeat, LeaseEvent

DEP = "dep-t"  # the deployment of the service tests' Context
MakeCtx = Callable[..., Context]  # settings overrides -> a Context on the same store, fakes and clock
Trigger = Literal["threshold", "predictive", "manual", "failover"]


def demand(lease_id: str = "lease-1", *, event_id: str = "ev-1", gpu: bool = False, ram_gb: float = 8.0,
           trigger: Trigger = "threshold", provider: ProviderName | None = None) -> DemandEvent:
    return DemandEvent(event_id=event_id, lease_id=lease_id, trigger=trigger, ram_percent=91.0, provider=provider,
                       components=[Component(name="ml_models", ram_gb=ram_gb, gpu=gpu)])


def open_lease(ctx: Context, lease_id: str = "lease-1", ttl_s: float = 90.0, holder: str = "laptop") -> Lease:
    return handle_lease(ctx, LeaseEvent(lease_id=lease_id, ttl_s=ttl_s, holder=holder, created_at=ctx.now()))


def record_of(store: Store, instance_id: str) -> InstanceRecord:
    rec = store.get(instance_id)
    assert rec is not None, f"no record {instance_id}"
    return rec


def actions(store: MemoryStore, instance_id: str | None = None) -> list[tuple[str, str]]:
    """(action, reason) of every audit entry (of one instance), in time order."""
    return [(e["action"], e["reason"]) for e in store.audit_entries(instance_id)]


def put_record(ctx: Context, instance_id: str, lease_id: str = "lease-1", state: State = State.RUNNING, *,
               age_s: float = 600.0, provider: ProviderName = "gce", **changes: object) -> InstanceRecord:
    """Write a record straight into the store (no provider instance behind it), created ``age_s`` ago."""
    born = ctx.now() - timedelta(seconds=age_s)
    rec = new_record(instance_id=instance_id, lease_id=lease_id, deployment_id=ctx.settings.deployment_id,
                     event_id=f"ev-{instance_id}", provider=provider, now=born,
                     max_runtime_s=ctx.settings.max_runtime_s, price_per_hour=0.05)
    for step in _PATH[state]:
        rec = transition(rec, step, born)
    rec = rec.model_copy(update=changes)
    ctx.store.create_intent(rec)
    return rec


_PATH = {State.REQUESTED: [], State.PROVISIONING: [State.PROVISIONING],
         State.RUNNING: [State.PROVISIONING, State.RUNNING], State.READY: [State.PROVISIONING, State.READY],
         State.TERMINATING: [State.PROVISIONING, State.RUNNING, State.TERMINATING],
         State.TERMINATED: [State.PROVISIONING, State.RUNNING, State.TERMINATING, State.TERMINATED],
         State.FAILED: [State.FAILED]}


def launched(ctx: Context, lease_id: str = "lease-1", *, event_id: str | None = None,
             gpu: bool = False) -> InstanceRecord:
    """An instance launched through the launch service (its lease opened or renewed first): RUNNING, at a fake."""
    from spotleash.services.launch import handle_demand

    open_lease(ctx, lease_id)
    out = handle_demand(ctx, demand(lease_id, event_id=event_id or f"ev-{lease_id}", gpu=gpu))
    assert out.state is State.RUNNING, out
    return record_of(ctx.store, out.instance_id)


def beat(rec: InstanceRecord, *, preempted: bool = False, lease_id: str | None = None) -> Heartbeat:
    return Heartbeat(lease_id=lease_id or rec.lease_id, instance_id=rec.instance_id, preempted=preempted)
