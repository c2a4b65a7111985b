"""Tools the project installs itself, found the way its own commands find them (never a skip for them)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def project_uv() -> str:
    """The uv `make` uses: the one `uv run` names in ``UV``, else ``scripts/uv`` (it finds or installs the
    pinned uv into .tools/), so a test never depends on uv being on PATH."""
    return os.environ.get("UV") or str(ROOT / "scripts" / "uv")
