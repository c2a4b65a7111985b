"""The ``spotleash check`` command (registered by ``cli/app.py``)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import typer
from rich.markup import escape

from spotleash.cli._common import out as console_for
from spotleash.cli._common import settings
from spotleash.errors import ExitCode

if TYPE_CHECKING:
    from spotleash.cli.check_probes import Line


def check_command(
    json_out: bool = typer.Option(False, "--json", help="the lines as JSON on stdout"),
    timeout: float = typer.Option(30.0, "--timeout", min=1, help="seconds to wait for the dry-run demand's audit entry"),
) -> None:
    """Check every part of the configured deployment: one line each, ✓ or ✗ with the fix.

    Exit 1 when any line is ✗. Nothing is rented: the functions are checked with a dry-run demand that
    on_demand audits and never launches.
    """
    # imported here: the probes load Firestore, Pub/Sub and the VAST client (~1 s), which every other command
    # (`spotleash publish` first) would otherwise pay at start-up
    from spotleash.cli.check_probes import passed, run_checks

    out = console_for(json_out)

    def show(line: Line) -> None:
        mark = {True: "[green]✓[/]", False: "[red]✗[/]", None: "[dim]-[/]"}[line.ok]
        fix = f" — [bold]fix:[/] {escape(line.fix)}" if line.fix and line.ok is False else ""
        out.print(f"{mark} {line.part}: {escape(line.detail)}{fix}", soft_wrap=True)

    lines = run_checks(settings(), timeout_s=timeout, progress=show)
    ok = passed(lines)
    if json_out:
        print(json.dumps({"ok": ok, "lines": [line.as_json() for line in lines]}))
    raise typer.Exit(ExitCode.OK if ok else ExitCode.FAILED)
