"""``spotleash agent`` becomes ``python -m spotleash.agent`` (a fresh interpreter without the CLI's imports):
the same options reach the agent, and the environment the CLI loaded (a local stack's) goes with them."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from spotleash.agent.__main__ import exec_agent, parser


class Execed(Exception):
    pass


def _exec(monkeypatch: pytest.MonkeyPatch, *args: object) -> tuple[str, list[str], dict[str, str]]:
    seen: list[tuple[str, list[str], dict[str, str]]] = []

    def execve(path: str, argv: list[str], env: dict[str, str]) -> None:
        seen.append((path, argv, env))
        raise Execed  # the real one never returns

    monkeypatch.setattr(os, "execve", execve)
    with pytest.raises(Execed):
        exec_agent(*args)  # type: ignore[arg-type]
    return seen[0]


@pytest.mark.skipif(os.name != "posix", reason="exec is POSIX's")
def test_every_option_reaches_the_agent(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:8085")  # as the CLI's settings() loads a stack's env
    path, argv, env = _exec(monkeypatch, "me-laptop", tmp_path / "climb.csv", 2.5, 8.0)
    assert path == sys.executable and argv[:3] == [sys.executable, "-m", "spotleash.agent"]
    args = parser().parse_args(argv[3:])
    assert (args.lease_id, args.trace, args.trace_speed, args.trace_limit_gb, args.run_for) == (
        "me-laptop", tmp_path / "climb.csv", 2.5, 8.0, None)
    assert env["PUBSUB_EMULATOR_HOST"] == "127.0.0.1:8085"


@pytest.mark.skipif(os.name != "posix", reason="exec is POSIX's")
def test_defaults_stay_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    _, argv, _ = _exec(monkeypatch, None, None, 1.0, None)
    args = parser().parse_args(argv[3:])
    assert vars(args) == vars(parser().parse_args([]))
