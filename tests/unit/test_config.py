"""Settings: field-report defaults, env and file sources, and a clear ConfigError for every bad value."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from spotleash.config import CONFIG_FILE_VAR, ENV_PREFIX, Settings, load_settings
from spotleash.errors import BadInput, ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No SPOTLEASH_* variable from the surrounding shell or another test leaks in."""
    for key in list(os.environ):
        if key.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(key)


def write_toml(tmp_path: Path, text: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "spotleash.toml"
    path.write_text(text)
    monkeypatch.setenv(CONFIG_FILE_VAR, str(path))
    return path


def test_defaults_follow_the_field_report() -> None:
    s = load_settings()
    assert s.ram_threshold == 0.85
    assert s.max_runtime_s == 3 * 3600
    assert s.machine_type == "e2-highmem-4"
    assert s.zones[0] == "us-central1-a"
    assert s.shutdown_budget_s == 10.0


def test_defaults_are_coherent_with_each_other() -> None:
    s = load_settings()
    assert s.ram_release_below < s.ram_threshold
    assert s.lease_ttl_s >= 2 * s.lease_renew_s
    assert s.heartbeat_timeout_s >= 2 * s.heartbeat_interval_s
    assert s.max_instances_per_lease <= s.max_instances_total
    assert s.vast_api_key is None and s.heartbeat_signing_key is None
    assert s.reap_dry_run is False and s.budget_stop_all is True


@pytest.mark.parametrize(
    ("var", "raw", "field", "value"),
    [
        ("SPOTLEASH_RAM_THRESHOLD", "0.9", "ram_threshold", 0.9),
        ("SPOTLEASH_MAX_RUNTIME_S", "600", "max_runtime_s", 600),
        ("SPOTLEASH_MACHINE_TYPE", "e2-highmem-8", "machine_type", "e2-highmem-8"),
        ("SPOTLEASH_ZONES", '["europe-west4-b"]', "zones", ["europe-west4-b"]),
        ("SPOTLEASH_SHUTDOWN_BUDGET_S", "3.5", "shutdown_budget_s", 3.5),
        ("SPOTLEASH_DEPLOYMENT_ID", "team-b", "deployment_id", "team-b"),
        ("SPOTLEASH_REAP_DRY_RUN", "true", "reap_dry_run", True),
        ("SPOTLEASH_LOG_LEVEL", "DEBUG", "log_level", "DEBUG"),
        ("spotleash_ram_threshold", "0.95", "ram_threshold", 0.95),  # read case-insensitively
    ],
)
def test_env_overrides(monkeypatch: pytest.MonkeyPatch, var: str, raw: str, field: str, value: object) -> None:
    monkeypatch.setenv(var, raw)
    assert getattr(load_settings(), field) == value


def test_secrets_are_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPOTLEASH_VAST_API_KEY", "vast-secret-123")
    s = load_settings()
    assert s.vast_api_key is not None and s.vast_api_key.get_secret_value() == "vast-secret-123"
    assert "vast-secret-123" not in repr(s) and "vast-secret-123" not in str(s.model_dump())


def test_toml_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_toml(tmp_path, 'ram_threshold = 0.9\nzones = ["us-east1-b", "us-east1-c"]\nmax_instances_total = 4\n',
               monkeypatch)
    s = load_settings()
    assert s.ram_threshold == 0.9 and s.zones == ["us-east1-b", "us-east1-c"] and s.max_instances_total == 4
    assert s.machine_type == "e2-highmem-4"  # untouched keys keep their defaults


@pytest.mark.parametrize("var", ["SPOTLEASH_RAM_THRESHOLD", "spotleash_ram_threshold"])
def test_env_beats_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, var: str) -> None:
    write_toml(tmp_path, "ram_threshold = 0.9\nmax_instances_total = 4\n", monkeypatch)
    monkeypatch.setenv(var, "0.95")
    s = load_settings()
    assert s.ram_threshold == 0.95
    assert s.max_instances_total == 4  # the file still supplies what the environment does not


def test_explicit_overrides_beat_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_toml(tmp_path, "ram_threshold = 0.9\n", monkeypatch)
    monkeypatch.setenv("SPOTLEASH_RAM_THRESHOLD", "0.95")
    assert load_settings(ram_threshold=0.8).ram_threshold == 0.8


def test_an_incoherent_file_is_fixed_by_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_toml(tmp_path, "ram_release_below = 0.9\n", monkeypatch)
    with pytest.raises(ConfigError):
        load_settings()
    monkeypatch.setenv("SPOTLEASH_RAM_RELEASE_BELOW", "0.5")
    assert load_settings().ram_release_below == 0.5


