"""The fault plan every fake shares: matching, counting, and refusing rules that make no sense."""

from __future__ import annotations

import pytest

from local_emulator.faults import FaultError, FaultPlan


def test_first_matching_rule_fires_until_spent_and_calls_are_counted() -> None:
    plan = FaultPlan()
    plan.add({"operation": "instances.insert", "count": 2, "status": 503})
    plan.add({"operation": "*", "latency_s": 0.5})
    assert plan.take("instances.list") is not None  # "*" matches anything
    assert [plan.take("instances.insert").status for _ in range(2)] == [503, 503]  # type: ignore[union-attr]
    assert plan.take("instances.insert") is None
    state = plan.to_json()
    assert state["left"] == 0 and state["fired"] == 3
    assert state["calls"] == {"instances.list": 1, "instances.insert": 3}
    assert [(r["fired"], r["left"]) for r in state["rules"]] == [(2, 0), (1, 0)]


def test_method_path_and_effect_narrow_a_rule() -> None:
    plan = FaultPlan(effects=("offer_gone",))
    plan.control("POST", {"method": "delete", "path": r"instances/\d+", "status": 429})
    plan.control("POST", {"effect": "offer_gone"})
    assert plan.take("destroy", method="GET", path="/api/v0/instances/7/") is None
    assert plan.take("destroy", method="DELETE", path="/api/v0/ssh/7/") is None
    assert plan.take("destroy", method="DELETE", path="/api/v0/instances/7/") is not None
    assert plan.take("create") is None  # effects are only taken by the model, by name
    assert plan.take("create", effect="offer_gone") is not None
    assert plan.take("create", effect="offer_gone") is None
    assert plan.to_json()["calls"] == {"destroy": 3, "create": 1}
    assert plan.control("DELETE", None) == {"ok": True} and plan.to_json()["rules"] == []


@pytest.mark.parametrize("body, why", [
    ({"operation": "x"}, "must do something"),
    ({"status": 503, "kind": "error"}, "unknown fault field"),
    ({"status": 503, "count": 0}, "at least 1"),
    ({"status": 200}, "HTTP error status"),
    ({"latency_s": -1}, "latency_s"),
    ({"effect": "no_such"}, "knows"),
    ({"status": 503, "path": "("}, "regular expression"),
    ({"status": "soon"}, "numbers"),
    ([], "JSON object"),
])
def test_bad_rules_are_refused_with_a_reason(body: object, why: str) -> None:
    with pytest.raises(FaultError, match=why):
        FaultPlan().add(body)


def test_unknown_verb() -> None:
    with pytest.raises(FaultError, match="PUT"):
        FaultPlan().control("PUT", {})
