"""Rewrites the generated parts of the docs: the settings table, the ``[[app.components]]`` keys and the
command reference.

    scripts/uv run --frozen python scripts/docs_reference.py           # rewrite them (after changing
                                                                        # spotleash.config.Settings or a command)
    scripts/uv run --frozen python scripts/docs_reference.py --check   # exit 1 when a page is out of date

Each part lives between two markers in its page; the text around them is written by hand.
tests/unit/test_docs.py fails when a page differs from what this script writes.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import typer

DOCS = Path(__file__).resolve().parent.parent / "docs"


def config_table() -> str:
    from spotleash.config import Settings

    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, f in Settings.model_fields.items():
        default = f.default_factory() if f.default_factory else f.default  # type: ignore[call-arg]
        if name == "state_dir":
            default = "~/.spotleash"
        rows.append(f"| `SPOTLEASH_{name.upper()}` | `{default}` | {_cell(f.description or '')} |")
    return "\n".join(rows)


def component_table() -> str:
    from spotleash.wire.package import ComponentSpec

    rows = ["| key | default | meaning |", "|---|---|---|"]
    for name, f in ComponentSpec.model_fields.items():
        default = "required" if f.is_required() else f"`{f.default_factory() if f.default_factory else f.default!r}`"  # type: ignore[call-arg]
        rows.append(f"| `{name}` | {default} | {_cell(f.description or '')} |")
    return "\n".join(rows)


def _commands(group: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """Every leaf command under a click group (typer builds click objects), sorted by name."""
    for name in sorted(group.commands):
        cmd = group.commands[name]
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, f"{prefix} {name}")
        else:
            yield f"{prefix} {name}", cmd


def _cell(text: str) -> str:
    """One line of table text: pipes escaped, and ``<`` so ``latest-<channel>.txt`` is not read as HTML."""
    return " ".join(text.replace("|", "\\|").replace("<", "&lt;").split())


def _option_row(p: Any) -> str:
    if p.param_type_name == "argument":
        return f"| `{p.name.upper()}` | argument (required) |"
    names = ", ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts])
    shown = p.is_flag or p.default in (None, "") or "default" in (p.help or "")
    default = "" if shown else f" (default `{p.default}`)"
    return f"| {names} | {_cell(p.help or '')}{default} |"


def cli_app() -> Any:
    """The typer app behind the ``spotleash`` console script, found through its entry point (the name that
    stays when the command modules move)."""
    (script,) = entry_points(group="console_scripts", name="spotleash")
    main = script.load()
    entry = sys.modules[main.__module__]  # the entry may only guard the import of the app's module
    return importlib.import_module(getattr(entry, "APP_MODULE", main.__module__)).app


def cli_reference() -> str:
    root = typer.main.get_command(cli_app())
    out: list[str] = []
    for path, cmd in [("spotleash", root), *_commands(root, "spotleash")]:
        params = [p for p in cmd.params if p.name != "help"]
        args = [p.name.upper() for p in params if p.param_type_name == "argument"]
        has_options = any(p.param_type_name == "option" for p in params)
        usage = " ".join([path, *(["[OPTIONS]"] if has_options else []), *(["COMMAND"] if cmd is root else args)])
        doc = "" if cmd is root else " ".join((cmd.help or "").strip().split("\n\n")[0].split())
        out += [f"### `{path}`", "", f"`{usage}`", "", *([doc, ""] if doc else [])]
        if params:
            out += ["| option | what |", "|---|---|", *(_option_row(p) for p in params), ""]
    return "\n".join(out).rstrip()


# page -> marker name -> what goes between its markers
PARTS: dict[str, dict[str, Callable[[], str]]] = {
    "configuration.md": {"config": config_table},
    "app-package.md": {"components": component_table},
    "cli.md": {"cli": cli_reference},
}


def render(text: str, marker: str, body: str) -> str:
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"docs: no {start} … {end} markers; put them back where the generated part goes")
    return pattern.sub(lambda _m: f"{start}\n{body}\n{end}", text, count=1)


def rendered(page: str) -> tuple[str, str]:
    """The page as it is and as this script would write it."""
    text = (DOCS / page).read_text()
    new = text
    for marker, make in PARTS[page].items():
        new = render(new, marker, make())
    return text, new


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for page in PARTS:
        text, new = rendered(page)
        if new != text:
            stale.append(page)
            if not check:
                (DOCS / page).write_text(new)
    if check and stale:
        print(f"out of date: {', '.join(stale)}; run scripts/docs_reference.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
