"""What the dashboard shows: one JSON document, built by a pure function of what the store holds.

``gather`` reads the store (its only I/O); ``build_view`` turns those reads and ``now`` into the page's
document: every live instance with its leash (lease age and expiry, last heartbeat, deadline, components'
health, where traffic goes when a route source is given), spend today and this month from the cost
ledger (the figures ``spotleash cost`` and the budget guard use) with one entry per day, the budget and
its last alert, hibernated leases (the documents of ``hibernations``, shown as ``spotleash status`` shows
them), the deletions with their reasons and the rejected events. A failover's replacement carries its
phase timings (``spotleash.decide.failover.phases``), as ``status --json`` does.

Times go out as ISO 8601 (UTC) and ages as seconds at ``now``; the page moves the clocks on between two
reads by itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol

from spotleash.clock import age_s
from spotleash.dashboard.status import hibernated_json
from spotleash.decide.failover import phases
from spotleash.decide.ledger import PriceLookup, month_to_date
from spotleash.model import Hibernation, InstanceRecord, Lease

SCHEMA_VERSION = 2  # 2: ``hibernated`` is the list of hibernated leases (it was a not-available note)
MAX_ROWS = 50  # deletions and rejected events shown, newest first
AUDIT_READ = 1000  # audit entries read per refresh

# The audit actions ``services.terminate`` writes when a deletion is confirmed (its ``action`` argument).
DELETION_ACTIONS = frozenset({"delete", "reap", "release", "launch_cleanup", "heartbeat", "preempted", "hibernate"})

RoutesSource = Callable[[], Mapping[str, Mapping[str, Any]] | None]  # None: no router answers now

NO_ROUTES = ("the router runs inside `spotleash agent` on the laptop; this view has no route source, "
             "so where traffic goes is not available here")


class DashboardStore(Protocol):
    """The reads the dashboard makes (``FirestoreStore`` and the tests' ``MemoryStore`` both have them)."""

    deployment_id: str

    def live_instances(self) -> list[InstanceRecord]: ...
    def billed_since(self, since: datetime) -> list[InstanceRecord]: ...
    def get_lease(self, lease_id: str) -> Lease | None: ...
    def get_budget(self) -> dict[str, Any] | None: ...
    def hibernations(self) -> list[Hibernation]: ...
    def audit_entries(self, instance_id: str | None = None, limit: int = 1000) -> list[dict[str, Any]]: ...
    def rejected(self, limit: int = 1000) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class Inputs:
    """Everything ``build_view`` needs, already read."""

    now: datetime
    deployment_id: str
    live: list[InstanceRecord]
    month: list[InstanceRecord]  # the records that may have billed since the 1st (billed_since)
    leases: dict[str, Lease | None]
    budget_alert: dict[str, Any] | None
    monthly_budget_usd: float
    audit: list[dict[str, Any]]
    rejected: list[dict[str, Any]]
    hibernated: list[Hibernation] = field(default_factory=list)
    routes: Mapping[str, Mapping[str, Any]] | None = None  # None: no route source
    placed: Mapping[str, Mapping[str, Any]] | None = None  # the agent's hand-off state (agent.handoff); None: none
    price: PriceLookup | None = field(default=None, compare=False)


def gather(store: DashboardStore, now: datetime, *, monthly_budget_usd: float, price: PriceLookup | None = None,
           routes: RoutesSource | None = None, placed: RoutesSource | None = None) -> Inputs:
    """Read what the view needs: live records, this month's billed records, their leases, budget, hibernated
    leases, audit, rejects."""
    from spotleash.clock import month_start

    live = store.live_instances()
    lease_ids = sorted({r.lease_id for r in live})
    return Inputs(
        now=now, deployment_id=store.deployment_id, live=live, month=store.billed_since(month_start(now)),
        leases={lid: store.get_lease(lid) for lid in lease_ids}, budget_alert=store.get_budget(),
        monthly_budget_usd=monthly_budget_usd, hibernated=store.hibernations(),
        audit=store.audit_entries(limit=AUDIT_READ), rejected=store.rejected(limit=AUDIT_READ),
        routes=routes() if routes is not None else None, price=price,
        placed=placed() if placed is not None else None,
    )


# ------------------------------------------------------------------------------ pure parts
def _iso(dt: datetime | None) -> str | None:
    return dt.astimezone(UTC).isoformat() if dt is not None else None


def _ms(seconds: float | None) -> float | None:
    return round(seconds, 3) if seconds is not None else None


def _plain(value: Any) -> Any:
    """A stored field as JSON: datetimes as ISO, bytes dropped, anything else as it is or its text."""
    if isinstance(value, datetime):
        return _iso(value if value.tzinfo else value.replace(tzinfo=UTC))
    if isinstance(value, bytes):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _when(entry: Mapping[str, Any]) -> datetime:
    at = entry.get("at")
    if isinstance(at, datetime):
        return at if at.tzinfo else at.replace(tzinfo=UTC)
    return datetime.min.replace(tzinfo=UTC)


def instance_row(rec: InstanceRecord, lease: Lease | None, first_of_lease: datetime | None, now: datetime,
                 routes: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Any]:
    """One live instance with its leash."""
    components = []
    for name in sorted(set(rec.components) | set(rec.component_states)):
        report = rec.component_states.get(name)
        route = (routes or {}).get(name)
        components.append({
            "name": name,
            "state": report.state if report else "not reported",
            "endpoint": report.endpoint if report else None,
            "error": report.error if report else None,
            "gave_up": bool(report and report.gave_up),
            "route": None if route is None else {
                "target": str(route.get("target", "")), "instance_id": route.get("instance_id"),
                "to_this_instance": route.get("instance_id") == rec.instance_id, "reason": route.get("reason"),
            },
        })
    request = rec.snapshot_request
    return {
        "instance_id": rec.instance_id, "lease_id": rec.lease_id, "provider": rec.provider, "state": str(rec.state),
        "machine": rec.machine, "zone": rec.zone, "provider_id": rec.provider_id,
        "created_at": _iso(rec.created_at), "age_s": _ms(age_s(rec.created_at, now)),
        "last_heartbeat": _iso(rec.last_heartbeat), "heartbeat_age_s": _ms(age_s(rec.last_heartbeat, now)),
        "deadline": _iso(rec.deadline), "deadline_in_s": round((rec.deadline - now).total_seconds(), 3),
        "price_per_hour": rec.price_per_hour, "preempted": rec.preempted,
        # "hibernate": idle, so a snapshot was asked for; once it is verified the box is destroyed
        "snapshot_request": None if request is None else {"reason": request.reason,
                                                          "requested_at": _iso(request.requested_at),
                                                          "postponed": request.postponed},
        "failover": None if not rec.replaces else {"replaces": rec.replaces, "phases": phases(rec)},
        "lease": {
            "known": lease is not None,
            "age_s": _ms(age_s(first_of_lease, now)),  # since its first live instance was asked for
            "renewed_at": _iso(lease.renewed_at) if lease else None,
            "renewed_age_s": _ms(age_s(lease.renewed_at, now)) if lease else None,
            "expires_at": _iso(lease.expires_at) if lease else None,
            "expires_in_s": round((lease.expires_at - now).total_seconds(), 3) if lease else None,
            "released": bool(lease and lease.released),
            "holder": lease.holder if lease else None,
        },
        "components": components,
    }


def spend(records: Iterable[InstanceRecord], now: datetime, price: PriceLookup | None) -> dict[str, Any]:
    """Month to date from the ledger, with one entry per day from the 1st to today (days without cost: 0)."""
    ledger = month_to_date(records, now, price=price)
    today = now.astimezone(UTC).date()
    days: list[dict[str, Any]] = []
    d: date = ledger.since.date()
    while d <= today:
        days.append({"date": d.isoformat(), "cost": round(ledger.by_day.get(d, 0.0), 6)})
        d += timedelta(days=1)
    return {
        "currency": "USD", "since": _iso(ledger.since), "month": round(ledger.total, 6),
        "today": round(ledger.by_day.get(today, 0.0), 6), "days": days,
        "by_provider": {k: round(v, 6) for k, v in ledger.by_provider.items()},
        "billing_now": sum(1 for ln in ledger.lines if ln.billing),
        "guessed": sorted(ln.instance_id for ln in ledger.lines if ln.notes or ln.rate_source != "launch"),
    }


def budget(monthly_usd: float, month_spend: float, alert: Mapping[str, Any] | None) -> dict[str, Any]:
    return {
        "monthly_usd": monthly_usd,
        "used_fraction": round(month_spend / monthly_usd, 6) if monthly_usd > 0 else None,
        "last_alert": None if alert is None else {k: _plain(v) for k, v in sorted(alert.items())},
    }


def deletions(audit: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Confirmed deletions (and deletions the provider has not confirmed yet), newest first."""
    found = [e for e in audit if e.get("instance_id") and (
        (e.get("action") in DELETION_ACTIONS and "cost_so_far" in e) or e.get("reason") == "delete_unconfirmed")]
    found.sort(key=_when, reverse=True)
    return [{
        "at": _plain(e.get("at")), "instance_id": e.get("instance_id"), "lease_id": e.get("lease_id"),
        "action": e.get("action"), "reason": e.get("reason"), "provider": e.get("provider"),
        "provider_id": e.get("provider_id"), "confirmed": e.get("reason") != "delete_unconfirmed",
        "cost_so_far": _plain(e.get("cost_so_far")), "detail": _plain(e.get("detail")),
    } for e in found[:MAX_ROWS]]


def rejected_rows(rejected: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Bad input with its reason, newest first (the raw bytes stay in the store)."""
    found = sorted(rejected, key=_when, reverse=True)
    return [{"at": _plain(e.get("at")), "source": e.get("source"), "reason": e.get("reason"),
             "detail": _plain(e.get("detail")), "size": e.get("size"), "message_id": e.get("message_id")}
            for e in found[:MAX_ROWS]]


def _mb(n: Any) -> float | None:
    return round(float(n) / 2**20, 1) if isinstance(n, int | float) else None


def local_copies(placed: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Any]:
    """Per component, from the agent's hand-off state: where it runs now, its local copy, its local footprint and
    the memory freed (MB), and why."""
    if placed is None:
        return {"available": False, "reason": NO_ROUTES, "components": []}
    return {"available": True, "reason": None, "components": [
        {"name": name, "where": st.get("where"), "local": st.get("local"), "pid": st.get("pid"),
         "footprint_mb": _mb(st.get("footprint_bytes")), "freed_mb": _mb(st.get("freed_bytes")),
         "freed_total_mb": _mb(st.get("freed_total_bytes")), "reason": st.get("reason"), "home": st.get("home") or None}
        for name, st in sorted(placed.items())]}


def build_view(inputs: Inputs) -> dict[str, Any]:
    """The dashboard's document. Pure: the same inputs give the same document."""
    now = inputs.now
    live = sorted(inputs.live, key=lambda r: (r.created_at, r.instance_id))
    first: dict[str, datetime] = {}
    for rec in live:
        first[rec.lease_id] = min(first.get(rec.lease_id, rec.created_at), rec.created_at)
    money = spend(inputs.month, now, inputs.price)
    routes: dict[str, Any]
    if inputs.routes is None:
        routes = {"available": False, "reason": NO_ROUTES, "components": {}}
    else:
        routes = {"available": True, "reason": None,
                  "components": {k: {kk: _plain(vv) for kk, vv in v.items()} for k, v in sorted(inputs.routes.items())}}
    hibernated = [hibernated_json(h, now) for h in sorted(inputs.hibernated, key=lambda h: h.lease_id)]
    return {
        "schema_version": SCHEMA_VERSION,
        "deployment_id": inputs.deployment_id,
        "now": _iso(now),
        "instances": [instance_row(r, inputs.leases.get(r.lease_id), first.get(r.lease_id), now, inputs.routes)
                      for r in live],
        "spend": money,
        "budget": budget(inputs.monthly_budget_usd, money["month"], inputs.budget_alert),
        "routes": routes,
        "local_copies": local_copies(inputs.placed),
        "hibernated": hibernated,
        "deletions": deletions(inputs.audit),
        "rejected": rejected_rows(inputs.rejected),
    }
