"""The console script's entry: the command line needs the ``cli`` extra (typer, rich), so a missing one
is one sentence naming it — before anything imports typer — instead of a traceback."""

from __future__ import annotations

import importlib
import sys

from spotleash.errors import ExitCode
from spotleash.packaging import extras

APP_MODULE = "spotleash.cli.app"  # the typer app and its main (scripts/docs_reference.py reads this name)


def main() -> None:
    try:
        run = importlib.import_module(APP_MODULE).main
    except ModuleNotFoundError as e:
        extra = extras.extra_for_module(e.name or "") if e.name else None
        if extra is None:
            raise
        print(f"error: the spotleash command needs spotleash's `{extra}` extra (the module {e.name} is missing): "
              f"run `{extras.install_hint(extra)}`", file=sys.stderr)
        sys.exit(ExitCode.USAGE)
    run()
