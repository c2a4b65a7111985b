"""The ``spotleash init`` command (registered by ``cli/app.py``): detect, ask on a terminal, write."""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import replace
from pathlib import Path

import typer

from spotleash.cli._common import console
from spotleash.errors import ConfigError
from spotleash.packaging import app_init
from spotleash.packaging.appspec import CONFIG_NAME


def on_terminal() -> bool:
    return sys.stdin.isatty()


def _ask(draft: app_init.Draft) -> app_init.Draft:
    name = app_init.slug(typer.prompt("app name", default=draft.name))
    components = list(draft.components)
    if not components:
        cmd = typer.prompt("command that starts the app's heavy part", default="python main.py")
        components = [app_init.DraftComponent(name="main", command=shlex.split(cmd))]
    asked = []
    for c in app_init.with_ports(replace(draft, components=components)).components:
        if not typer.confirm(f"component {c.name!r} ({shlex.join(c.command)})?", default=True):
            continue
        asked.append(replace(
            c, name=app_init.slug(typer.prompt("  name", default=c.name), "component"),
            port=typer.prompt("  port it listens on", default=c.port, type=int),
            health_path=typer.prompt("  health path", default=c.health_path),
            ram_gb=typer.prompt("  RAM it needs (GB)", default=c.ram_gb, type=float)))
    return replace(draft, name=name, components=asked)


def init_command(
    directory: Path = typer.Argument(Path("."), help="the app's directory (default: this one)"),
    yes: bool = typer.Option(False, "--yes", "-y", help="take what was detected and the defaults, ask nothing"),
    process: list[str] = typer.Option([], "--process", "-p", help="a running process of the app (a pid or a word "
                                        "of its command line): its listening port is used; repeatable"),
    json_out: bool = typer.Option(False, "--json", help="print what was written as JSON"),
) -> None:
    """Write a commented spotleash.toml for the app in DIRECTORY.

    It reads requirements.txt or pyproject.toml, finds the Python entry points and the ports their running
    processes listen on, and asks for the rest on a terminal (defaults without one, or with --yes). It never
    overwrites an existing spotleash.toml.
    """
    root = directory.resolve()
    if not root.is_dir():
        raise ConfigError(f"{directory} is not a directory: name the app's directory")
    if (root / CONFIG_NAME).exists():
        raise ConfigError(f"{root / CONFIG_NAME} already exists: edit it, or move it away to write a new one")
    draft = app_init.detect(root, app_init.listening_ports(root, process))
    if not yes and not json_out and on_terminal():
        draft = _ask(draft)
    path = app_init.write(root, app_init.render(app_init.with_ports(draft)))
    if json_out:
        print(json.dumps({"path": str(path), "components": [c.name for c in draft.components],
                          "requirements": draft.requirements, "requirements_from": draft.requirements_from}))
        return
    found = ", ".join(c.name for c in draft.components) or "none found (a placeholder to edit)"
    console.print(f"wrote {path} — components: {found}; requirements: {len(draft.requirements)}"
                  + (f" from {draft.requirements_from}" if draft.requirements_from else ""), soft_wrap=True)
