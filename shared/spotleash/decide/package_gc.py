"""Which packages and blobs ``spotleash publish --gc`` deletes (pure; ``packaging/package_gc.py`` acts on it).

Mark and sweep over the bucket's listing:

- a manifest is **kept** when a pointer names it, when it is one of the ``keep_recent`` newest, or when it is
  younger than ``grace_s`` (an instance launched with it may still be fetching: keep the grace above the
  longest an instance lives);
- a blob is **kept** when a kept manifest names it, or when it is younger than ``grace_s`` (a publish in
  progress uploads blobs before it writes its manifest);
- a manifest that could not be read is kept while young and deleted after, naming no blob.

Everything else is deleted, each with its reason. An empty or failed listing is never "nothing to keep":
the adapter stops before deciding when any listing fails.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Listed:
    """One object of the listing: its sha256 (from its name), size and when it was written."""

    sha256: str
    size: int
    updated: datetime


@dataclass(frozen=True)
class GcPlan:
    keep_manifests: frozenset[str]
    delete_manifests: dict[str, str]  # sha256 → reason
    delete_blobs: dict[str, str]  # sha256 → reason
    bytes_freed: int


def plan_gc(*, pointers: Mapping[str, str], manifests: Mapping[str, Listed], names: Mapping[str, frozenset[str] | None],
            blobs: Mapping[str, Listed], now: datetime, keep_recent: int = 5, grace_s: float = 86400.0) -> GcPlan:
    """``pointers``: channel → manifest sha256; ``names``: manifest sha256 → the blob sha256s it names (None:
    unreadable)."""
    def young(o: Listed) -> bool:
        return (now - o.updated).total_seconds() < grace_s

    newest = sorted(manifests.values(), key=lambda m: m.updated, reverse=True)[:max(keep_recent, 0)]
    keep = {s for s in pointers.values() if s in manifests} | {m.sha256 for m in newest} \
        | {m.sha256 for m in manifests.values() if young(m)}
    delete_manifests = {s: "named by no pointer, not among the newest, past the grace period"
                        for s in manifests if s not in keep}
    named: set[str] = set()
    for s in keep:
        named |= names.get(s) or frozenset()
    delete_blobs = {s: "named by no kept manifest, past the grace period"
                    for s, b in blobs.items() if s not in named and not young(b)}
    freed = sum(manifests[s].size for s in delete_manifests) + sum(blobs[s].size for s in delete_blobs)
    return GcPlan(frozenset(keep), delete_manifests, delete_blobs, freed)
