"""Reading a process's JSON-lines log (the agent's structured logs) in end-to-end tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def log_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of the log as a dict; a line that is not JSON becomes ``{"message": line}``."""
    out: list[dict[str, Any]] = []
    for raw in path.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(raw))
        except json.JSONDecodeError:
            out.append({"message": raw})
    return out


def first_logged(path: Path, fragment: str) -> dict[str, Any] | None:
    """The first line whose message contains ``fragment``, or None."""
    return next((ln for ln in log_lines(path) if fragment in str(ln.get("message", ""))), None)
