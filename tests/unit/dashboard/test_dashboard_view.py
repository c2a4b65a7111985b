"""The dashboard's document: ``gather`` over the in-memory store, ``build_view`` with a fixed clock; figures by
hand and equal to the cost ledger's (the numbers ``spotleash cost`` and the budget guard use)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tests.support.memory_store import MemoryStore

from spotleash.dashboard.view import NO_ROUTES, build_view, gather
from spotleash.decide.ledger import month_to_date
from spotleash.model import Hibernation, InstanceRecord, Lease, RequestedSnapshot, State
from spotleash.wire.events import ComponentReport

NOW = datetime(2026, 11, 3, 12, 0, tzinfo=UTC)
DEP = "dep-dash"


def rec(iid: str, state: State, *, running: datetime | None, price: float, ended: datetime | None = None,
        provider: str = "gce", **more: Any) -> InstanceRecord:
    created = (running or NOW) - timedelta(minutes=1)
    return InstanceRecord.model_validate({
        "instance_id": iid, "lease_id": more.pop("lease_id", "lease-a"), "deployment_id": more.pop("dep", DEP),
        "event_id": f"e-{iid}", "provider": provider, "state": state, "created_at": more.pop("created_at", created),
        "updated_at": ended or running or created, "deadline": more.pop("deadline", created + timedelta(hours=3)),
        "running_at": running, "ended_at": ended, "price_per_hour": price, "provider_id": f"p-{iid}",
        "zone": "us-central1-a" if provider == "gce" else "Quebec, CA",
        "machine": "e2-highmem-4" if provider == "gce" else "RTX 4090", **more})


def seeded() -> MemoryStore:
    store = MemoryStore(DEP)
    # live: a READY GCE box since 10:00 with two components, its lease renewed 20 s ago
    store.put(rec("sl-ready", State.READY, running=NOW - timedelta(hours=2), price=0.06,
                  last_heartbeat=NOW - timedelta(seconds=12), components=["api", "ml"],
                  component_states={"api": ComponentReport(state="healthy", endpoint="10.0.0.5:8443"),
                                    "ml": ComponentReport(state="starting", error="loading weights")}))
    store.put_lease(Lease(lease_id="lease-a", deployment_id=DEP, expires_at=NOW + timedelta(seconds=70),
                          renewed_at=NOW - timedelta(seconds=20), holder="laptop"))
    # live: a VAST box asked for 5 min ago, still provisioning, no heartbeat, lease never seen
    store.put(rec("sl-vast", State.PROVISIONING, running=None, price=0.40, provider="vast", lease_id="lease-b",
                  created_at=NOW - timedelta(minutes=5), deadline=NOW + timedelta(minutes=55)))
    # ended yesterday 22:00-02:00 (spans midnight): 2 h on Nov 2, 2 h on Nov 3, at $0.10
    store.put(rec("sl-gone", State.TERMINATED, running=datetime(2026, 11, 2, 22, tzinfo=UTC), price=0.10,
                  ended=datetime(2026, 11, 3, 2, tzinfo=UTC), reason="reap: heartbeat_lost"))
    # last month: billed nothing this month
    store.put(rec("sl-old", State.TERMINATED, running=datetime(2026, 10, 20, tzinfo=UTC), price=1.0,
                  ended=datetime(2026, 10, 21, tzinfo=UTC), created_at=datetime(2026, 10, 20, tzinfo=UTC)))
    # another deployment: never shown
    store.put(rec("sl-other", State.READY, running=NOW - timedelta(hours=1), price=9.0, dep="dep-else"))
    # the audit trail terminate() writes, plus entries that are not deletions
    store.audit("launched", "threshold", NOW - timedelta(hours=3), instance_id="sl-gone", lease_id="lease-a")
    store.audit("reap", "heartbeat_lost", datetime(2026, 11, 3, 2, tzinfo=UTC), instance_id="sl-gone",
                lease_id="lease-a", provider="gce", provider_id="p-sl-gone", cost_so_far=0.4, seconds=3.0)
    store.audit("release", "delete_unconfirmed", NOW - timedelta(minutes=1), instance_id="sl-x", provider="vast",
                provider_id="99", detail="release: agent exit; provider still lists it")
    store.reject(source="demand", reason="invalid_json", detail="Expecting value", raw=b"{nope", message_id="m-1",
                 now=NOW - timedelta(minutes=30))
    store.reject(source="heartbeat", reason="schema", detail="lease_id missing", raw=b"{}", message_id="m-2",
                 now=NOW - timedelta(minutes=2))
    store.put_budget({"cost": 12.5, "budget": 50.0, "threshold": 0.2, "exceeded": False, "stop_all": False,
                      "at": NOW - timedelta(hours=5)})
    return store


def view_of(store: MemoryStore, **kw: Any) -> dict[str, Any]:
    return build_view(gather(store, NOW, monthly_budget_usd=50.0, **kw))


def test_every_live_instance_with_its_leash() -> None:
    v = view_of(seeded())
    assert [i["instance_id"] for i in v["instances"]] == ["sl-ready", "sl-vast"]  # by creation, ours only
    ready, vast = v["instances"]
    assert ready["state"] == "READY" and ready["provider"] == "gce" and ready["machine"] == "e2-highmem-4"
    assert ready["heartbeat_age_s"] == 12.0
    assert ready["deadline_in_s"] == pytest.approx((timedelta(hours=3) - timedelta(hours=2, minutes=1)).total_seconds())
    assert ready["lease"] == {"known": True, "age_s": 7260.0, "renewed_at": (NOW - timedelta(seconds=20)).isoformat(),
                              "renewed_age_s": 20.0, "expires_at": (NOW + timedelta(seconds=70)).isoformat(),
                              "expires_in_s": 70.0, "released": False, "holder": "laptop"}
    assert [(c["name"], c["state"], c["endpoint"], c["error"]) for c in ready["components"]] == [
        ("api", "healthy", "10.0.0.5:8443", None), ("ml", "starting", None, "loading weights")]
    assert all(c["route"] is None for c in ready["components"])
    assert vast["last_heartbeat"] is None and vast["heartbeat_age_s"] is None
    assert vast["lease"]["known"] is False and vast["lease"]["expires_in_s"] is None
    assert vast["deadline_in_s"] == 55 * 60.0


def test_spend_equals_the_ledger_and_the_hand_computed_figures() -> None:
    store = seeded()
    v = view_of(store)
    ledger = month_to_date(store.billed_since(datetime(2026, 11, 1, tzinfo=UTC)), NOW)
    # by hand: sl-gone 2 h on the 2nd and 2 h on the 3rd at 0.10; sl-ready 2 h today at 0.06
    assert v["spend"]["month"] == pytest.approx(0.4 + 0.12) == pytest.approx(ledger.total)
    assert v["spend"]["today"] == pytest.approx(0.2 + 0.12)
    assert v["spend"]["today"] == pytest.approx(ledger.by_day[NOW.date()])
    assert v["spend"]["days"] == [{"date": "2026-11-01", "cost": 0.0}, {"date": "2026-11-02", "cost": 0.2},
                                  {"date": "2026-11-03", "cost": 0.32}]
    assert v["spend"]["billing_now"] == 1  # sl-ready; the VAST box is not running yet
    assert v["budget"]["monthly_usd"] == 50.0
    assert v["budget"]["used_fraction"] == pytest.approx(0.52 / 50)
    assert v["budget"]["last_alert"] == {"at": (NOW - timedelta(hours=5)).isoformat(), "budget": 50.0, "cost": 12.5,
                                         "exceeded": False, "stop_all": False, "threshold": 0.2}


def test_deletions_with_reasons_and_rejected_events_newest_first() -> None:
    v = view_of(seeded())
    assert [(d["instance_id"], d["action"], d["reason"], d["confirmed"]) for d in v["deletions"]] == [
        ("sl-x", "release", "delete_unconfirmed", False), ("sl-gone", "reap", "heartbeat_lost", True)]
    assert v["deletions"][1]["cost_so_far"] == 0.4
    assert [(r["source"], r["reason"], r["size"]) for r in v["rejected"]] == [
        ("heartbeat", "schema", 2), ("demand", "invalid_json", 5)]
    assert "raw" not in v["rejected"][0]  # the bytes stay in the store


def test_without_a_route_source_routes_say_not_available() -> None:
    v = view_of(seeded())
    assert v["routes"] == {"available": False, "reason": NO_ROUTES, "components": {}}
    assert v["hibernated"] == []


def hibernation(lease_id: str, *, dep: str = DEP, **more: Any) -> Hibernation:
    return Hibernation.model_validate({
        "lease_id": lease_id, "deployment_id": dep, "snapshot_id": f"snap-{lease_id}", "instance_id": f"sl-{lease_id}",
        "components": ["vision", "chatbots"], "snapshot_created_at": NOW - timedelta(minutes=90, seconds=30),
        "size_bytes": 123_400_000, "raw_bytes": 400_000_000, "hibernated_at": NOW - timedelta(minutes=88), **more})


def test_hibernated_leases_with_components_snapshot_age_and_size() -> None:
    store = seeded()
    store.put_hibernation(hibernation("lease-z"))
    store.put_hibernation(hibernation("lease-h", components=[], size_bytes=0, raw_bytes=0))
    store.put_hibernation(hibernation("lease-else", dep="dep-else"))  # another deployment's: never shown
    v = view_of(store)
    assert [h["lease_id"] for h in v["hibernated"]] == ["lease-h", "lease-z"]
    assert v["hibernated"][1] == {
        "lease_id": "lease-z", "state": "HIBERNATED", "snapshot_id": "snap-lease-z", "instance_id": "sl-lease-z",
        "components": ["vision", "chatbots"], "size_bytes": 123_400_000, "raw_bytes": 400_000_000,
        "snapshot_created_at": (NOW - timedelta(minutes=90, seconds=30)).isoformat().replace("+00:00", "Z"),
        "snapshot_age_s": 5430.0,
        "hibernated_at": (NOW - timedelta(minutes=88)).isoformat().replace("+00:00", "Z"),
        "hibernated_for_s": 5280.0}
    assert v["hibernated"][0]["components"] == [] and v["hibernated"][0]["size_bytes"] == 0
    # the hibernated box's deletion (services.hibernate: terminate(..., action="hibernate")) is a deletion
    store.audit("hibernate", "hibernated", NOW - timedelta(minutes=88), instance_id="sl-lease-z", lease_id="lease-z",
                provider="vast", provider_id="77", cost_so_far=1.25, seconds=4.0)
    assert ("sl-lease-z", "hibernate", "hibernated", 1.25) in [
        (d["instance_id"], d["action"], d["reason"], d["cost_so_far"]) for d in view_of(store)["deletions"]]
    # a restore removes the document: the next read no longer shows the lease
    store.delete_hibernation("lease-z")
    assert [h["lease_id"] for h in view_of(store)["hibernated"]] == ["lease-h"]


def test_an_instance_asked_to_hibernate_and_a_replacements_failover_phases() -> None:
    store = seeded()
    lost = NOW - timedelta(minutes=10)
    asked = RequestedSnapshot(request_id="hibernate-1", reason="hibernate", requested_at=NOW - timedelta(seconds=40),
                              by="heartbeat")
    store.update("sl-ready", lambda r: r.model_copy(update={"snapshot_request": asked}))
    store.put(rec("sl-repl", State.READY, running=lost + timedelta(seconds=95), price=0.4, provider="vast",
                  created_at=lost + timedelta(seconds=20), lost_at=lost, replaces="sl-lost",
                  first_heartbeat_at=lost + timedelta(seconds=110), restore_s=4.5, ready_at=lost + timedelta(seconds=125),
                  last_heartbeat=NOW - timedelta(seconds=5)))
    rows = {i["instance_id"]: i for i in view_of(store)["instances"]}
    assert rows["sl-ready"]["snapshot_request"] == {"reason": "hibernate",
                                                    "requested_at": (NOW - timedelta(seconds=40)).isoformat(),
                                                    "postponed": ""}
    assert rows["sl-ready"]["failover"] is None and rows["sl-vast"]["snapshot_request"] is None
    assert rows["sl-repl"]["failover"] == {"replaces": "sl-lost", "phases": {
        "detection_s": 20.0, "provisioning_s": 75.0, "boot_s": 15.0, "restore_s": 4.5, "ready_s": 10.5,
        "total_s": 125.0}}


def test_a_route_source_says_where_each_component_goes() -> None:
    routes = {"api": {"target": "remote", "instance_id": "sl-ready", "reason": "remote ready", "requests": 3},
              "ml": {"target": "local", "instance_id": None, "reason": "remote component not healthy"}}
    v = view_of(seeded(), routes=lambda: routes)
    assert v["routes"]["available"] is True and v["routes"]["components"]["api"]["requests"] == 3
    api, ml = v["instances"][0]["components"]
    assert api["route"] == {"target": "remote", "instance_id": "sl-ready", "to_this_instance": True,
                            "reason": "remote ready"}
    assert ml["route"]["target"] == "local" and ml["route"]["to_this_instance"] is False


def test_empty_store_and_json_round_trip() -> None:
    v = view_of(MemoryStore(DEP))
    assert v["instances"] == [] and v["deletions"] == [] and v["rejected"] == []
    assert v["spend"]["month"] == 0 and len(v["spend"]["days"]) == 3
    assert v["budget"]["last_alert"] is None
    assert json.loads(json.dumps(v)) == v


def test_build_view_is_pure() -> None:
    inputs = gather(seeded(), NOW, monthly_budget_usd=50.0)
    assert build_view(inputs) == build_view(inputs)


def test_json_endpoint_time_over_many_records() -> None:
    """The measured cost of one refresh: 1000 live records, 1000 ended this month, 1000 audit entries."""
    store = MemoryStore(DEP)
    for i in range(1000):
        store.put(rec(f"sl-live-{i:04d}", State.READY, running=NOW - timedelta(minutes=i % 600), price=0.05,
                      lease_id=f"lease-{i % 50}", last_heartbeat=NOW - timedelta(seconds=i % 60),
                      components=["api"], component_states={"api": ComponentReport(state="healthy")}))
        store.put(rec(f"sl-end-{i:04d}", State.TERMINATED, running=NOW - timedelta(hours=30, minutes=i % 60),
                      ended=NOW - timedelta(hours=20), price=0.05))
        store.audit("reap", "heartbeat_lost", NOW - timedelta(seconds=i), instance_id=f"sl-end-{i:04d}",
                    cost_so_far=0.5)
    started = time.perf_counter()
    body = json.dumps(build_view(gather(store, NOW, monthly_budget_usd=50.0)))
    took = time.perf_counter() - started
    v = json.loads(body)
    assert len(v["instances"]) == 1000 and len(v["deletions"]) == 50
    print(f"\ndashboard state over 2000 records + 1000 audit entries: {took * 1000:.0f} ms, {len(body)} bytes")
    assert took < 10.0


def test_local_copies_from_the_agents_hand_off_state() -> None:
    placed = {"vision": {"where": "remote", "local": "stopped", "pid": None, "footprint_bytes": 300 * 2**20,
                         "freed_bytes": 310 * 2**20, "freed_total_bytes": 620 * 2**20,
                         "reason": "its remote copy serves; the local copy was stopped, freeing 310 MB",
                         "home": "310 MB would not fit"},
              "api": {"where": "local", "local": "running", "pid": 42, "footprint_bytes": None, "freed_bytes": 0,
                      "freed_total_bytes": 0, "reason": "its local copy serves", "home": ""}}
    v = view_of(seeded(), placed=lambda: placed)
    lc = v["local_copies"]
    assert lc["available"] is True and [c["name"] for c in lc["components"]] == ["api", "vision"]
    api, vision = lc["components"]
    assert vision == {"name": "vision", "where": "remote", "local": "stopped", "pid": None, "footprint_mb": 300.0,
                      "freed_mb": 310.0, "freed_total_mb": 620.0, "reason": placed["vision"]["reason"],
                      "home": "310 MB would not fit"}
    assert api["footprint_mb"] is None and api["home"] is None and api["pid"] == 42
    json.dumps(v)


def test_without_an_agent_local_copies_say_not_available() -> None:
    assert view_of(seeded())["local_copies"] == {"available": False, "reason": NO_ROUTES, "components": []}
    assert view_of(seeded(), placed=lambda: None)["local_copies"]["available"] is False  # no agent answers
