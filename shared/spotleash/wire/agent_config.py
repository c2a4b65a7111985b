"""The instance agent's configuration: one model, one builder, one place for its key and variable names.

The control plane builds it from a ``LaunchSpec`` (``AgentConfig.for_launch``) and each provider
delivers it by its transport (``spotleash.providers.ProviderInfo.agent_transport``): as instance
metadata on GCE (``metadata_values``), as environment variables on VAST (``env_values``). The
instance agent, the VAST watchdog and the fakes read it back with ``AgentConfig.parse``.

The heartbeat token travels beside the JSON, never inside it; the token itself only authorises
heartbeats of its own instance. ``package_url`` (VAST only: a signed URL of one archive until the
instance's deadline) is a secret inside it: log ``to_json(safe=True)``, never the raw JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from spotleash.providers.base import LaunchSpec

CONFIG_KEY = "spotleash-config"  # GCE instance metadata key of the JSON
TOKEN_KEY = "spotleash-token"  # GCE instance metadata key of the heartbeat token
CONFIG_ENV = "SPOTLEASH_AGENT_CONFIG"  # environment variable of the JSON (VAST)
TOKEN_ENV = "SPOTLEASH_HEARTBEAT_TOKEN"  # environment variable of the heartbeat token (VAST)
FRONT_PORT = 8443  # the TLS front's port: the one port Terraform's firewall and VAST's port map open
FRONT_TAG = "spotleash-front"  # GCE network tag of every VM: Terraform's firewall rule for the front targets it


class AgentConfig(BaseModel):
    """What the control plane tells the agent (metadata ``spotleash-config`` or env, same JSON)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    instance_id: str = ""
    lease_id: str = ""
    deployment_id: str = ""
    heartbeat_url: str = ""
    heartbeat_interval_s: float = Field(30.0, gt=0, le=3600)
    deadline: AwareDatetime | None = None
    backend_cmd: list[str] | None = None
    # The package the instance runs (unset: heartbeats only). The sha256 is pinned at launch.
    package_sha256: str = Field("", pattern=r"^([0-9a-f]{64})?$")
    package_uri: str = ""  # gs://<bucket>/packages/<sha256>.tar.gz
    package_url: str = ""  # a V4 signed URL of that object (VAST: no Google identity on the box); secret
    blob_urls: dict[str, str] = {}  # layered package on VAST: blob sha256 → V4 signed URL; secrets
    package_fetch_retry_s: float = Field(300.0, gt=0, le=86400)  # download retries end after this (Cloud Storage down)
    components: list[str] = []  # the components this instance was launched for (empty: all of the package)
    advertise_host: str = ""  # host in the endpoints the user's machine reaches (unset: found on the box)
    # The authenticating TLS front (instance_agent.front): started before the components when set; it
    # admits requests carrying the credential whose sha256 this is. Unset: no front, components as before.
    route_credential_sha256: str = Field("", pattern=r"^([0-9a-f]{64})?$")
    front_port: int = Field(FRONT_PORT, ge=0, le=65535)  # the instance's one open port (0: any free one)
    state_paths: list[str] = []  # snapshotted and restored (empty: the package's [app] state_paths, else the
    # provider's default: /workspace on VAST, none on GCE; see instance_agent.keeper)
    # Snapshots (instance_agent.keeper): a periodic one every this many seconds, skipped while the state is
    # unchanged (0: none; requested and preemption snapshots are taken regardless).
    snapshot_interval_s: float = Field(0.0, ge=0, le=7 * 86400)
    # Idle (the heartbeat's idle_s, instance_agent.idle): the box is busy while CPU or any GPU is above these.
    idle_cpu_percent: float = Field(10.0, ge=0, le=100)
    idle_gpu_percent: float = Field(10.0, ge=0, le=100)

    @classmethod
    def for_launch(cls, spec: LaunchSpec) -> AgentConfig:
        return cls(
            instance_id=spec.instance_id, lease_id=spec.lease_id, deployment_id=spec.deployment_id,
            heartbeat_url=spec.heartbeat_url, heartbeat_interval_s=spec.heartbeat_interval_s,
            deadline=spec.deadline, route_credential_sha256=spec.route_credential_sha256,
            package_sha256=spec.package_sha256, package_uri=spec.package_uri,
            package_url=spec.package_url, blob_urls=dict(spec.blob_urls), components=list(spec.components),
            package_fetch_retry_s=spec.package_fetch_retry_s,
            snapshot_interval_s=spec.snapshot_interval_s, idle_cpu_percent=spec.idle_cpu_percent,
        )

    @classmethod
    def parse(cls, raw: str) -> AgentConfig:
        """The config from its JSON text. Raises pydantic's ValidationError when it is not one."""
        return cls.model_validate_json(raw)

    def to_json(self, *, safe: bool = False) -> str:
        """The JSON; ``safe``: without ``package_url`` and ``blob_urls`` (for logs)."""
        return self.model_dump_json(exclude_none=True, exclude={"package_url", "blob_urls"} if safe else None)


def metadata_values(spec: LaunchSpec) -> dict[str, str]:
    """The instance metadata items that carry the agent's config and token (GCE)."""
    values = {CONFIG_KEY: AgentConfig.for_launch(spec).to_json()}
    if spec.heartbeat_token:
        values[TOKEN_KEY] = spec.heartbeat_token
    return values


def env_values(spec: LaunchSpec) -> dict[str, str]:
    """The environment variables that carry the agent's config and token (VAST), after ``extra_env``."""
    env = {**spec.extra_env, CONFIG_ENV: AgentConfig.for_launch(spec).to_json()}
    if spec.heartbeat_token:
        env[TOKEN_ENV] = spec.heartbeat_token
    return env


def from_env(env: Mapping[str, str]) -> tuple[str | None, str]:
    """(config JSON or None, token) as the VAST transport delivers them."""
    return env.get(CONFIG_ENV), env.get(TOKEN_ENV, "")


def without_agent_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` less the agent's variables (a process that must not inherit another instance's config)."""
    return {k: v for k, v in env.items() if k not in (CONFIG_ENV, TOKEN_ENV)}
