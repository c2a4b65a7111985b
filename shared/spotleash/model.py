"""The instance record and its state machine. Transitions are pure functions of (record, now)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict

from spotleash.errors import InvalidTransition
from spotleash.providers import ProviderName
from spotleash.wire.events import ComponentReport, GpuReport, InstanceFailure


class State(StrEnum):
    REQUESTED = "REQUESTED"  # intent written, no create call yet
    PROVISIONING = "PROVISIONING"  # create called, not yet confirmed running
    RUNNING = "RUNNING"  # the provider says it runs
    READY = "READY"  # every component it was launched for is healthy (no package: its first heartbeat came)
    TERMINATING = "TERMINATING"  # delete requested, not yet confirmed gone
    TERMINATED = "TERMINATED"  # the provider confirmed it is gone
    FAILED = "FAILED"  # never did its job (launch refused or failed, package or components never healthy);
    # nothing is left at the provider


LIVE = frozenset({State.REQUESTED, State.PROVISIONING, State.RUNNING, State.READY, State.TERMINATING})
ENDED = frozenset({State.TERMINATED, State.FAILED})

_ALLOWED: dict[State, frozenset[State]] = {
    State.REQUESTED: frozenset({State.PROVISIONING, State.RUNNING, State.TERMINATING, State.FAILED}),
    State.PROVISIONING: frozenset({State.RUNNING, State.READY, State.TERMINATING, State.FAILED}),
    State.RUNNING: frozenset({State.READY, State.TERMINATING}),
    State.READY: frozenset({State.TERMINATING}),
    State.TERMINATING: frozenset({State.TERMINATED, State.FAILED}),
    State.TERMINATED: frozenset(),
    State.FAILED: frozenset(),
}


def can_transition(src: State, dst: State) -> bool:
    return dst == src or dst in _ALLOWED[src]


def instance_id_for(event_id: str, slot: int = 0) -> str:
    """Deterministic id from the demand event, so a redelivered event finds the same record.

    Valid as a GCE instance name and label value: starts with a letter, lowercase, <= 63 chars.
    """
    digest = hashlib.sha256(f"{event_id}/{slot}".encode()).hexdigest()[:20]
    return f"sl-{digest}"


SnapshotReason = Literal["on_demand", "hibernate", "deadline"]


class RequestedSnapshot(BaseModel):
    """The control plane wants a snapshot of this instance (the record's ``snapshot_request``): its heartbeat
    replies carry it (``spotleash.wire.snapshot.SnapshotRequest``) until a snapshot of it starts at or after
    ``requested_at``."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    request_id: str
    reason: SnapshotReason
    requested_at: AwareDatetime
    by: str = ""  # who asked: "cli", "reaper", "heartbeat"
    # asked again because the last snapshot failed or did not finish (what the alert said; ``spotleash status``
    # shows it): empty for a first request
    postponed: str = ""
    served: bool = False  # a snapshot of the instance started after it: the replies stop asking


class InstanceRecord(BaseModel):
    """One rented instance, as Firestore stores it (collection ``instances``, doc id = instance_id)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    instance_id: str
    lease_id: str
    deployment_id: str
    event_id: str
    provider: ProviderName
    state: State
    created_at: AwareDatetime
    updated_at: AwareDatetime
    deadline: AwareDatetime  # hard cap: created_at + max runtime
    provider_id: str | None = None  # GCE instance name or VAST contract id
    zone: str | None = None
    machine: str | None = None  # machine type or GPU model
    price_per_hour: float = 0.0  # the rate in force at launch: GCE Spot price, or VAST's dph_total (GPU + storage)
    storage_per_hour: float = 0.0  # VAST: the storage part of price_per_hour, billed while the box exists
    running_at: AwareDatetime | None = None
    last_heartbeat: AwareDatetime | None = None
    stopped_at: AwareDatetime | None = None  # first seen stopped at the provider (VAST: the GPU stops billing)
    ended_at: AwareDatetime | None = None
    reason: str | None = None  # why it ended (or failed)
    # The state its termination ends in, set by whoever started it: a launch failure's FAILED survives a
    # delete finished by someone else (the reaper's retry after an unconfirmed delete)
    ends_as: Literal["TERMINATED", "FAILED"] | None = None
    token_hash: str | None = None  # sha256 of the heartbeat token; the token itself is never stored
    host_key: str | None = None  # pinned SSH host key (VAST), learned at first contact
    ssh_host: str | None = None
    ssh_port: int | None = None
    preempted: bool = False
    preempted_at: AwareDatetime | None = None  # the preemption notice's beat; the record lives on for its grace
    replaced_by: str | None = None
    replaces: str | None = None
    attempts: int = 0
    ram_gb: float = 0.0  # what the demand asked for, kept so a failover can ask again
    gpu: bool = False
    components: list[str] = []
    package_sha256: str | None = None  # the package the launch pinned; READY then waits for its components
    component_states: dict[str, ComponentReport] = {}  # as the last heartbeat reported them, with endpoints
    route_credential_sha256: str | None = None  # from the demand: what the instance's front admits
    tls_fingerprint: str | None = None  # the front's certificate, pinned at the first beat that carries one
    first_heartbeat_at: AwareDatetime | None = None
    ready_at: AwareDatetime | None = None
    idle_s: float = 0.0  # as the last heartbeat reported it (no request served, CPU under its threshold)
    gpus: list[GpuReport] = []  # as the last heartbeat reported them (name, memory, utilisation)
    snapshot_request: RequestedSnapshot | None = None
    # A replacement (``replaces`` set): its predecessor's last sign of life, and the restore it reported;
    # with created_at, running_at, first_heartbeat_at and ready_at they give the failover's phases.
    lost_at: AwareDatetime | None = None
    restore_s: float | None = None

    @property
    def live(self) -> bool:
        return self.state in LIVE

    def cost_so_far(self, now: datetime) -> float:
        if self.running_at is None:
            return 0.0
        end = self.ended_at or now
        hours = max((end - self.running_at).total_seconds(), 0.0) / 3600
        return round(hours * self.price_per_hour, 6)

    def worst_case_cost(self) -> float:
        start = self.running_at or self.created_at
        return max((self.deadline - start).total_seconds(), 0.0) / 3600 * self.price_per_hour


def transition(record: InstanceRecord, dst: State, now: datetime, **changes: object) -> InstanceRecord:
    """The record moved to ``dst`` with ``changes`` applied. Raises InvalidTransition if not allowed."""
    if not can_transition(record.state, dst):
        raise InvalidTransition(f"{record.instance_id}: {record.state} -> {dst} is not allowed")
    update: dict[str, object] = {"state": dst, "updated_at": now, **changes}
    if dst in (State.RUNNING, State.READY) and record.running_at is None and "running_at" not in changes:
        update["running_at"] = now
    if dst in ENDED and record.ended_at is None and "ended_at" not in changes:
        update["ended_at"] = now
    return record.model_copy(update=update)


@dataclass(frozen=True)
class Readiness:
    """What one heartbeat's component reports mean for the record."""

    ready: bool
    failure: tuple[str, str] | None = None  # (reason code, detail): the instance must go


def readiness(
    launched_for: Sequence[str],
    expects_package: bool,
    reports: Mapping[str, ComponentReport],
    failure: InstanceFailure | None,
) -> Readiness:
    """READY only when every component the instance was launched for is healthy; a package that cannot
    run, or a component that gave up (not healthy by its deadline), fails the instance."""
    if failure is not None:
        return Readiness(False, (failure.reason, failure.detail))
    gave_up = sorted(n for n, r in reports.items() if r.gave_up)
    if gave_up:
        detail = "; ".join(f"{n}: {reports[n].error or 'not healthy'}" for n in gave_up)
        return Readiness(False, ("component_unhealthy", detail[:500]))
    if not expects_package and not reports:
        return Readiness(True)  # no package: the first heartbeat is all there is to wait for
    needed = list(launched_for) or list(reports)
    return Readiness(bool(needed) and all(n in reports and reports[n].state == "healthy" for n in needed))


def new_record(
    *,
    instance_id: str,
    lease_id: str,
    deployment_id: str,
    event_id: str,
    provider: ProviderName,
    now: datetime,
    max_runtime_s: float,
    **extra: object,
) -> InstanceRecord:
    return InstanceRecord(
        instance_id=instance_id,
        lease_id=lease_id,
        deployment_id=deployment_id,
        event_id=event_id,
        provider=provider,
        state=State.REQUESTED,
        created_at=now,
        updated_at=now,
        deadline=now + timedelta(seconds=max_runtime_s),
        **extra,
    )


class SnapshotState(StrEnum):
    UPLOADING = "UPLOADING"  # URLs issued, the instance is uploading
    VERIFIED = "VERIFIED"  # every object checked against the manifest: restorable
    FAILED = "FAILED"  # never completed or did not verify (an alert was raised)
    CORRUPT = "CORRUPT"  # verified once, later found damaged by a restore
    DELETED = "DELETED"  # retention removed its objects


class SnapshotRecord(BaseModel):
    """One snapshot of a lease's state (collection ``snapshots``, doc id = snapshot_id)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    snapshot_id: str
    lease_id: str
    instance_id: str
    deployment_id: str
    state: SnapshotState
    created_at: AwareDatetime
    updated_at: AwareDatetime
    parts: int = 0
    objects: list[str] = []  # full object names, the manifest last
    manifest_sha256: str | None = None
    size_bytes: int = 0  # compressed, in the bucket
    raw_bytes: int = 0  # file content before compression
    files: int = 0
    reason: str | None = None  # why FAILED or CORRUPT
    verified_at: AwareDatetime | None = None
    trigger: str | None = None  # why the instance took it (wire.snapshot.SnapshotTrigger); None: recorded before


class Lease(BaseModel):
    """An agent's claim on capacity (collection ``leases``). Expired = its instances are reaped."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    lease_id: str
    deployment_id: str
    expires_at: AwareDatetime
    renewed_at: AwareDatetime
    holder: str = ""
    released: bool = False

    def expired(self, now: datetime) -> bool:
        return self.released or now >= self.expires_at


class Hibernation(BaseModel):
    """A lease whose components sleep in a verified snapshot (collection ``hibernations``, doc id = lease_id):
    its instance was destroyed after the snapshot was verified; the lease's next instance restores it.
    Removed once an instance of the lease is READY again."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    lease_id: str
    deployment_id: str
    snapshot_id: str
    instance_id: str  # the instance destroyed
    components: list[str] = []
    snapshot_created_at: AwareDatetime
    size_bytes: int = 0
    raw_bytes: int = 0
    hibernated_at: AwareDatetime


class RestorePin(BaseModel):
    """``spotleash snapshot restore``: the lease's next restore uses this snapshot instead of the latest
    (collection ``restore_pins``, doc id = lease_id). Removed once an instance reports it restored."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    lease_id: str
    deployment_id: str
    snapshot_id: str
    pinned_at: AwareDatetime