def test_settings_are_frozen() -> None:
    s = load_settings()
    with pytest.raises(ValueError, match="frozen"):
        s.ram_threshold = 0.5  # type: ignore[misc]


BAD_ENV = [
    ("SPOTLEASH_RAM_THRESHOLD", "1.5"),
    ("SPOTLEASH_RAM_THRESHOLD", "0"),
    ("SPOTLEASH_RAM_THRESHOLD", "lots"),
    ("SPOTLEASH_RAM_THRESHOLD", "nan"),
    ("SPOTLEASH_RAM_RELEASE_BELOW", "0.9"),  # >= the threshold: flapping
    ("SPOTLEASH_RAM_RELEASE_BELOW", "0.85"),
    ("SPOTLEASH_LEASE_TTL_S", "59"),  # < 2 x the 30 s renewal
    ("SPOTLEASH_LEASE_RENEW_S", "46"),
    ("SPOTLEASH_LEASE_RENEW_S", "0"),
    ("SPOTLEASH_HEARTBEAT_TIMEOUT_S", "59"),  # < 2 x the 30 s interval
    ("SPOTLEASH_HEARTBEAT_TIMEOUT_S", "inf"),  # would never reap a silent instance
    ("SPOTLEASH_HEARTBEAT_INTERVAL_S", "91"),
    ("SPOTLEASH_MAX_RUNTIME_S", "59"),
    ("SPOTLEASH_MAX_RUNTIME_S", "3h"),
    ("SPOTLEASH_MONTHLY_BUDGET_USD", "0"),
    ("SPOTLEASH_MONTHLY_BUDGET_USD", "inf"),  # would switch the budget guard off
    ("SPOTLEASH_SHUTDOWN_BUDGET_S", "0"),
    ("SPOTLEASH_ZONES", "[]"),
    ("SPOTLEASH_ZONES", "us-central1-a"),  # not JSON
    ("SPOTLEASH_DEPLOYMENT_ID", "Team B"),
    ("SPOTLEASH_DEPLOYMENT_ID", "x" * 64),
    ("SPOTLEASH_MAX_INSTANCES_TOTAL", "0"),
    ("SPOTLEASH_MAX_INSTANCES_PER_LEASE", "-1"),
    ("SPOTLEASH_REAP_MAX_DELETIONS", "0"),
    ("SPOTLEASH_ORPHAN_GRACE_S", "-1"),
    ("SPOTLEASH_GPU_MIN_RELIABILITY", "1.5"),
    ("SPOTLEASH_REAP_DRY_RUN", "maybe"),
    ("SPOTLEASH_LOG_LEVEL", "LOUD"),
]


@pytest.mark.parametrize(("var", "raw"), BAD_ENV, ids=[f"{v}={r[:12]}" for v, r in BAD_ENV])
def test_bad_env_names_the_variable(monkeypatch: pytest.MonkeyPatch, var: str, raw: str) -> None:
    monkeypatch.setenv(var, raw)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert var in str(info.value)
    assert "fix" in str(info.value)
    assert isinstance(info.value, BadInput)  # never retried


def test_every_problem_is_listed_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPOTLEASH_RAM_THRESHOLD", "2")
    monkeypatch.setenv("SPOTLEASH_MAX_RUNTIME_S", "1")
    monkeypatch.setenv("SPOTLEASH_LOG_LEVEL", "x")
    msg = str(pytest.raises(ConfigError, load_settings).value)
    for var in ("SPOTLEASH_RAM_THRESHOLD", "SPOTLEASH_MAX_RUNTIME_S", "SPOTLEASH_LOG_LEVEL"):
        assert var in msg


def test_coherence_error_names_both_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPOTLEASH_LEASE_TTL_S", "40")
    msg = str(pytest.raises(ConfigError, load_settings).value)
    assert "SPOTLEASH_LEASE_TTL_S" in msg and "SPOTLEASH_LEASE_RENEW_S" in msg


@pytest.mark.parametrize(
    ("renew", "ttl", "ok"), [("30", "60", True), ("30", "59.9", False), ("1", "2", True), ("2", "3", False)]
)
def test_lease_ttl_boundary(monkeypatch: pytest.MonkeyPatch, renew: str, ttl: str, ok: bool) -> None:
    monkeypatch.setenv("SPOTLEASH_LEASE_RENEW_S", renew)
    monkeypatch.setenv("SPOTLEASH_LEASE_TTL_S", ttl)
    if ok:
        assert load_settings().lease_ttl_s == float(ttl)
    else:
        pytest.raises(ConfigError, load_settings)


