"""The stack env file: what ``local up`` writes is what the stack, the CLI and tests read back."""

from __future__ import annotations

from pathlib import Path

import pytest

from spotleash.wire.stack_env import env_file, format_env, parse_env, read_env_file


def test_round_trip_keeps_values_exactly(tmp_path: Path) -> None:
    env = {"A": "1", "URL": "http://127.0.0.1:1/?a=b", "SPACED": " x ", "EMPTY": ""}
    path = env_file(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(format_env(env))
    assert path == tmp_path / "local" / "stack.env"
    assert read_env_file(path) == env


def test_comments_blank_lines_and_junk_are_skipped() -> None:
    assert parse_env("# c\n\n  KEY = v\nno-equals\n=orphan\n  # indented comment\n") == {"KEY": " v"}


def test_values_it_cannot_hold_are_refused() -> None:
    with pytest.raises(ValueError, match="MULTI"):
        format_env({"MULTI": "a\nb"})


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_env_file(env_file(tmp_path))
