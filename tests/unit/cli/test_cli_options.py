"""The CLI's conventions, read from the command tree itself: ``--json`` on every command with a result,
completion on, and ``local up``'s JSON without the secrets."""

from __future__ import annotations

from typing import Any

import pytest
import typer.completion
import typer.main
from typer.testing import CliRunner

from spotleash.cli.app import app, public_env

# Commands without --json, and why: the agent runs until it is stopped; the demo is a narrated story
# (its smoke report is a file); logs prints the component's own output, byte for byte; local down, dashboard...
# have one.
NO_RESULT = {"agent", "demo", "logs"}


def _commands(group: Any, prefix: str = "") -> dict[str, Any]:
    """Every leaf command by its full name (typer carries its own click: read it by duck typing)."""
    out: dict[str, Any] = {}
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            out.update(_commands(cmd, f"{prefix}{name} "))
        else:
            out[f"{prefix}{name}"] = cmd
    return out


def test_every_command_with_a_result_takes_json_as_a_flag() -> None:
    commands = _commands(typer.main.get_group(app))
    assert {"status", "down", "reap", "cost", "vast smoke", "local up", "local down", "local status",
            "snapshot list"} <= set(commands)
    for name, cmd in commands.items():
        flag = next((p for p in cmd.params if "--json" in getattr(p, "opts", ())), None)
        if name in NO_RESULT:
            continue
        assert flag is not None and flag.is_flag, f"`spotleash {name}` has no --json flag"


def test_completion_is_on(monkeypatch: pytest.MonkeyPatch) -> None:
    # The parent process names the shell (under ``make`` it is ``sh``, which typer does not complete): say bash.
    monkeypatch.setattr(typer.completion, "_get_shell_name", lambda: "bash")
    runner = CliRunner()
    script = runner.invoke(app, ["--show-completion", "bash"], prog_name="spotleash")
    assert script.exit_code == 0 and "_SPOTLEASH_COMPLETE=complete_bash" in script.output
    env = {"_SPOTLEASH_COMPLETE": "complete_bash", "COMP_WORDS": "spotleash down --ti", "COMP_CWORD": "2"}
    assert runner.invoke(app, [], prog_name="spotleash", env=env).output.split() == ["--timeout"]


def test_local_up_json_leaves_every_secret_out() -> None:
    env = {"SPOTLEASH_HEARTBEAT_SIGNING_KEY": "s1", "SPOTLEASH_VAST_API_KEY": "s2", "VAST_API_KEY": "s3",
           "SPOTLEASH_VAST_URL": "http://127.0.0.1:1", "FIRESTORE_EMULATOR_HOST": "127.0.0.1:2"}
    assert public_env(env) == {"SPOTLEASH_VAST_URL": "http://127.0.0.1:1", "FIRESTORE_EMULATOR_HOST": "127.0.0.1:2"}
