"""Every message on every topic, as pydantic models, and a parser that never raises.

``parse_event(raw, Model)`` returns either the model or a ``Rejected`` carrying a precise,
machine-readable reason (``bad_json``, ``invalid``, ``unknown_version``, ``oversize``,
``wrong_kind``, ``not_an_object``, ``bad_encoding``) so that an entry point can ack,
record and dead-letter bad input instead of crash-looping on it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from spotleash.clock import utcnow
from spotleash.providers import ProviderName
from spotleash.wire.ids import Id, new_id
from spotleash.wire.snapshot import SnapshotAsk

SCHEMA_VERSION = 1
MAX_EVENT_BYTES = 32 * 1024
class Event(BaseModel):
    # allow_inf_nan=False: JSON has no Infinity/NaN; pydantic would serialise them as null and the
    # event would no longer round-trip (and a NaN slips past every ge/le bound).
    model_config = ConfigDict(extra="forbid", frozen=True, str_max_length=2048, allow_inf_nan=False)
    KIND: ClassVar[str] = ""

    schema_version: Literal[1] = 1
    event_id: Id = Field(default_factory=new_id)
    created_at: AwareDatetime = Field(default_factory=utcnow)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class Component(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9_.-]+$")]
    ram_gb: Annotated[float, Field(gt=0, le=1024)] = 4.0
    gpu: bool = False


Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
ReasonCode = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")]


class DemandEvent(Event):
    KIND: ClassVar[str] = "demand"
    kind: Literal["demand"] = "demand"
    lease_id: Id
    # pressure: the kernel reported memory pressure (PSI, the macOS level) — newer agents only; older
    # messages (threshold, predictive, ...) parse as before.
    trigger: Literal["threshold", "predictive", "pressure", "manual", "failover", "request"]
    ram_percent: Annotated[float, Field(ge=0, le=100)]
    components: Annotated[list[Component], Field(min_length=1, max_length=32)]
    provider: ProviderName | None = None  # None: the control plane chooses
    # sha256 of the lease's route credential (spotleash.router.channel): the instance's TLS front admits
    # only requests carrying the credential itself, which never leaves the user's machine. None: no router.
    route_credential_sha256: Sha256Hex | None = None
    # A failover demand (published by the reaper or the heartbeat, launched by on_demand, the one function
    # allowed to create instances): the lost instance it replaces and that one's last sign of life.
    replaces: Id | None = None
    lost_at: AwareDatetime | None = None
    # A dry run (``spotleash check``): on_demand decides as for a real demand and audits ``demand_dry_run``
    # with what it would do; it records no instance and calls no provider.
    dry_run: bool = False

    @model_validator(mode="after")
    def _replaces_only_on_failover(self) -> DemandEvent:
        if self.replaces is not None and self.trigger != "failover":
            raise ValueError("replaces is only for a failover demand (trigger 'failover')")
        return self

    @field_validator("components")
    @classmethod
    def _unique_names(cls, v: list[Component]) -> list[Component]:
        names = [c.name for c in v]
        if len(set(names)) != len(names):
            raise ValueError("component names must be unique")
        return v

    @property
    def needs_gpu(self) -> bool:
        return any(c.gpu for c in self.components)

    @property
    def ram_gb(self) -> float:
        return sum(c.ram_gb for c in self.components)


class ReleaseEvent(Event):
    KIND: ClassVar[str] = "release"
    kind: Literal["release"] = "release"
    lease_id: Id
    instance_id: Id | None = None  # None: every instance of the lease
    reason: Annotated[str, Field(max_length=200)] = "released"


class LeaseEvent(Event):
    KIND: ClassVar[str] = "lease"
    kind: Literal["lease"] = "lease"
    lease_id: Id
    ttl_s: Annotated[float, Field(gt=0, le=3600)]
    holder: Annotated[str, Field(max_length=200)] = ""


class ReapTick(Event):
    KIND: ClassVar[str] = "reap"
    kind: Literal["reap"] = "reap"
    lease_id: Id | None = None  # the scheduler's ticks name no lease; an agent's names its own
    dry_run: bool = False
    force: bool = False  # lets a reap delete past the mass-deletion guard
    # An agent's router lost this instance without notice (``reason``, e.g. ``probe_failed``): the reap reads
    # its record and asks its provider in this pass (outbid, deleted, frozen), not when its beats run out.
    instance_id: Id | None = None
    reason: ReasonCode | None = None
    detail: Annotated[str, Field(max_length=300)] = ""

    @model_validator(mode="after")
    def _named_instance(self) -> ReapTick:
        if (self.instance_id is None) != (self.reason is None):
            raise ValueError("instance_id and reason go together: a tick naming an instance says why")
        if self.instance_id is not None and self.force:
            raise ValueError("a tick naming an instance cannot force past the mass-deletion guard")
        return self


PhaseName = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[a-z][a-z0-9_]*$")]
ComponentName = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9_.-]+$")]
ComponentState = Literal["starting", "healthy", "failing"]


class ComponentReport(BaseModel):
    """One component's state as its instance sees it (also kept on the instance record)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    state: ComponentState
    error: Annotated[str, Field(max_length=500)] | None = None  # the last thing that went wrong
    endpoint: Annotated[str, Field(max_length=270, pattern=r"^[A-Za-z0-9.\[\]:-]+:[0-9]{1,5}$")] | None = None
    gave_up: bool = False  # not healthy by its deadline: the instance cannot do the job it was rented for


