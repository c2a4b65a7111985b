"""What ``spotleash status`` shows of one instance record: pure, so the table and ``--json`` agree.

Per instance, ``components`` maps each component it was launched for (and any other its heartbeats
reported) to its ``state`` (``pending`` until the first report), ``endpoint`` and last ``error``.
A HIBERNATED lease (no instance: its components sleep in a verified snapshot) shows with the snapshot's
id, age and size.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from spotleash.decide.failover import phases
from spotleash.model import Hibernation, InstanceRecord

PENDING = "pending"  # launched for it, no heartbeat has reported it yet
_MARK = {"healthy": "ok", "starting": "..", "failing": "!!", PENDING: "--"}


def components_shown(rec: InstanceRecord) -> dict[str, dict[str, Any]]:
    names = list(dict.fromkeys([*rec.components, *rec.component_states]))
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        report = rec.component_states.get(name)
        out[name] = {"state": report.state if report else PENDING, "endpoint": report.endpoint if report else None,
                     "error": report.error if report else None}
    return out


def as_json(rec: InstanceRecord, now: datetime) -> dict[str, Any]:
    """The record (less its token hash) with ``components`` as above, ``cost_so_far`` and, for a failover's
    replacement, ``failover_phases`` (``spotleash.decide.failover.phases``)."""
    out = rec.model_dump(mode="json", exclude={"token_hash", "component_states"})
    out["components"] = components_shown(rec)
    out["cost_so_far"] = rec.cost_so_far(now)
    if rec.replaces:  # a failover's replacement: detection, provisioning, boot, restore, ready (None: not yet)
        out["failover_phases"] = phases(rec)
    return out


def shown_state(rec: InstanceRecord) -> str:
    """The state column: a live instance that got its preemption notice says so (it lives on for its grace
    so its last snapshot is answered; the router and the reaper already treat it as going)."""
    return f"{rec.state} (preempted)" if rec.live and rec.preempted else str(rec.state)


def postponed(rec: InstanceRecord) -> str:
    """A live instance's hibernation held back by a failed or unfinished snapshot (its alert), or ""."""
    req = rec.snapshot_request
    if not rec.live or req is None or req.reason != "hibernate" or not req.postponed:
        return ""
    return f"hibernation postponed: {req.postponed}; asked again"


def compact(rec: InstanceRecord) -> str:
    """One cell: ``name ok 1.2.3.4:8080`` per component (a failing one with the start of its error)."""
    parts = []
    for name, c in components_shown(rec).items():
        text = f"{name} {_MARK.get(c['state'], c['state'])}"
        if c["state"] == "healthy" and c["endpoint"]:
            text += f" {c['endpoint']}"
        elif c["error"]:
            text += f" {str(c['error'])[:40]}"
        parts.append(text)
    return "\n".join(parts)


def hibernated_json(h: Hibernation, now: datetime) -> dict[str, Any]:
    """A HIBERNATED lease: its components sleep in ``snapshot_id``; the next demand restores them."""
    out = h.model_dump(mode="json", exclude={"deployment_id"})
    out["state"] = "HIBERNATED"
    out["snapshot_age_s"] = round((now - h.snapshot_created_at).total_seconds(), 1)
    out["hibernated_for_s"] = round((now - h.hibernated_at).total_seconds(), 1)
    return out


HIBERNATED_COLUMNS = ("lease", "components", "state", "snapshot", "snapshot age", "size")


def hibernated_rows(hibernations: list[Hibernation], now: datetime) -> list[tuple[str, ...]]:
    """Table rows under HIBERNATED_COLUMNS."""
    rows: list[tuple[str, ...]] = []
    for h in hibernations:
        age = int((now - h.snapshot_created_at).total_seconds())
        shown = f"{age // 3600}h{age % 3600 // 60:02d}m" if age >= 3600 else f"{age // 60}m{age % 60:02d}s"
        rows.append((h.lease_id, ", ".join(h.components) or "-", "HIBERNATED", h.snapshot_id, shown,
                     f"{h.size_bytes / 1e6:.1f} MB"))
    return rows


def _mb(n: Any) -> str:
    return f"{float(n) / 2**20:.0f} MB" if isinstance(n, int | float) and n else "-"


def component_cells(name: str, state: Mapping[str, Any]) -> tuple[str, ...]:
    """One row of ``status``'s components table from the agent's hand-off state (``agent.handoff``): where it runs,
    its local copy, its local footprint, the memory the last stop freed (and in all, when more), and why."""
    freed = _mb(state.get("freed_bytes"))
    total = state.get("freed_total_bytes") or 0
    if total and total != state.get("freed_bytes"):
        freed += f" ({_mb(total)} in all)"
    why = str(state.get("reason") or "")
    if state.get("home"):
        why += f"; way home: {state['home']}"
    local = str(state.get("local") or "-")
    if state.get("pid"):
        local += f" (pid {state['pid']})"
    return (name, str(state.get("where") or "-"), local, _mb(state.get("footprint_bytes")), freed, why)
