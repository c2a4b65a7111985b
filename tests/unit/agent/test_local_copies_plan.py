"""What the agent runs locally, and with which environment (pure: ``agent.local_copies``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from spotleash.agent.local_copies import (
    COMPONENT_ENV,
    LOCAL_MARKER_ENV,
    LocalCopies,
    LocalCopyError,
    local_env,
    local_plan,
    log_dir_of,
    marker_of,
)
from spotleash.errors import ConfigError
from spotleash.wire.package import AppSpec


def app(*components: dict[str, object]) -> AppSpec:
    return AppSpec.model_validate({"name": "a", "components": list(components)})


def comp(name: str, port: int, **extra: object) -> dict[str, object]:
    return {"name": name, "command": ["python", f"{name}.py"], "port": port, **extra}


def test_the_agent_runs_each_local_url_component_from_its_command_env_and_local_port() -> None:
    spec = app(comp("web", 8101, local_url="http://127.0.0.1:8301", env={"MODEL": "small"}, health_path="/ok",
                    start_timeout_s=30),
               comp("mine", 8102, local_url="http://localhost:8302", local_copy="user"),
               comp("far", 8103, local_url="http://10.0.0.5:8303"),
               comp("remote-only", 8104),
               comp("unasked", 8105, local_url="http://127.0.0.1:8305"))
    plan = local_plan(spec, ["web", "mine", "far", "remote-only", "ghost"])
    (web,) = plan.launches
    assert (web.name, web.argv, web.port, web.health_path, web.timeout_s) == (
        "web", ("python", "web.py"), 8301, "/ok", 30)  # the local_url's port, not the instance's 8101
    assert web.env == {"HOST": "127.0.0.1", "MODEL": "small", COMPONENT_ENV: "web"}
    assert plan.by_user == ("mine",)
    assert plan.none == {"far": 'local_url names another machine (10.0.0.5); set local_copy = "user" if you run it '
                                'there', "remote-only": "no local_url", "ghost": "not a component of [app]"}


def test_a_component_env_may_set_its_own_host() -> None:
    spec = app(comp("web", 8101, local_url="http://localhost:8301", env={"HOST": "0.0.0.0"}))
    assert local_plan(spec, ["web"]).launches[0].env["HOST"] == "0.0.0.0"
    spec = app(comp("web", 8101, local_url="http://localhost:8301"))
    assert local_plan(spec, ["web"]).launches[0].env["HOST"] == "127.0.0.1"


def test_local_env_drops_secrets_and_an_instance_marker_and_carries_its_own(tmp_path: Path) -> None:
    base = {"PATH": "/bin", "SPOTLEASH_SIGNING_KEY": "k", "SPOTLEASH_HEARTBEAT_TOKEN": "t",
            "SPOTLEASH_COMPONENT_OF": "sl-1", "HOME": "/home/u"}
    env = local_env(base, marker_of("me", tmp_path), frozenset({"SPOTLEASH_SIGNING_KEY"}))
    assert env == {"PATH": "/bin", "HOME": "/home/u", "PYTHONUNBUFFERED": "1",
                   LOCAL_MARKER_ENV: f"me@{tmp_path.resolve()}"}
    assert log_dir_of(tmp_path, "me") == tmp_path / "local" / "me"


def test_a_missing_app_tree_and_unknown_components_are_clear_errors(tmp_path: Path) -> None:
    plan = local_plan(app(comp("web", 8101, local_url="http://127.0.0.1:8301")), ["web"])
    with pytest.raises(ConfigError, match=r"is not a directory, so the local copies of web cannot start"):
        LocalCopies(plan, app_root=tmp_path / "gone", lease_id="me", state_dir=tmp_path)
    copies = LocalCopies(plan, app_root=tmp_path, lease_id="me", state_dir=tmp_path)
    try:
        with pytest.raises(LocalCopyError, match=r"runs no local copy of 'api' \(it runs: web\)"):
            copies.stop("api")
        with pytest.raises(LocalCopyError, match=r"runs no local copy of 'api'"):
            copies.start("api")
    finally:
        copies.close()


def test_local_copy_rejects_anything_but_agent_or_user() -> None:
    with pytest.raises(ValueError, match="local_copy"):
        app(comp("web", 8101, local_url="http://127.0.0.1:8301", local_copy="me"))
