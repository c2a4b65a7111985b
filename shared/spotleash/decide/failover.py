"""Failover decisions, pure: which lost instances are replaced, and the phases of a replacement.

An instance is *lost* when the provider took it back (``preempted``, ``stopped_at_provider``: outbid on
VAST, preempted or stopped on GCE), it disappeared from the provider's listing (``vanished``: deleted
behind our back, e.g. ``gcloud compute instances delete``), or it went silent (``heartbeat_lost``).
While its lease is alive, each of these asks for a replacement (``services.launch.request_replacement``
publishes a failover demand that on_demand launches).

One exception: an instance that went silent without ever having beaten is not replaced. Its boot is
what failed (a broken image, a heartbeat URL it cannot reach), and its replacement would fail the same
way — at the price of one more instance per heartbeat timeout, for ever.
"""

from __future__ import annotations

from datetime import datetime

from spotleash.model import InstanceRecord, State

LOSS_REASONS = frozenset({"preempted", "stopped_at_provider", "vanished", "heartbeat_lost"})
PHASES = ("detection_s", "provisioning_s", "boot_s", "restore_s", "ready_s", "total_s")


def ever_beat(rec: InstanceRecord) -> bool:
    return rec.first_heartbeat_at is not None or rec.state is State.READY or rec.ready_at is not None


def should_replace(rec: InstanceRecord, reason: str) -> tuple[bool, str]:
    """(replace?, why not) for ``rec`` ending with ``reason`` (its lease's life is checked by the launcher)."""
    if reason not in LOSS_REASONS:
        return False, f"{reason} is not a loss"
    if reason == "heartbeat_lost" and not ever_beat(rec):
        return False, "it never sent a heartbeat: its boot failed, a replacement would fail the same way"
    return True, ""


def last_sign_of_life(rec: InstanceRecord) -> datetime:
    """When the lost instance was last known to work: detection runs from here."""
    return rec.last_heartbeat or rec.running_at or rec.created_at


def _secs(later: datetime | None, earlier: datetime | None) -> float | None:
    if later is None or earlier is None:
        return None
    return round(max((later - earlier).total_seconds(), 0.0), 3)


def phases(rec: InstanceRecord) -> dict[str, float | None]:
    """A replacement's phases in seconds (None: not reached yet, or not a replacement's field).

    detection: the lost instance's last sign of life → the replacement's intent (the decision);
    provisioning: intent → the provider says it runs; boot: → its first heartbeat; restore: as the
    instance reported it; ready: first heartbeat → READY, restore excluded; total: last sign of life → READY."""
    ready = _secs(rec.ready_at, rec.first_heartbeat_at)
    if ready is not None and rec.restore_s is not None:
        ready = round(max(ready - rec.restore_s, 0.0), 3)
    return {
        "detection_s": _secs(rec.created_at, rec.lost_at),
        "provisioning_s": _secs(rec.running_at, rec.created_at),
        "boot_s": _secs(rec.first_heartbeat_at, rec.running_at),
        "restore_s": rec.restore_s,
        "ready_s": ready,
        "total_s": _secs(rec.ready_at, rec.lost_at),
    }
