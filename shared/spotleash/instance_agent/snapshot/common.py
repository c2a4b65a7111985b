"""What every snapshot step shares: its errors, which directories are state, the transfer limits."""

from __future__ import annotations

from pathlib import Path

DEFAULT_STATE_PATHS: dict[str, list[str]] = {"vast": ["/workspace"]}  # GCE: only what the app declares
CHUNK = 1 << 20
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
WORKERS = 4


class SnapshotError(Exception):
    """A snapshot or restore step failed; ``detail`` says which and why (no URL in it)."""


class CorruptSnapshot(SnapshotError):
    """The snapshot's bytes are not what its manifest promises, or its archive is unsafe."""


def state_paths_for(provider: str, configured: list[str]) -> list[Path]:
    """The directories to snapshot: the configured ones, else the provider's default (GCE: none)."""
    chosen = configured or DEFAULT_STATE_PATHS.get(provider, [])
    paths = [Path(p) for p in chosen]
    for p in paths:
        if not p.is_absolute() or ".." in p.parts:
            raise SnapshotError(f"state path {str(p)!r} must be absolute and without '..'")
    if len({str(p) for p in paths}) != len(paths):
        raise SnapshotError(f"state paths repeat: {chosen}")
    return paths
