"""`make chaos` runs in two lanes, each writing its own figures; `tests.chaos.report.merge` makes them one run's."""

from __future__ import annotations

from typing import Any

import pytest
from tests.chaos.report import merge


def lane(date: str, scenarios: dict[str, dict[str, Any]], failed: list[str] | None = None) -> dict[str, Any]:
    return {"date": date, "machine": {"cores": 2}, "runs_per_scenario": 1, "bounds_s": {"reap": 41.0},
            "command": "x", "scenarios": scenarios, "failed_tests": failed or [],
            "totals": {"runs": sum(s["runs"] for s in scenarios.values()),
                       "orphans_left": sum(s["orphans_left"] for s in scenarios.values()),
                       "records_lost": sum(s["records_lost"] for s in scenarios.values())}}


def row(runs: int, orphans: int = 0, lost: int = 0) -> dict[str, Any]:
    return {"runs": runs, "orphans_left": orphans, "records_lost": lost, "worst_cleanup_s": 1.0}


def test_the_lanes_figures_add_up_to_one_run() -> None:
    a = lane("2026-12-07T16:40:00+00:00", {"b scenario": row(1), "a scenario": row(2, orphans=1)}, ["t::x"])
    b = lane("2026-12-07T16:39:58+00:00", {"c scenario": row(3, lost=2)})
    out = merge([a, b])
    assert list(out["scenarios"]) == ["a scenario", "b scenario", "c scenario"]
    assert out["totals"] == {"runs": 6, "orphans_left": 1, "records_lost": 2}
    assert out["failed_tests"] == ["t::x"]
    assert out["date"] == "2026-12-07T16:40:00+00:00"  # when the run ended (its last lane)
    assert out["machine"] == {"cores": 2} and out["bounds_s"] == {"reap": 41.0}


def test_a_scenario_in_both_lanes_or_no_lane_is_refused() -> None:
    with pytest.raises(ValueError, match="two lanes"):
        merge([lane("d", {"x": row(1)}), lane("d", {"x": row(1)})])
    with pytest.raises(ValueError, match="no lane"):
        merge([])
