"""``python -m spotleash.agent [--lease-id ID] [--trace FILE] [--trace-speed X] [--trace-limit-gb G] [--run-for S]``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from spotleash.agent import agent_main


def exec_agent(lease_id: str | None, trace: Path | None, trace_speed: float, trace_limit_gb: float | None) -> None:
    """Become ``python -m spotleash.agent`` (same pid, environment, streams); returns only where exec is unavailable.

    ``spotleash agent`` parses its options with the CLI (typer, rich, click and every command's imports): ~13 MB
    of resident memory the long-running agent never uses again. A fresh interpreter holds only the agent's own."""
    if os.name != "posix":
        return
    argv = [sys.executable, "-m", "spotleash.agent", "--trace-speed", repr(trace_speed)]
    if lease_id is not None:
        argv += ["--lease-id", lease_id]
    if trace is not None:
        argv += ["--trace", str(trace)]
    if trace_limit_gb is not None:
        argv += ["--trace-limit-gb", repr(trace_limit_gb)]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, dict(os.environ))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m spotleash.agent", description=__doc__)
    p.add_argument("--lease-id", default=None, help="lease id (default: <user>-<host>)")
    p.add_argument("--trace", type=Path, default=None, help="replay a RAM trace (CSV t_seconds,percent)")
    p.add_argument("--trace-speed", type=float, default=1.0, help="trace playback speed")
    p.add_argument("--trace-limit-gb", type=float, default=None,
                   help="the memory a trace's percentages are of (default 16): placement weighs components against it")
    p.add_argument("--run-for", type=float, default=None, help="stop (and release) after this many seconds")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    from spotleash.config import load_settings
    from spotleash.errors import ConfigError, ExitCode

    try:
        settings = load_settings()
    except ConfigError as e:
        print(f"spotleash agent: {e}", file=sys.stderr)
        return ExitCode.USAGE
    return agent_main(settings, args.lease_id, args.trace, args.trace_speed, run_for_s=args.run_for,
                      trace_limit_gb=args.trace_limit_gb)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # The release is already confirmed or given up on: do not let SDK background threads (a
    # publish still retrying against an unreachable server) hold the process past its budget.
    os._exit(code)
