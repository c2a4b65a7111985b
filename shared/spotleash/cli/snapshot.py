"""``spotleash snapshot list|create|restore``: a lease's snapshots, one taken now, one forced for the next restore.

``create`` cannot reach the instance itself: nothing but its heartbeat does (every
``SPOTLEASH_HEARTBEAT_INTERVAL_S``). So it writes an ``on_demand`` request on the instance's record in
Firestore, the next heartbeat reply carries it (``snapshot_requested``), and the instance packs and uploads
as it does for its periodic snapshots. An event (Pub/Sub) would only add a topic and a function to write
that same flag. ``--wait`` polls Firestore until the snapshot is verified or failed.

``restore`` pins a verified snapshot: the lease's next instance (after a failover, a hibernation or a new
demand) restores it instead of the latest; the pin is removed once an instance reports it restored. A
running instance is not rolled back under its components' feet.

Every command prints JSON on stdout with ``--json``; errors are one sentence (exit 2 for wrong usage).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from spotleash.cli._common import settings, short_duration
from spotleash.decide.hibernate import new_request, started_since
from spotleash.errors import BadInput, ExitCode
from spotleash.model import InstanceRecord, RestorePin, SnapshotRecord, SnapshotState, State
from spotleash.polling import WaitTimeout, wait_until

if TYPE_CHECKING:  # Firestore's client takes ~1 s to import: only `spotleash snapshot` itself loads it (_context)
    from spotleash.adapters.firestore import Store

snapshot_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Snapshots of a lease's state: list, take one now, "
                           "force one for the next restore.")
OUTCOME_POLL_S = 2.0  # how often `snapshot create --wait` reads the outcome


# ------------------------------------------------------------------ what the commands do (no I/O but the store)
def snapshot_json(s: SnapshotRecord, now: datetime) -> dict[str, Any]:
    out = s.model_dump(mode="json", exclude={"objects", "deployment_id"})
    out["age_s"] = round((now - s.created_at).total_seconds(), 1)
    return out


def listing(store: Store, lease_id: str, now: datetime) -> dict[str, Any]:
    snaps = [s for s in store.snapshots_of_lease(lease_id) if s.state is not SnapshotState.DELETED]
    pin = store.get_restore_pin(lease_id)
    hib = store.get_hibernation(lease_id)
    return {"lease_id": lease_id, "snapshots": [snapshot_json(s, now) for s in reversed(snaps)],
            "restore_pin": pin.snapshot_id if pin else None, "hibernated": hib.snapshot_id if hib else None}


def target_instance(store: Store, lease_id: str, instance_id: str | None) -> InstanceRecord:
    """The lease's instance a snapshot is asked of: the one named, or its only READY one."""
    live = [r for r in store.instances_of_lease(lease_id) if r.state in (State.RUNNING, State.READY)]
    if instance_id is not None:
        chosen = next((r for r in live if r.instance_id == instance_id), None)
        if chosen is None:
            raise BadInput(f"lease {lease_id} has no running instance {instance_id} "
                           f"(running: {', '.join(r.instance_id for r in live) or 'none'})")
        return chosen
    ready = [r for r in live if r.state is State.READY]
    if not ready:
        raise BadInput(f"lease {lease_id} has no READY instance to snapshot")
    if len(ready) > 1:
        raise BadInput(f"lease {lease_id} has {len(ready)} READY instances: name one with --instance "
                       f"({', '.join(r.instance_id for r in ready)})")
    return ready[0]


def request_snapshot(store: Store, lease_id: str, instance_id: str | None, now: datetime) -> InstanceRecord:
    """Write an ``on_demand`` request on the instance's record; the record as written."""
    rec = target_instance(store, lease_id, instance_id)
    req = new_request(rec, "on_demand", now, by="cli")
    written = store.update(rec.instance_id, lambda r: r.model_copy(update={"snapshot_request": req})
                           if r.state in (State.RUNNING, State.READY) else None)
    if written is None or written.snapshot_request != req:
        raise BadInput(f"instance {rec.instance_id} ended while the request was written")
    store.audit("snapshot_requested", "on_demand", now, instance_id=rec.instance_id, lease_id=lease_id,
                request_id=req.request_id, by="cli")
    return written


def outcome(store: Store, rec: InstanceRecord) -> SnapshotRecord | None:
    """The snapshot that answers ``rec``'s request once it is verified or failed (None: not yet)."""
    req = rec.snapshot_request
    assert req is not None
    for s in started_since(store.snapshots_of_lease(rec.lease_id), rec, req.requested_at):
        if s.state is not SnapshotState.UPLOADING:
            return s
    return None


def pin_restore(store: Store, lease_id: str, snapshot_id: str, deployment_id: str, now: datetime) -> RestorePin:
    snap = store.get_snapshot(snapshot_id)
    if snap is None or snap.lease_id != lease_id:
        known = [s.snapshot_id for s in store.snapshots_of_lease(lease_id) if s.state is SnapshotState.VERIFIED]
        raise BadInput(f"lease {lease_id} has no snapshot {snapshot_id} (verified: {', '.join(known) or 'none'})")
    if snap.state is not SnapshotState.VERIFIED:
        raise BadInput(f"snapshot {snapshot_id} is {snap.state}, not VERIFIED: it cannot be restored")
    pin = RestorePin(lease_id=lease_id, deployment_id=deployment_id, snapshot_id=snapshot_id, pinned_at=now)
    store.put_restore_pin(pin)
    store.audit("restore_pinned", "cli", now, lease_id=lease_id, snapshot_id=snapshot_id)
    return pin