@pytest.mark.parametrize(("interval", "timeout", "ok"), [("30", "60", True), ("30", "59", False)])
def test_heartbeat_timeout_boundary(monkeypatch: pytest.MonkeyPatch, interval: str, timeout: str, ok: bool) -> None:
    monkeypatch.setenv("SPOTLEASH_HEARTBEAT_INTERVAL_S", interval)
    monkeypatch.setenv("SPOTLEASH_HEARTBEAT_TIMEOUT_S", timeout)
    if ok:
        assert load_settings().heartbeat_timeout_s == float(timeout)
    else:
        pytest.raises(ConfigError, load_settings)


@pytest.mark.parametrize(
    ("text", "var"),
    [
        ("ram_threshold = 7\n", "SPOTLEASH_RAM_THRESHOLD"),
        ("bogus_key = 1\n", "SPOTLEASH_BOGUS_KEY"),  # a typo in the file is refused, not ignored
        ('zones = "us-central1-a"\n', "SPOTLEASH_ZONES"),
        ("ram_threshold = = 0.9\n", CONFIG_FILE_VAR),  # not TOML
    ],
)
def test_bad_file_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, var: str) -> None:
    write_toml(tmp_path, text, monkeypatch)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert var in str(info.value)


def test_missing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_FILE_VAR, str(tmp_path / "nope.toml"))
    msg = str(pytest.raises(ConfigError, load_settings).value)
    assert CONFIG_FILE_VAR in msg and "nope.toml" in msg


@pytest.mark.parametrize("bad", [("SPOTLEASH_RAM_RELEASE_BELOW", "0.99"), ("SPOTLEASH_MAX_RUNTIME_S", "1")])
@pytest.mark.parametrize("source", ["env", "file"])
def test_a_secret_never_appears_in_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, bad: tuple[str, str]
) -> None:
    secret = "s3cr3t-vast-key-value"
    if source == "env":
        monkeypatch.setenv("SPOTLEASH_VAST_API_KEY", secret)
        monkeypatch.setenv("SPOTLEASH_HEARTBEAT_SIGNING_KEY", secret + "2")
    else:
        write_toml(tmp_path, f'vast_api_key = "{secret}"\nheartbeat_signing_key = "{secret}2"\n', monkeypatch)
    monkeypatch.setenv(*bad)  # a model-level error (the first) carries every value as its input
    msg = str(pytest.raises(ConfigError, load_settings).value)
    assert bad[0] in msg
    assert secret not in msg


def test_a_badly_typed_secret_is_not_echoed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write_toml(tmp_path, 'vast_api_key = ["leaky-secret"]\n', monkeypatch)
    msg = str(pytest.raises(ConfigError, load_settings).value)
    assert "SPOTLEASH_VAST_API_KEY" in msg and "leaky-secret" not in msg


def test_settings_class_directly_reads_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Code that builds Settings() itself (tests, tools) sees the same environment."""
    monkeypatch.setenv("SPOTLEASH_MACHINE_TYPE", "e2-highmem-2")
    assert Settings().machine_type == "e2-highmem-2"


APP_WITH_OFFLOAD = """
[app]
name = "thumbs"
[[app.components]]
name = "web"
command = ["python", "web.py"]
port = 8101
offload = "never"
[[app.components]]
name = "model"
command = ["python", "model.py"]
port = 8102
ram_gb = 6
[[app.components]]
name = "cache"
command = ["python", "cache.py"]
port = 8103
offload = "keep"
"""


def test_offload_comes_from_the_app_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_toml(tmp_path, APP_WITH_OFFLOAD, monkeypatch)
    s = load_settings()
    assert s.component_offload == {"web": "never", "cache": "keep"} and s.memory_source == "auto"


def test_a_bad_offload_names_the_component_and_the_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_toml(tmp_path, APP_WITH_OFFLOAD.replace('offload = "never"', 'offload = "sometimes"'), monkeypatch)
    with pytest.raises(ConfigError) as e:
        load_settings()
    msg = str(e.value)
    assert 'app.components[0] ("web").offload' in msg and "'default', 'keep' or 'never'" in msg and "sometimes" in msg


def test_an_unknown_memory_source_lists_the_known_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPOTLEASH_MEMORY_SOURCE", "swap")
    with pytest.raises(ConfigError, match="SPOTLEASH_MEMORY_SOURCE.*auto, host, psi, cgroup-v1, cgroup-v2, macos"):
        load_settings()
