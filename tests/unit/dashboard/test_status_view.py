"""``spotleash status``: per instance, each component's state, endpoint and last error (JSON and table)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from spotleash.dashboard.status import as_json, compact, shown_state
from spotleash.model import State, new_record, transition
from spotleash.wire.events import ComponentReport

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def record(**changes: object):  # type: ignore[no-untyped-def]
    rec = new_record(instance_id="sl-1", lease_id="l", deployment_id="d", event_id="e", provider="gce", now=NOW,
                     max_runtime_s=3600, components=["thumbnailer", "vectors"], token_hash="h" * 64)
    return transition(transition(rec, State.PROVISIONING, NOW), State.RUNNING, NOW).model_copy(update=changes)


def test_json_shows_every_launched_component_with_state_endpoint_and_error() -> None:
    rec = record(component_states={
        "thumbnailer": ComponentReport(state="healthy", endpoint="127.0.0.1:8301"),
        "extra": ComponentReport(state="failing", error="exit 1: boom"),
    })
    out = json.loads(json.dumps(as_json(rec, NOW)))
    assert out["components"] == {
        "thumbnailer": {"state": "healthy", "endpoint": "127.0.0.1:8301", "error": None},
        "vectors": {"state": "pending", "endpoint": None, "error": None},
        "extra": {"state": "failing", "endpoint": None, "error": "exit 1: boom"},
    }
    assert "token_hash" not in out and "component_states" not in out and out["cost_so_far"] == 0.0


def test_the_table_cell_is_compact() -> None:
    rec = record(component_states={"thumbnailer": ComponentReport(state="healthy", endpoint="10.0.0.2:8301"),
                                   "vectors": ComponentReport(state="failing", error="connection refused " * 5)})
    cell = compact(rec)
    assert cell.splitlines() == ["thumbnailer ok 10.0.0.2:8301", "vectors !! " + ("connection refused " * 5)[:40]]
    assert compact(record(components=[])) == ""


def test_a_live_instance_in_its_preemption_grace_says_so() -> None:
    assert shown_state(record()) == "RUNNING"
    assert shown_state(record(preempted=True, preempted_at=NOW)) == "RUNNING (preempted)"
    ended = transition(transition(record(preempted=True, preempted_at=NOW), State.TERMINATING, NOW),
                       State.TERMINATED, NOW, reason="preempted")
    assert shown_state(ended) == "TERMINATED"


def test_component_cells_from_the_hand_off_state() -> None:
    from spotleash.dashboard.status import component_cells

    away = {"where": "remote", "local": "stopped", "pid": None, "footprint_bytes": 300 * 2**20,
            "freed_bytes": 310 * 2**20, "freed_total_bytes": 620 * 2**20, "reason": "its remote copy serves",
            "home": "it fits; holding 3/300 s before coming home"}
    assert component_cells("vision", away) == (
        "vision", "remote", "stopped", "300 MB", "310 MB (620 MB in all)",
        "its remote copy serves; way home: it fits; holding 3/300 s before coming home")
    here = {"where": "local", "local": "running", "pid": 42, "footprint_bytes": None, "freed_bytes": 0,
            "freed_total_bytes": 0, "reason": "its local copy serves", "home": ""}
    assert component_cells("api", here) == ("api", "local", "running (pid 42)", "-", "-", "its local copy serves")
