"""The provider registry: one name → implementation map, and what the rest of spotleash derives from it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from spotleash.config import Settings
from spotleash.providers import (
    PROVIDER_NAMES,
    PROVIDERS,
    ProviderName,
    build_provider,
    enabled_providers,
    provider_for,
    provider_info,
)
from spotleash.providers.base import LaunchSpec
from spotleash.wire.agent_config import (
    CONFIG_ENV,
    CONFIG_KEY,
    TOKEN_ENV,
    TOKEN_KEY,
    AgentConfig,
    env_values,
    metadata_values,
    without_agent_env,
)

REPO = Path(__file__).resolve().parents[3]


def test_every_registered_provider_names_a_class_that_builds_from_settings() -> None:
    assert PROVIDER_NAMES == ("gce", "vast")
    for name, info in PROVIDERS.items():
        assert info.name == name
        factory = info.factory()
        assert callable(factory.from_settings)
        assert getattr(factory, "name", None) == name  # the instances it reports carry the registry's name


def test_unknown_provider_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown provider 'aws'; known: gce, vast"):
        build_provider("aws", Settings())
    with pytest.raises(ValueError, match="unknown provider"):
        provider_info("")


def test_provider_name_type_accepts_exactly_the_registered_names() -> None:
    class M(BaseModel):
        provider: ProviderName

    for name in PROVIDER_NAMES:
        assert M(provider=name).provider == name
    with pytest.raises(ValidationError, match="unknown provider"):
        M(provider="aws")


def test_gpu_demands_go_to_the_gpu_provider_others_to_the_vm_provider() -> None:
    assert provider_for(gpu=True) == "vast" and provider_info("vast").gpu
    assert provider_for(gpu=False) == "gce" and not provider_info("gce").gpu


def test_enabled_providers_follow_the_settings() -> None:
    assert enabled_providers(Settings()) == ["gce"]
    assert enabled_providers(Settings(vast_api_key="k")) == ["gce", "vast"]


def _spec(token: str = "tok") -> LaunchSpec:
    return LaunchSpec(instance_id="sl-1", lease_id="l-1", deployment_id="d", deadline=datetime(2030, 1, 1, tzinfo=UTC),
                      max_run_s=60, heartbeat_url="http://cp/hb", heartbeat_token=token, heartbeat_interval_s=5,
                      extra_env={"A": "1"})


def test_both_transports_carry_the_one_agent_config() -> None:
    spec = _spec()
    md, env = metadata_values(spec), env_values(spec)
    assert AgentConfig.parse(md[CONFIG_KEY]) == AgentConfig.parse(env[CONFIG_ENV]) == AgentConfig.for_launch(spec)
    assert md[TOKEN_KEY] == env[TOKEN_ENV] == "tok" and env["A"] == "1"
    assert "tok" not in md[CONFIG_KEY] and json.loads(md[CONFIG_KEY])["instance_id"] == "sl-1"
    assert without_agent_env(env) == {"A": "1"}
    assert TOKEN_KEY not in metadata_values(_spec(token="")) and TOKEN_ENV not in env_values(_spec(token=""))
    assert {p.agent_transport for p in PROVIDERS.values()} == {"metadata", "env"}


def test_control_plane_import_path_does_not_load_paramiko() -> None:
    """The functions import the services and warm the providers up; none of it may load paramiko."""
    code = textwrap.dedent(f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("main", {str(REPO / "functions" / "main.py")!r})
        main = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(main)
        import spotleash.services.heartbeat
        from spotleash.services.entry import _warm
        assert set(_warm) == {{"gce", "vast"}}, _warm
        print("paramiko" in sys.modules)
    """)
    env = {**os.environ, "SPOTLEASH_HEARTBEAT_SIGNING_KEY": "k" * 32, "SPOTLEASH_HEARTBEAT_URL": "http://127.0.0.1:9/hb",
           "SPOTLEASH_COMPUTE_ENDPOINT": "http://127.0.0.1:9", "SPOTLEASH_VAST_API_KEY": "k",
           "SPOTLEASH_VAST_URL": "http://127.0.0.1:9"}
    env.pop("SPOTLEASH_CONFIG_FILE", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                         cwd=REPO, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_the_idle_cpu_threshold_reaches_the_instance() -> None:
    from dataclasses import replace

    spec = replace(_spec(), idle_cpu_percent=55.0)
    assert AgentConfig.parse(env_values(spec)[CONFIG_ENV]).idle_cpu_percent == 55.0
    assert AgentConfig.parse(metadata_values(spec)[CONFIG_KEY]).idle_cpu_percent == 55.0
