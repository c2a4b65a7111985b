"""Snapshot requests and hibernation, pure: when the control plane asks an instance for a snapshot,
and whether a request is still open.

An instance's record carries at most one ``RequestedSnapshot``; its heartbeat replies repeat it until a
snapshot of that instance starts at or after ``requested_at`` (``is_open``). Requests come from
``spotleash snapshot create`` (``on_demand``), from idleness (``hibernate``: once the snapshot is verified
the reaper destroys the box and the lease is HIBERNATED) and from the max-runtime deadline drawing near
(``deadline``: the cap's destroy is planned, so the state is saved before it).

Release (the agent stops) takes no snapshot first: the leash's promise is that a released instance is
deleted at once, and the instance can only be asked over its next heartbeat (every 30 s) and then needs
the pack and the upload — minutes for gigabytes, far past the agent's 10 s shutdown budget and the
release function's 120 s. What survives a release is the latest periodic, on-demand or deadline snapshot.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime, timedelta

from spotleash.config import Settings
from spotleash.model import InstanceRecord, RequestedSnapshot, SnapshotReason, SnapshotRecord, State


def request_id(instance_id: str, reason: str, at: datetime) -> str:
    digest = hashlib.sha256(f"{instance_id}/{reason}/{at.isoformat()}".encode()).hexdigest()[:16]
    return f"{reason.replace('_', '-')}-{digest}"


def new_request(rec: InstanceRecord, reason: SnapshotReason, now: datetime, by: str) -> RequestedSnapshot:
    return RequestedSnapshot(request_id=request_id(rec.instance_id, reason, now), reason=reason, requested_at=now,
                           by=by)


def is_idle(idle_s: float, settings: Settings) -> bool:
    return settings.idle_after_s > 0 and idle_s >= settings.idle_after_s


def after_beat(rec: InstanceRecord, idle_s: float, settings: Settings, now: datetime) -> RequestedSnapshot | None:
    """The record's request after a beat reporting ``idle_s``: idle → hibernate; busy again → a pending
    hibernation is called off; the deadline near → a deadline snapshot (once per window)."""
    current = rec.snapshot_request
    if rec.state is State.READY and is_idle(idle_s, settings):
        if current is not None and current.reason == "hibernate":
            return current
        return new_request(rec, "hibernate", now, by="heartbeat")
    if current is not None and current.reason == "hibernate":
        current = None  # it served a request again: it stays
    window = settings.snapshot_before_deadline_s
    if settings.package_bucket and window > 0 and rec.state is State.READY:
        opens = rec.deadline - timedelta(seconds=window)
        if now >= opens and (current is None or current.requested_at < opens):
            return new_request(rec, "deadline", now, by="heartbeat")
    return current


def started_since(snapshots: Iterable[SnapshotRecord], rec: InstanceRecord, since: datetime) -> list[SnapshotRecord]:
    """This instance's snapshots begun at or after ``since``, oldest first."""
    mine = [s for s in snapshots if s.instance_id == rec.instance_id and s.created_at >= since]
    return sorted(mine, key=lambda s: (s.created_at, s.snapshot_id))


def is_open(rec: InstanceRecord, snapshots: Iterable[SnapshotRecord]) -> bool:
    """Does the instance still have to be asked? Yes until a snapshot of it starts after the request."""
    req = rec.snapshot_request
    return req is not None and not started_since(snapshots, rec, req.requested_at)
