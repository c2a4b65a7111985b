"""``--help`` of every command and group renders as plain text on a terminal: no reStructuredText
markup, no rich markup, no line broken in the middle of a sentence by the source's own line breaks."""

from __future__ import annotations

from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from spotleash.cli.app import app


def _paths(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [prefix]
    for name, cmd in group.commands.items():
        out += _paths(cmd, (*prefix, name)) if hasattr(cmd, "commands") else [(*prefix, name)]
    return out


PATHS = _paths(typer.main.get_group(app))


def test_every_command_is_covered() -> None:
    assert {("init",), ("check",), ("publish",), ("local", "up"), ("snapshot", "list")} <= set(PATHS)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "spotleash")
def test_help_is_plain_text(path: tuple[str, ...]) -> None:
    done = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "100"}, prog_name="spotleash")
    assert done.exit_code == 0, done.output
    text = done.output
    assert "``" not in text and "[/" not in text and "[bold" not in text, text
    assert "╭" not in text, "rich panels: the terminal shows plain click help"
    for para in text.split("\n\n"):
        for line in para.splitlines():
            assert len(line) <= 100, line  # wrapped at the terminal's width, not at the source's
