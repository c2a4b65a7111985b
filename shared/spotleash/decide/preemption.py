"""A preempted instance's last seconds, decided purely: how long it lives on, and what its replacement restores.

GCE gives a Spot VM 30 s between the preemption notice (metadata ``instance/preempted``) and hard off; the
instance agent spends them on a snapshot of its state paths (trigger ``preempted``). That snapshot counts
only if the control plane keeps answering the instance's snapshot asks (upload URLs, verification) after
the notice, so the notice does not end the record: the heartbeat service stamps ``preempted_at``, launches
the replacement at once, and the record stays live for ``SPOTLEASH_PREEMPTION_GRACE_S`` (default 30 s).
It ends — reason ``preempted`` — when the provider takes the VM away (the reaper sees it gone or stopped)
or at the first beat or reap past the grace (``grace_over``), whichever comes first.

What the replacement restores (``restore_hold``): the preemption snapshot, when it is verified in time.
A replacement can ask what to restore before that snapshot exists (a small box boots in seconds; packing
and uploading take longer), and "the newest verified" would then be the periodic snapshot before it,
up to a snapshot interval old, while the newer state gets verified seconds later and is never used. So
while a preempted instance of the same lease is within its grace and its preemption snapshot has no
verdict yet, the restore waits (the answer says "ask again in a few seconds"); at the verdict, or at the
grace's end, it takes the newest verified snapshot — the preemption one if it made it, else the one
before. The wait costs at most the grace, and only to a lease that keeps state (it has snapshots): an
instance without state paths never sends a snapshot, and waiting for one would only delay its replacement.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from spotleash.model import InstanceRecord, SnapshotRecord, SnapshotState

PREEMPTION_TRIGGER = "preempted"
HOLD_POLL_S = 2.0  # how soon a held restore asks again


def grace_over(rec: InstanceRecord, now: datetime, grace_s: float) -> bool:
    """Has the preempted ``rec`` outlived its grace (a record never preempted: no)?"""
    return rec.preempted_at is not None and now >= rec.preempted_at + timedelta(seconds=grace_s)


@dataclass(frozen=True)
class RestoreHold:
    """Wait: ``waiting_for`` (a preempted instance) may still produce a newer snapshot, until ``until``."""

    waiting_for: str
    until: datetime
    detail: str

    def retry_after_s(self, now: datetime) -> float:
        return round(max(min(HOLD_POLL_S, (self.until - now).total_seconds()), 0.1), 3)


def _preemption_snapshot_settled(peer: InstanceRecord, snapshots: Iterable[SnapshotRecord]) -> bool:
    """Has ``peer`` a snapshot, taken since its notice, with a verdict (verified, failed, ...)?"""
    assert peer.preempted_at is not None
    return any(s.instance_id == peer.instance_id and s.state is not SnapshotState.UPLOADING
               and (s.trigger == PREEMPTION_TRIGGER or (s.trigger is None and s.created_at >= peer.preempted_at))
               for s in snapshots)


def restore_hold(requester_id: str, lease_records: Iterable[InstanceRecord], snapshots: Iterable[SnapshotRecord],
                 now: datetime, grace_s: float) -> RestoreHold | None:
    """Should the restore of ``requester_id`` wait for a preempted predecessor's snapshot? (See the module.)"""
    snaps = list(snapshots)
    if not snaps:  # the lease keeps no state (or never saved any): nothing worth waiting for
        return None
    for peer in lease_records:
        if peer.instance_id == requester_id or peer.preempted_at is None or not peer.live:
            continue
        if grace_over(peer, now, grace_s) or _preemption_snapshot_settled(peer, snaps):
            continue
        until = peer.preempted_at + timedelta(seconds=grace_s)
        return RestoreHold(peer.instance_id, until,
                           f"{peer.instance_id} was preempted and is saving its state; waiting for that snapshot "
                           f"until {until.isoformat()} at the latest")
    return None
