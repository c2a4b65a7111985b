"""What every command module of the CLI shares: the consoles, the settings (pointed at a running local
stack), and how times are shown."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from spotleash.config import Settings, load_settings
from spotleash.wire import stack_env

console = Console()
err_console = Console(stderr=True)


def _load_stack_env() -> None:
    """If a local stack is up, point the clients at it (explicit environment variables win)."""
    state_dir = Path(os.environ.get("SPOTLEASH_STATE_DIR", Path.home() / ".spotleash"))
    env_file = stack_env.env_file(state_dir)
    if not env_file.exists():
        return
    for key, value in stack_env.read_env_file(env_file).items():
        os.environ.setdefault(key, value)


def settings() -> Settings:
    _load_stack_env()
    return load_settings()


def out(json_out: bool) -> Console:
    """Where human text goes: stdout, or stderr when stdout carries JSON."""
    return err_console if json_out else console


def hms(dt: datetime | None) -> str:
    return dt.astimezone(UTC).strftime("%H:%M:%S") if dt else "-"


def short_duration(seconds: float) -> str:
    """``3d04h``, ``2h05m`` or ``4m07s``: an age as a table cell."""
    s = int(seconds)
    return f"{s // 86400}d{s % 86400 // 3600:02d}h" if s >= 86400 else \
        f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
