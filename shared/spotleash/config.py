"""One settings object, read from ``SPOTLEASH_*`` environment variables and an optional TOML file.

The sources, highest first: explicit overrides, the environment, the TOML file (named by
``SPOTLEASH_CONFIG_FILE``, else ``spotleash.toml`` found upward; read by pydantic-settings' own TOML
source, its ``[app]`` table turned into settings by ``appspec``), the defaults. ``load_settings()``
validates everything at start and turns every failure (a wrong value, a file that is missing,
unreadable or not TOML) into one ``ConfigError`` whose message names the variable and what to fix.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from spotleash.agent.memory import SOURCES, MemorySourceName
from spotleash.errors import ConfigError
from spotleash.packaging import appspec
from spotleash.wire.ids import ID_PATTERN
from spotleash.wire.package import Offload

ENV_PREFIX = "SPOTLEASH_"
CONFIG_FILE_VAR = "SPOTLEASH_CONFIG_FILE"
LABEL_VALUE = ID_PATTERN  # a deployment id is a label value, as every id is


class Settings(BaseSettings):
    # allow_inf_nan=False: "inf" would pass every ge/gt bound and silently switch a guard off
    # (SPOTLEASH_HEARTBEAT_TIMEOUT_S=inf never reaps, SPOTLEASH_MONTHLY_BUDGET_USD=inf never refuses).
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True, allow_inf_nan=False)

    # --- where we run
    project: str = Field("spotleash-local", description="Google Cloud project id")
    deployment_id: str = Field("default", pattern=LABEL_VALUE, description="label value marking our instances")
    region: str = Field("us-central1", description="region of the functions and Firestore")
    zones: list[str] = Field(
        default_factory=lambda: ["us-central1-a", "us-central1-b", "us-central1-c"],
        min_length=1,
        description="zones tried in order when one has no Spot capacity (JSON list)",
    )

    # --- the local agent
    ram_threshold: float = Field(0.85, gt=0, le=1, description="share of the memory limit (the agent's cgroup, else "
                                 "the machine) in use, reclaimable cache not counted, that triggers demand: "
                                 "the headroom target is 1 minus this")
    ram_release_below: float = Field(0.70, gt=0, le=1, description="release once usage stays below this")
    memory_source: MemorySourceName = Field(
        "auto", description="where the agent reads memory: auto (its own cgroup when that has a limit, else the "
                            "host; PSI where present; macOS's pressure level on a Mac), or one of "
                            + ", ".join(SOURCES))
    memory_psi_pressure: float = Field(30.0, gt=0, le=100, description="PSI 'some avg10' (% of the last 10 s some "
                                       "task waited for memory) at or above which memory is under pressure: "
                                       "demand at once, whatever the headroom")
    release_hold_s: float = Field(300.0, ge=0, description="how long usage must stay low before release")
    sample_interval_s: float = Field(1.0, gt=0, description="how often the agent samples RAM")
    predict_window_s: float = Field(60.0, gt=0, description="trend window of the predictive trigger")
    predict_horizon_s: float = Field(120.0, ge=0, description="demand early if the trend crosses within this")
    demand_cooldown_s: float = Field(120.0, ge=0, description="minimum time between two demands of one agent")
    lease_renew_s: float = Field(30.0, gt=0, description="how often the agent renews its lease")
    lease_ttl_s: float = Field(90.0, gt=0, description="a lease not renewed for this long expires")
    shutdown_budget_s: float = Field(10.0, gt=0, description="time the agent may spend releasing on exit")
    components: list[str] = Field(
        default_factory=lambda: ["vision", "ml_models", "chatbots"], description="parts of the app to move"
    )
    component_ram_gb: dict[str, float] = Field(
        default_factory=lambda: {"vision": 4.0, "ml_models": 8.0, "chatbots": 4.0},
        description="RAM (GB) each component needs; components not listed get 4 (JSON object)",
    )
    gpu_components: list[str] = Field(
        default_factory=list, description="components that need a GPU (a demand naming one goes to VAST)"
    )
    component_offload: dict[str, Offload] = Field(
        default_factory=dict, description='per component: "default" (may move when memory runs short), "keep" '
                                          '(a remote copy may serve it, the local copy keeps running) or "never" '
                                          "(stays); unlisted: default (JSON object; from [app] offload)")
    package_bucket: str | None = Field(None, description="Cloud Storage bucket of app packages (the local stack sets it)")
    package_fetch_retry_s: float = Field(
        300.0, gt=0, le=86400,
        description="time an instance spends retrying its package download while Cloud Storage fails (then it fails "
                    "with package_unavailable)")
    package_channel: str = Field("main", pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$",
                                 description="channel whose latest-<channel>.txt pointer names the package")
    state_dir: Path = Field(Path.home() / ".spotleash", description="lock files and the local stack's env file")
    router_admin_port: int | None = Field(8190, ge=1, le=65535, description="loopback port of the agent's router: "
                                          "/routes (spotleash status) and /metrics (Prometheus)")
    snapshot_keep: int = Field(3, ge=1, description="verified snapshots kept per lease; older ones are deleted")
    snapshot_url_ttl_s: float = Field(900.0, ge=60, le=7 * 86400,
                                      description="life of the signed URLs an instance moves a snapshot with")
    snapshot_upload_timeout_s: float = Field(3600.0, gt=0, description="an upload unfinished this long failed")
    idle_after_s: float = Field(0.0, ge=0, description="an instance idle this long (no request served, CPU low) "
                                "is snapshotted and destroyed, its lease HIBERNATED until the next demand; 0: off")
    idle_cpu_percent: float = Field(10.0, ge=0, le=100, description="an instance counts as busy while its CPU use, "
                                    "averaged between two heartbeats, is at or above this percent of all its cores "
                                    "(0: CPU never keeps it busy, only requests and GPUs do)")
    wake_on_request: bool = Field(False, description="the agent's router wakes a HIBERNATED lease when a request "
                                  "for one of its components arrives (it serves the request locally meanwhile)")
    router_hold_s: float = Field(0.0, ge=0, le=600, description="a request no target can serve (a component with no "
                                 "local copy while its instance wakes or is replaced) waits this long for one "
                                 "before the router answers 503 with Retry-After; 0: answer at once")
    snapshot_before_deadline_s: float = Field(600.0, ge=0, description="an instance is asked for a snapshot this "
                                              "long before its max-runtime deadline (needs the bucket); 0: never")
    preemption_grace_s: float = Field(30.0, ge=0, le=300,
                                      description="a preempted instance's snapshot asks are still answered this "
                                                  "long after its notice (GCE gives 30 s before hard off); then it "
                                                  "is deleted. 0: deleted at the notice, its last snapshot lost")
    snapshot_interval_s: float = Field(900.0, ge=0, le=7 * 86400,
                                       description="an instance snapshots its state paths this often, when they "
                                                   "changed (0: no periodic snapshots)")

    # --- launching
    machine_type: str = Field("e2-highmem-4", description="smallest Spot machine type to launch")
    vm_service_account: str | None = Field(
        None, description="service account attached to VMs (logs, package read; Terraform's sl-vm)"
    )
    max_runtime_s: int = Field(3 * 3600, ge=60, description="hard cap on an instance's life")
    gpu_names: list[str] = Field(
        default_factory=lambda: ["RTX 4090", "RTX 3090", "A100 PCIE"], description="acceptable VAST GPU models"
    )
    gpu_min_vram_gb: float = Field(16.0, ge=0, description="least GPU memory")
    gpu_max_dph: float = Field(1.0, gt=0, description="most we pay per GPU hour")
    gpu_min_reliability: float = Field(0.95, ge=0, le=1, description="least VAST host reliability")
    gpu_image: str = Field("pytorch/pytorch:latest", description="container image of a GPU box")
    max_instances_per_lease: int = Field(2, ge=1, description="live instances one agent may hold")
    max_instances_total: int = Field(10, ge=1, description="live instances the deployment may hold")
    monthly_budget_usd: float = Field(50.0, gt=0, description="launches must keep worst-case spend under this")
    launch_retry_s: float = Field(20.0, ge=0, description="time a launch spends retrying transient errors")

    # --- reaping
    heartbeat_interval_s: float = Field(30.0, gt=0, description="how often an instance agent beats")
    heartbeat_timeout_s: float = Field(180.0, gt=0, description="an instance silent this long is reaped")
    provisioning_timeout_s: float = Field(600.0, gt=0, description="a launch stuck this long is reaped")
    orphan_grace_s: float = Field(300.0, ge=0, description="age before an unrecorded instance of ours is reaped")
    reap_max_deletions: int = Field(20, ge=1, description="a reap refuses to delete more unless forced")
    reap_dry_run: bool = Field(False, description="the reaper decides and audits but deletes nothing")

    # --- endpoints (unset = the real service)
    compute_endpoint: str | None = Field(None, description="Compute Engine API endpoint (unset: the real one)")
    billing_endpoint: str | None = Field(None, description="Cloud Billing Catalog gRPC endpoint HOST:PORT, "
                                         "without TLS (unset: the real one)")
    metadata_host: str | None = Field(None, description="metadata server host (unset: the real one)")
    vast_url: str = Field("https://console.vast.ai", description="VAST.ai API base URL")
    vast_api_key: SecretStr | None = Field(None, description="VAST.ai API key (unset: GPU launches are off)")
    vast_interruptible: bool = Field(False, description="rent VAST GPUs as interruptible bids (spot): cheaper, "
                                     "can be outbid; the reaper then replaces them")
    heartbeat_url: str | None = Field(None, description="URL of the on_heartbeat function")
    heartbeat_signing_key: SecretStr | None = Field(None, description="derives each instance's heartbeat token")
    confirm_delete_s: float = Field(60.0, gt=0, description="how long a delete waits for the provider to confirm")
    budget_stop_all: bool = Field(True, description="a budget alert past 100 % makes the reaper stop everything")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="log level")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003 - pydantic-settings' signature
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources = [init_settings, env_settings]
        # spotleash.toml (named, or found upward): top-level settings plus what its [app] table implies
        file_path = appspec.find_config_file(os.environ.get(CONFIG_FILE_VAR))
        if file_path is not None:
            toml = config_file_source(settings_cls, file_path, named=bool(os.environ.get(CONFIG_FILE_VAR)))
            sources.append(InitSettingsSource(settings_cls, appspec.settings_values(toml.toml_data, file_path)))
        return tuple(sources)

    @model_validator(mode="after")
    def _coherent(self) -> Settings:
        if self.ram_release_below >= self.ram_threshold:
            raise ValueError(
                f"SPOTLEASH_RAM_RELEASE_BELOW ({self.ram_release_below}) must be lower than "
                f"SPOTLEASH_RAM_THRESHOLD ({self.ram_threshold}), or instances would flap"
            )
        unknown = sorted(set(self.component_offload) - set(self.components))
        if unknown:
            raise ValueError(f"SPOTLEASH_COMPONENT_OFFLOAD names {unknown}, which are not among the components "
                             f"{self.components}: fix the names or drop them")
        if self.lease_renew_s * 2 > self.lease_ttl_s:
            raise ValueError(
                f"SPOTLEASH_LEASE_TTL_S ({self.lease_ttl_s}) must be at least twice SPOTLEASH_LEASE_RENEW_S "
                f"({self.lease_renew_s}), so one lost renewal does not expire the lease"
            )
        if self.heartbeat_timeout_s < 2 * self.heartbeat_interval_s:
            raise ValueError(
                f"SPOTLEASH_HEARTBEAT_TIMEOUT_S ({self.heartbeat_timeout_s}) must be at least twice "
                f"SPOTLEASH_HEARTBEAT_INTERVAL_S ({self.heartbeat_interval_s})"
            )
        if self.idle_after_s > 0 and not self.package_bucket:
            raise ValueError(
                f"SPOTLEASH_IDLE_AFTER_S ({self.idle_after_s}) needs SPOTLEASH_PACKAGE_BUCKET: hibernation keeps "
                "the instance's state in that bucket's snapshots/ (set the bucket, or SPOTLEASH_IDLE_AFTER_S=0)"
            )
        if self.idle_after_s > 0 and self.idle_after_s + 2 * self.heartbeat_interval_s >= self.max_runtime_s:
            raise ValueError(
                f"SPOTLEASH_IDLE_AFTER_S ({self.idle_after_s}) plus two heartbeats must stay under "
                f"SPOTLEASH_MAX_RUNTIME_S ({self.max_runtime_s}): the cap would always come first"
            )
        return self


def _explain(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "settings"
        var = f"{ENV_PREFIX}{loc.upper()}" if e["loc"] else "settings"
        secret = any(m in loc.lower() for m in ("key", "token", "secret", "password"))
        got = "<hidden>" if secret or isinstance(e.get("input"), dict) else repr(e.get("input"))
        lines.append(f"{var}: {e['msg']} (got {got})")
    return "invalid spotleash configuration — fix these:\n  " + "\n  ".join(lines)


def config_file_source(settings_cls: type[BaseSettings], path: Path, *, named: bool = True) -> TomlConfigSettingsSource:
    """pydantic-settings' TOML source for ``path``; every way the file can fail is one ConfigError
    naming SPOTLEASH_CONFIG_FILE, or the file found upward (the source itself would skip a missing
    file or a directory)."""
    path = path.expanduser()
    where = f"{CONFIG_FILE_VAR} points to {path}" if named else f"{path} (found as {appspec.CONFIG_NAME})"
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError) as e:
        raise ConfigError(f"{where}, which does not exist") from e
    except PermissionError as e:  # a folder on the way may not be entered
        raise ConfigError(f"{where}, which this user may not reach (permission denied)") from e
    except OSError as e:
        raise ConfigError(f"{where}, which cannot be read: {e.strerror or e}") from e
    if stat.S_ISDIR(mode):
        raise ConfigError(f"{where}, which is a directory, not a TOML file")
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{where}, which is not a regular file")
    try:
        return TomlConfigSettingsSource(settings_cls, toml_file=path)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{CONFIG_FILE_VAR if named else appspec.CONFIG_NAME}: {path} is not valid TOML: {e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{where}, which is not UTF-8 text (byte {e.object[e.start]:#04x} at offset "
                          f"{e.start}): a TOML file must be UTF-8") from e
    except PermissionError as e:
        raise ConfigError(f"{where}, which this user may not read (permission denied)") from e
    except OSError as e:
        raise ConfigError(f"{where}, which cannot be read: {e.strerror or e}") from e


def load_settings(**overrides: Any) -> Settings:
    """Settings from explicit overrides (highest), the environment, the optional file, the defaults."""
    try:
        return Settings(**overrides)
    except ValidationError as e:
        raise ConfigError(_explain(e)) from e
    except SettingsError as e:  # a list/dict variable that is not JSON: pydantic-settings fails before validating
        m = re.search(r'field "(\w+)"', str(e))
        var = f"{ENV_PREFIX}{m.group(1).upper()}" if m else "a SPOTLEASH_ variable"
        raise ConfigError(f"invalid spotleash configuration — fix these:\n  {var}: must be JSON, "
                          f"e.g. '[\"us-central1-a\", \"us-central1-b\"]' for a list ({e})") from e


def secret_env_vars() -> frozenset[str]:
    """The variables holding secrets: every ``SecretStr`` setting's, so a new secret is covered by its type."""
    return frozenset(f"{ENV_PREFIX}{name.upper()}" for name, f in Settings.model_fields.items()
                     if SecretStr in (f.annotation, *getattr(f.annotation, "__args__", ())))
