"""The one protocol every provider implements, and the plain data that crosses it.

A provider *acts*: it never decides what to launch or delete. Ownership is carried by labels
on the instance itself, so that the reaper can find what we own without any record of ours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from spotleash.config import Settings

# Label keys (GCE label rules: lowercase, digits, '-', '_'; values <= 63 chars).
LABEL_MANAGED = "spotleash-managed"
LABEL_DEPLOYMENT = "spotleash-deployment"
LABEL_LEASE = "spotleash-lease"
LABEL_INSTANCE = "spotleash-instance"
MANAGED_VALUE = "true"


def ownership_labels(deployment_id: str, lease_id: str, instance_id: str) -> dict[str, str]:
    return {
        LABEL_MANAGED: MANAGED_VALUE,
        LABEL_DEPLOYMENT: deployment_id,
        LABEL_LEASE: lease_id,
        LABEL_INSTANCE: instance_id,
    }


class ProviderStatus(StrEnum):
    """Each provider maps its native states to these in exactly one place."""

    PENDING = "PENDING"  # being created / booting
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"  # not running but still exists (and may still bill for disk)
    TERMINATED = "TERMINATED"  # gone, or going with nothing left to pay
    UNKNOWN = "UNKNOWN"


@dataclass(frozen=True)
class GpuRequirements:
    gpu_names: tuple[str, ...] = ()
    min_vram_gb: float = 0.0
    max_dph: float = 1.0
    min_reliability: float = 0.95
    verified: bool = True
    num_gpus: int = 1

    @classmethod
    def from_settings(cls, settings: Settings) -> GpuRequirements:
        """The one place the ``SPOTLEASH_GPU_*`` settings become requirements."""
        return cls(gpu_names=tuple(settings.gpu_names), min_vram_gb=settings.gpu_min_vram_gb,
                   max_dph=settings.gpu_max_dph, min_reliability=settings.gpu_min_reliability)


@dataclass(frozen=True)
class LaunchSpec:
    """Everything a provider needs to create one instance. Built by the launcher."""

    instance_id: str
    lease_id: str
    deployment_id: str
    deadline: datetime  # the instance must be gone by then, whatever happens to us
    max_run_s: int  # remaining allowance at create time (GCE max_run_duration)
    machine_type: str = "e2-highmem-4"
    zones: tuple[str, ...] = ("us-central1-a",)
    gpu: GpuRequirements | None = None
    image: str = ""
    # Settings for the instance agent on the box. ``heartbeat_token`` is a secret: providers must
    # never put it in a label or log it.
    heartbeat_url: str = ""
    heartbeat_token: str = ""
    heartbeat_interval_s: float = 30.0
    extra_env: dict[str, str] = field(default_factory=dict)
    route_credential_sha256: str = ""  # the lease's route credential hash, for the instance's TLS front
    # The package the launch pinned (empty: heartbeats only) and the components it runs. ``package_url``
    # (a signed URL, for boxes with no Google identity) is a secret like the token.
    package_sha256: str = ""
    package_uri: str = ""
    package_url: str = ""
    blob_urls: dict[str, str] = field(default_factory=dict)  # layered package: blob sha256 → signed URL (secrets)
    components: tuple[str, ...] = ()
    package_fetch_retry_s: float = 300.0  # how long the instance retries its download (Cloud Storage failing)
    snapshot_interval_s: float = 0.0  # the instance's periodic snapshots (0: none; AgentConfig.snapshot_interval_s)
    idle_cpu_percent: float = 10.0  # CPU use at or above this keeps the instance busy (AgentConfig.idle_cpu_percent)

    @property
    def labels(self) -> dict[str, str]:
        return ownership_labels(self.deployment_id, self.lease_id, self.instance_id)


@dataclass(frozen=True)
class ProviderInstance:
    """What a provider reports about one instance."""

    provider: str
    provider_id: str  # GCE instance name / VAST contract id (as a string)
    status: ProviderStatus
    labels: dict[str, str]
    created_at: datetime | None = None
    zone: str | None = None
    machine: str | None = None
    price_per_hour: float = 0.0
    storage_per_hour: float = 0.0  # the part of price_per_hour that bills while stopped (VAST storage)
    ssh_host: str | None = None
    ssh_port: int | None = None
    native_status: str | None = None

    @property
    def instance_id(self) -> str | None:
        return self.labels.get(LABEL_INSTANCE)

    @property
    def lease_id(self) -> str | None:
        return self.labels.get(LABEL_LEASE)

    @property
    def owned(self) -> bool:
        return self.labels.get(LABEL_MANAGED) == MANAGED_VALUE


@dataclass(frozen=True)
class Inventory:
    """A provider listing. ``ok=False`` means unknown — never read it as "nothing is running"."""

    provider: str
    ok: bool
    instances: tuple[ProviderInstance, ...] = ()
    error: str | None = None


class Provider(Protocol):
    name: str

    def create(self, spec: LaunchSpec) -> ProviderInstance:
        """Create the instance, or return the existing one carrying ``spec.instance_id``'s label.

        Idempotent: calling it twice for one spec never makes two instances.
        Raises CapacityExhausted (tried every zone / offer), ProviderTransient, ProviderPermanent.
        """
        ...

    def get(self, provider_id: str) -> ProviderInstance | None:
        """The instance, or None once it is gone."""
        ...

    def find(self, instance_id: str) -> ProviderInstance | None:
        """The instance carrying our ``spotleash-instance`` label, or None."""
        ...

    def list_owned(self, deployment_id: str) -> list[ProviderInstance]:
        """Every instance carrying our labels for this deployment, all pages. Raises on failure."""
        ...

    def delete(self, provider_id: str) -> None:
        """Delete; already gone counts as success. Returns once the provider accepted it."""
        ...


@runtime_checkable
class HostKeyLearner(Protocol):
    """Providers whose instances are reached over SSH: read a host key at first contact, to pin it.

    Raises ProviderTransient (or OSError) when the box does not answer yet.
    """

    def learn_host_key(self, host: str, port: int, *, timeout_s: float = 10.0) -> str: ...
