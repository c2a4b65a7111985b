"""Snapshot decisions, pure functions of the records (``services/snapshots.py`` acts on them):
``retention_plan`` (what to delete), ``choose_restore`` (what to restore, past the corrupt ones),
``may_destroy_for_hibernation`` (never before a verified snapshot; a failed one keeps the box and alerts;
the max-runtime cap still wins) and ``check_manifest`` (is the uploaded manifest the one reported, and
exactly this snapshot's).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import ValidationError

from spotleash.model import InstanceRecord, SnapshotRecord, SnapshotState
from spotleash.wire.snapshot import MAX_MANIFEST_BYTES, SnapshotManifest, object_names


def retention_plan(snapshots: Sequence[SnapshotRecord], keep: int, now: datetime,
                   stale_after: timedelta) -> list[SnapshotRecord]:
    """The snapshots whose objects go: verified ones past the newest ``keep``, failed or corrupt ones
    older than the newest verified, and uploads abandoned for longer than ``stale_after`` (an agent
    killed mid-upload). The newest verified snapshot is never in it."""
    keep = max(keep, 1)
    verified = sorted((s for s in snapshots if s.state is SnapshotState.VERIFIED),
                      key=lambda s: (s.created_at, s.snapshot_id))
    doomed = verified[:-keep]
    newest = verified[-1].created_at if verified else None
    for s in snapshots:
        if s.state in (SnapshotState.FAILED, SnapshotState.CORRUPT) and newest is not None and s.created_at < newest:
            doomed.append(s)
        elif s.state is SnapshotState.UPLOADING and now - s.created_at > stale_after:
            doomed.append(s)
    return sorted(doomed, key=lambda s: (s.created_at, s.snapshot_id))


def choose_restore(snapshots: Iterable[SnapshotRecord], exclude: Iterable[str] = ()) -> SnapshotRecord | None:
    """The newest verified snapshot not in ``exclude`` (those found corrupt), or None."""
    skip = set(exclude)
    candidates = [s for s in snapshots if s.state is SnapshotState.VERIFIED and s.snapshot_id not in skip]
    return max(candidates, key=lambda s: (s.created_at, s.snapshot_id), default=None)


@dataclass(frozen=True)
class HibernationVerdict:
    destroy: bool
    reason: str  # max_runtime_cap | snapshot_verified | no_snapshot | snapshot_in_progress | snapshot_failed
    alert: bool = False  # someone must look: the box is kept running without a usable snapshot, or the
    # cap destroys it without one
    snapshot_id: str | None = None


def may_destroy_for_hibernation(record: InstanceRecord, snapshots: Sequence[SnapshotRecord], now: datetime, *,
                                requested_at: datetime | None = None) -> HibernationVerdict:
    """May hibernation destroy ``record``'s box now? Only once the newest snapshot this instance took
    (at or after ``requested_at``, when hibernation was decided) is verified. The max-runtime cap wins
    over everything: past its deadline the box goes regardless (with an alert when unsaved)."""
    mine = [s for s in snapshots if s.instance_id == record.instance_id and s.lease_id == record.lease_id
            and (requested_at is None or s.created_at >= requested_at)]
    newest = max(mine, key=lambda s: (s.created_at, s.snapshot_id), default=None)
    saved = newest is not None and newest.state is SnapshotState.VERIFIED
    sid = newest.snapshot_id if newest else None
    if now >= record.deadline:
        return HibernationVerdict(True, "max_runtime_cap", alert=not saved, snapshot_id=sid if saved else None)
    if newest is None:
        return HibernationVerdict(False, "no_snapshot")
    if saved:
        return HibernationVerdict(True, "snapshot_verified", snapshot_id=sid)
    if newest.state is SnapshotState.UPLOADING:
        return HibernationVerdict(False, "snapshot_in_progress", snapshot_id=sid)
    return HibernationVerdict(False, "snapshot_failed", alert=True, snapshot_id=sid)


def check_manifest(data: bytes, reported_sha256: str, snap: SnapshotRecord) -> SnapshotManifest:
    """The manifest, if it is the one reported and describes exactly this snapshot; else ValueError."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ValueError(f"manifest.json is {len(data)} bytes (limit {MAX_MANIFEST_BYTES})")
    got = hashlib.sha256(data).hexdigest()
    if got != reported_sha256:
        raise ValueError(f"manifest.json sha256 is {got[:16]}…, the instance reported {reported_sha256[:16]}…")
    try:
        manifest = SnapshotManifest.model_validate_json(data)
    except ValidationError as e:
        raise ValueError(f"manifest.json is not a snapshot manifest: {str(e)[:200]}") from e
    if (manifest.snapshot_id, manifest.lease_id, manifest.instance_id) != (snap.snapshot_id, snap.lease_id,
                                                                             snap.instance_id):
        raise ValueError("manifest.json names another snapshot, lease or instance")
    if [o.name for o in manifest.objects] != object_names(snap.parts)[:-1]:
        raise ValueError(f"manifest.json lists {len(manifest.objects)} parts, the upload was for {snap.parts}")
    return manifest