class GpuReport(BaseModel):
    """One GPU of an instance as ``nvidia-smi`` reports it at a heartbeat (MiB and percent; None: "[N/A]")."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: Annotated[str, Field(min_length=1, max_length=128)]
    memory_total_mib: Annotated[int, Field(ge=0, le=10_000_000)] | None = None
    memory_used_mib: Annotated[int, Field(ge=0, le=10_000_000)] | None = None
    utilization_percent: Annotated[float, Field(ge=0, le=100)] | None = None


class InstanceFailure(BaseModel):
    """The instance cannot run its package at all (missing, unverified, failed to install)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reason: ReasonCode
    detail: Annotated[str, Field(max_length=500)] = ""


class Heartbeat(Event):
    KIND: ClassVar[str] = "heartbeat"
    kind: Literal["heartbeat"] = "heartbeat"
    lease_id: Id
    instance_id: Id
    preempted: bool = False
    backend_alive: bool = True
    cpu_percent: Annotated[float, Field(ge=0, le=100 * 1024)] = 0.0
    idle_s: Annotated[float, Field(ge=0)] = 0.0
    # Empty when the instance runs no package (then the first beat makes it READY, as before).
    components: Annotated[dict[ComponentName, ComponentReport], Field(max_length=32)] = {}
    failure: InstanceFailure | None = None
    # sha256 of the instance's TLS front certificate (DER), pinned at the first beat that carries one;
    # the router connects only to a front presenting exactly it. None: the instance runs no front.
    tls_fingerprint: Sha256Hex | None = None
    snapshot: SnapshotAsk | None = None  # a snapshot or restore step (spotleash.wire.snapshot); the reply answers
    # How the instance got its package running: when its own software started (the bootstrap) and how long
    # each step took, in seconds (fetch_s: download + sha256; install_s: verify, extract, venv, offline pip;
    # to_healthy_s: components started → all healthy). The READY audit entry keeps them (``bench/``).
    started_at: AwareDatetime | None = None
    timings: Annotated[dict[PhaseName, Annotated[float, Field(ge=0, le=86400)]], Field(max_length=16)] = {}
    # The instance's GPUs (empty on a box without nvidia-smi). Added after the first release: a beat without
    # GPUs goes out without the key (``wire_json``), byte for byte what a control plane of before expects.
    gpus: Annotated[list[GpuReport], Field(max_length=16)] = []

    def wire_json(self) -> str:
        """The body an instance posts: ``gpus`` left out when there are none (see the field)."""
        return self.model_dump_json(exclude=None if self.gpus else {"gpus"})


class BudgetAlert(BaseModel):
    """Cloud Billing's budget notification (its own schema, not ours)."""

    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)
    KIND: ClassVar[str] = "budget"

    budgetDisplayName: str = ""  # noqa: N815 - Google's field names
    costAmount: Annotated[float, Field(ge=0)]  # noqa: N815
    budgetAmount: Annotated[float, Field(gt=0)]  # noqa: N815
    alertThresholdExceeded: Annotated[float, Field(ge=0)] = 0.0  # noqa: N815
    costIntervalStart: str = ""  # noqa: N815
    currencyCode: str = ""  # noqa: N815 - the currency of both amounts (they are compared with each other only)


@dataclass(frozen=True)
class Rejected:
    """Why an event could not be parsed. ``reason`` is a short code; ``detail`` is for humans."""

    reason: str
    detail: str


M = TypeVar("M", bound=BaseModel)


def _first_errors(err: ValidationError, limit: int = 3) -> str:
    parts = []
    for e in err.errors()[:limit]:
        loc = ".".join(str(p) for p in e["loc"]) or "(root)"
        parts.append(f"{loc}: {e['msg']}")
    more = err.error_count() - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def parse_event(raw: bytes | str, model: type[M]) -> M | Rejected:
    """Parse one message body into ``model``. Never raises for bad input."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    if len(raw) > MAX_EVENT_BYTES:
        return Rejected("oversize", f"{len(raw)} bytes, limit is {MAX_EVENT_BYTES}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return Rejected("bad_encoding", f"not UTF-8: {e.reason} at byte {e.start}")
    try:
        data: Any = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        return Rejected("bad_json", f"not JSON: {e}"[:300])
    if not isinstance(data, dict):
        return Rejected("not_an_object", f"expected a JSON object, got {type(data).__name__}")
    version = data.get("schema_version")
    # type() check: True == 1 and 1.0 == 1 in Python, but neither is schema version 1.
    if issubclass(model, Event) and (type(version) is not int or version != SCHEMA_VERSION):
        return Rejected("unknown_version", f"schema_version {version!r}; this build reads {SCHEMA_VERSION}")
    kind = data.get("kind")
    expected = getattr(model, "KIND", "")
    if issubclass(model, Event) and kind != expected:
        return Rejected("wrong_kind", f"kind {kind!r} on a topic that carries {expected!r}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        return Rejected("invalid", _first_errors(e))
    except (ValueError, TypeError, RecursionError) as e:  # pydantic lets a few odd inputs through as these
        return Rejected("invalid", str(e)[:300])