# ------------------------------------------------------------------ the commands
def _context(lease_id: str | None) -> tuple[Store, str, str]:
    from spotleash.adapters.firestore import FirestoreStore
    from spotleash.agent import default_lease_id

    s = settings()
    return FirestoreStore.from_settings(s), lease_id or default_lease_id(), s.deployment_id


def _usage(e: BadInput) -> typer.Exit:
    Console(stderr=True).print(f"[red]error:[/] {escape(str(e))}", soft_wrap=True)
    return typer.Exit(ExitCode.USAGE)


LEASE = typer.Option(None, "--lease-id", help="the lease (default: this machine's)")
JSON = typer.Option(False, "--json", help="JSON on stdout")


@snapshot_app.command("list")
def list_command(lease_id: str | None = LEASE, json_out: bool = JSON) -> None:
    """The lease's snapshots, newest first (state, size, age), its forced restore and hibernation."""
    store, lease, _ = _context(lease_id)
    data = listing(store, lease, datetime.now(UTC))
    if json_out:
        print(json.dumps(data))
        return
    console = Console()
    if not data["snapshots"]:
        console.print(f"lease {lease} has no snapshot")
        return
    t = Table("snapshot", "state", "instance", "age", "size MB", "raw MB", "files", "note",
              title=f"snapshots of lease {lease}", title_justify="left")
    for s in data["snapshots"]:
        note = "restore pinned" if s["snapshot_id"] == data["restore_pin"] else \
            "hibernated" if s["snapshot_id"] == data["hibernated"] else (s["reason"] or "")
        t.add_row(s["snapshot_id"], s["state"], s["instance_id"], short_duration(s["age_s"]), f"{s['size_bytes'] / 1e6:.1f}",
                  f"{s['raw_bytes'] / 1e6:.1f}", str(s["files"]), note[:60])
    console.print(t)


@snapshot_app.command("create")
def create_command(lease_id: str | None = LEASE,
                   instance: str | None = typer.Option(None, "--instance", help="the instance (default: the "
                                                       "lease's only READY one)"),
                   wait: float = typer.Option(0.0, "--wait", min=0, help="seconds to wait for it to be verified"),
                   json_out: bool = JSON) -> None:
    """Ask the lease's instance for a snapshot now (its next heartbeat carries the request)."""
    store, lease, _ = _context(lease_id)
    try:
        rec = request_snapshot(store, lease, instance, datetime.now(UTC))
    except BadInput as e:
        raise _usage(e) from e
    req = rec.snapshot_request
    assert req is not None
    result = wait_for(store, rec, wait, time.monotonic, time.sleep) if wait > 0 else None
    data = {"lease_id": lease, "instance_id": rec.instance_id, "request_id": req.request_id,
            "requested_at": req.requested_at.isoformat(),
            "snapshot": snapshot_json(result, datetime.now(UTC)) if result else None}
    if json_out:
        print(json.dumps(data))
    elif result is None:
        Console().print(f"asked {rec.instance_id} for a snapshot (request {req.request_id}); its next heartbeat "
                        "carries it" + (f" — nothing verified or failed within {wait:.0f}s" if wait else ""))
    else:
        Console().print(f"snapshot {result.snapshot_id} of {rec.instance_id}: {result.state}"
                        + (f" ({result.size_bytes / 1e6:.1f} MB)" if result.state is SnapshotState.VERIFIED
                           else f" — {result.reason or ''}"))
    if result is not None and result.state is not SnapshotState.VERIFIED:
        raise typer.Exit(ExitCode.FAILED)
    if wait > 0 and result is None:
        raise typer.Exit(ExitCode.FAILED)


def wait_for(store: Store, rec: InstanceRecord, timeout_s: float, clock: Callable[[], float],
             sleep: Callable[[float], None]) -> SnapshotRecord | None:
    try:
        return wait_until(lambda: outcome(store, rec), timeout_s=timeout_s, interval_s=OUTCOME_POLL_S,
                          what="the snapshot's outcome", clock=clock, sleep=sleep)
    except WaitTimeout:
        return None


@snapshot_app.command("restore")
def restore_command(snapshot_id: str = typer.Argument(..., help="a VERIFIED snapshot of the lease"),
                    lease_id: str | None = LEASE, json_out: bool = JSON) -> None:
    """Force SNAPSHOT_ID for the lease's next instance (instead of the latest verified one)."""
    store, lease, deployment = _context(lease_id)
    try:
        pin = pin_restore(store, lease, snapshot_id, deployment, datetime.now(UTC))
    except BadInput as e:
        raise _usage(e) from e
    live = [r.instance_id for r in store.instances_of_lease(lease)]
    if json_out:
        print(json.dumps({"lease_id": lease, "snapshot_id": pin.snapshot_id, "pinned_at": pin.pinned_at.isoformat(),
                          "live_instances": live}))
        return
    note = (f"; {', '.join(live)} keep their state: the pin applies to the next instance" if live else "")
    Console().print(f"the next instance of lease {lease} restores {snapshot_id}{note}")
