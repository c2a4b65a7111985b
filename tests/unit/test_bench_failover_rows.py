"""The snapshot and failover benchmark sections' pure parts: phase split, projection, rows, merging.

Built from hand-made records and raw results; nothing is timed and no timing is asserted.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from bench import failover, snapshot_throughput
from bench.__main__ import build_rows, merge, restore_median_s

from local_emulator.routed_app import routed_toml
from spotleash.model import InstanceRecord, new_record

T0 = datetime(2026, 11, 30, 1, 0, 0, tzinfo=UTC)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def replacement(**kw: Any) -> InstanceRecord:
    rec = new_record(instance_id="sl-new", lease_id="l1", deployment_id="d", event_id="e", provider="gce",
                     now=at(2.0), max_runtime_s=3600)
    fields = {"replaces": "sl-old", "lost_at": at(0.0), "running_at": at(3.0), "first_heartbeat_at": at(5.0),
              "ready_at": at(20.0), "restore_s": 1.0, **kw}
    return rec.model_copy(update=fields)


ENTRY = {"instance_started_at": at(4.5).isoformat(),
         "timings": {"fetch_s": 0.5, "install_s": 12.0, "to_healthy_s": 2.0, "restore_s": 1.0}}


def test_phases_split_own_work_provider_waits_and_the_app() -> None:
    ph = failover.split_phases(replacement(), ENTRY, insert_at=at(2.25))
    assert ph["detection_s"] == pytest.approx(2.0) and ph["total_s"] == pytest.approx(20.0)
    assert ph["launch_work_s"] == pytest.approx(0.25) and ph["provider_create_s"] == pytest.approx(0.75)
    assert ph["provider_boot_s"] == pytest.approx(1.5) and ph["agent_start_s"] == pytest.approx(0.5)
    # first beat → READY is 15 s, minus restore 1 s = 14 s; minus fetch, install, healthy = 0.5 s hand-off
    assert ph["ready_s"] == pytest.approx(14.0) and ph["handoff_s"] == pytest.approx(0.5)
    assert ph["own_s"] == pytest.approx(2.0 + 0.25 + 0.5 + 0.5 + 0.5)
    assert ph["own_work_s"] == pytest.approx(ph["own_s"] - 2.0)  # type: ignore[operator]
    assert ph["provider_s"] == pytest.approx(2.25) and ph["app_s"] == pytest.approx(13.0)
    assert ph["components_s"] == pytest.approx(1.0)  # the agent's to_healthy (2 s) holds the restore (1 s)
    parts = [ph[k] for k in ("detection_s", "launch_work_s", "provider_create_s", "provider_boot_s", "agent_start_s",
                             "restore_s", "fetch_s", "install_s", "components_s", "handoff_s")]
    assert sum(p for p in parts if p is not None) == pytest.approx(ph["total_s"])  # nothing counted twice


def test_without_a_compute_call_log_the_whole_create_call_is_launch_work() -> None:
    ph = failover.split_phases(replacement(provider="vast"), ENTRY, insert_at=None)
    assert ph["launch_work_s"] == pytest.approx(1.0) and ph["provider_create_s"] == 0.0


def test_a_replacement_not_yet_ready_has_no_own_share() -> None:
    ph = failover.split_phases(replacement(ready_at=None), {}, insert_at=None)
    assert ph["handoff_s"] is None and ph["own_s"] is None and ph["own_work_s"] is None


def test_projection_adds_the_field_reports_waits_and_says_whether_targets_are_met() -> None:
    p = failover.projection(own_work_s=1.0, app_s=10.0, restore_1gb_s=6.0, detection_s=1.5)
    assert p["provider_s"] == pytest.approx(1.59 + 72.77 + 12.36)
    assert p["total_s"] == pytest.approx(86.72 + 6.0 + 10.0 + 2.5) and p["total_met"] and p["own_met"]
    slow = failover.projection(own_work_s=3.0, app_s=25.0, restore_1gb_s=None, detection_s=4.0)
    assert slow["restore_s"] is None and not slow["own_met"] and not slow["total_met"]


def answer(end: float, who: str | None, component: str = "thumbnailer") -> failover.Answer:
    return failover.Answer(end - 0.01, end, component, who, "" if who else "502 no target")


def test_windows_count_failures_and_find_the_first_remote_answer() -> None:
    answers = [answer(1.0, "local"), answer(2.0, "sl-a"), answer(3.0, None), answer(4.0, "sl-b"),
               answer(5.0, "sl-b")]
    assert failover.first_served(answers, "sl-b", after=0.0) == 4.0
    assert failover.first_served(answers, "sl-b", after=4.5) == 5.0
    assert failover.first_served(answers, "sl-c", after=0.0) is None
    w = failover.window_counts(answers)
    assert (w["total"], w["failed"], w["local"], w["remote"]) == (5, 1, 1, 3)
    assert w["failures"] == ["thumbnailer: 502 no target"]


def fo(provider: str, failed: int, det: float = 1.0, fault: float | None = None) -> dict[str, Any]:
    ph = failover.split_phases(replacement(provider=provider, lost_at=at(2.0 - det)), ENTRY,
                               insert_at=at(2.25) if provider == "gce" else None)
    if fault is not None:
        ph["fault_to_intent_s"] = fault
    return {"old": "sl-old", "new": "sl-new", "provider": provider, "reason": "preempted", "phases": ph,
            "ready_to_first_remote_s": 0.04, "kill_to_remote_again_s": 21.0,
            "window": {"total": 900, "failed": failed, "failures": [], "local": 500, "remote": 400},
            "retried": 2, "router_failed": failed}


def raw_failover() -> dict[str, Any]:
    lat = {"routed_ms": {"n": 3, "median": 3.0, "p99": 5.0, "max": 5.0},
           "direct_ms": {"n": 3, "median": 1.0, "p99": 2.0, "max": 2.0}}
    return {"gce": {"provider": "gce", "failovers": [fo("gce", 0), fo("gce", 0)], "first_ready_to_first_remote_s": 0.02,
                    "latency": lat},
            "vast": {"provider": "vast", "first_ready_to_first_remote_s": 0.03, "failovers": [
                {**fo("vast", 1, det=3.0), "state": {"size_mb": 1024, "restored_same_sha256": True}}]}}


def test_failover_rows_compare_to_baselines_and_quote_targets() -> None:
    rows = {r["key"]: r for r in failover.failover_rows(raw_failover(), restore_1gb_s=6.0)}
    assert rows["failover_gce_failed"]["within_target"] is True and rows["failover_gce_failed"]["median"] == 0.0
    assert rows["failover_vast_failed"]["within_target"] is False and "900 sent" in rows["failover_vast_failed"]["metric"]
    assert rows["failover_gce_first_remote"]["n"] == 3  # two replacements and the first launch
    assert rows["remote_path_latency"]["ratio"] == pytest.approx(3.0)
    assert rows["remote_path_added"]["median"] == pytest.approx(2.0) and rows["remote_path_added"]["p99"] == pytest.approx(3.0)
    assert "same sha256 on the replacement: 1/1" in rows["failover_vast_restore"]["metric"]
    assert rows["failover_vast_restore"]["ratio"] == pytest.approx(1.0 / 6.0)  # restore phase 1 s vs 6 s alone
    assert "failover_gce_restore" not in rows
    proj = rows["projection_vast_1gb"]
    assert "1.00 s" in proj["metric"] and proj["target"] == "< 110 s"  # the 1 GB restore inside the failover
    alone = {**raw_failover(), "vast": {**raw_failover()["vast"], "failovers": [fo("vast", 0)]}}
    assert "6.00 s" in {r["key"]: r for r in failover.failover_rows(alone, 6.0)}["projection_vast_1gb"]["metric"]
    own = rows["projection_vast_own"]
    assert own["median"] == pytest.approx(3.0 + 0.5 + 0.5 + 0.5 + 1.0)  # detection + agent start, fetch, hand-off, create
    assert own["within_target"] is False
    assert "not measured" in {r["key"]: r for r in failover.failover_rows(alone)}["projection_vast_1gb"]["metric"]


def test_the_projection_takes_detection_from_the_outbid_when_measured() -> None:
    """Outbid → intent (scheduled reaps paused) is production's detection; last beat → intent the fallback."""
    raw = raw_failover()
    raw["vast"]["failovers"] = [{**fo("vast", 0, det=3.0, fault=f), "state": {"size_mb": 1024}} for f in (4.0, 5.0, 6.0)]
    rows = {r["key"]: r for r in failover.failover_rows(raw, restore_1gb_s=6.0)}
    assert rows["projection_vast_own"]["median"] == pytest.approx(5.0 + 0.5 + 0.5 + 0.5 + 1.0)
    assert "5.00 s" in rows["projection_vast_own"]["metric"]
    assert rows["failover_vast_fault_to_intent"]["median"] == pytest.approx(5.0)
    assert "router" in rows["failover_vast_fault_to_intent"]["metric"]
    assert rows["failover_gce_fault_to_intent"]["n"] == 0  # not measured in this raw: an empty row, not a number


def snapshot_raw() -> dict[str, Any]:
    def s(v: float) -> dict[str, Any]:
        return {"n": 2, "median": v, "p99": v, "max": v}

    size = {"mb": 1024, "raw_bytes": 1024 * 2**20, "snapshot_s": s(8.0), "restore_s": s(4.0), "read_sha256_s": s(1.0),
            "raw_upload_s": s(4.0), "raw_download_s": s(2.0), "stored_bytes": s(800 * 2**20), "snap_pack_s": s(5.0),
            "snap_upload_s": s(2.5), "snap_verify_s": s(0.4)}
    return {"mix": snapshot_throughput.MIX, "sizes": [size]}


def test_snapshot_rows_are_times_and_throughputs_against_raw_transfers() -> None:
    rows = {r["key"]: r for r in snapshot_throughput.snapshot_rows(snapshot_raw())}
    assert rows["snapshot_1024"]["ratio"] == pytest.approx(2.0) and "1.0 GB" in rows["snapshot_1024"]["metric"]
    assert rows["restore_1024"]["baseline_name"] == "raw download" and rows["restore_1024"]["ratio"] == pytest.approx(2.0)
    assert rows["snapshot_1024_mbs"]["median"] == pytest.approx(128.0) and rows["snapshot_1024_mbs"]["ratio"] == pytest.approx(0.5)
    assert "1024 MB/s" in rows["snapshot_1024_mbs"]["metric"]  # read + sha256 alone
    assert restore_median_s({"snapshot": snapshot_raw()}, 1024) == 4.0
    assert restore_median_s({"snapshot": snapshot_raw()}, 100) is None and restore_median_s({}, 1024) is None


def test_state_is_mostly_incompressible_in_the_stated_mix(tmp_path: Path) -> None:
    size = snapshot_throughput.make_state(tmp_path / "ws", 2)
    assert size == pytest.approx(2 * 2**20, rel=0.02)
    rand = sum(p.stat().st_size for p in (tmp_path / "ws" / "ckpt").glob("shard-*.bin"))
    assert rand / size == pytest.approx(snapshot_throughput.MIX["random"], abs=0.02)


def results(raw: dict[str, Any], sections: list[str], **kw: Any) -> dict[str, Any]:
    return {"date": "d", "machine": {"commit": "c" * 40, "cores": 2}, "quick": False, "plan": {}, "sections": sections,
            "timings": {"SPOTLEASH_LEASE_TTL_S": "6"}, "raw": raw, "errors": {}, "rows": [], "notes": [],
            "loadavg_start": [1.0], "loadavg_end": [2.0], **kw}


def test_merging_an_only_run_keeps_the_other_sections_and_says_so() -> None:
    base = results({"other": {"keep": 1}, "snapshot": {"old": True}}, ["other", "snapshot"],
                   errors={"snapshot": "old failure", "reap": "kept"})
    run = results({"snapshot": snapshot_raw(), "failover": raw_failover()}, ["snapshot", "failover"],
                  date="later", quick=True, duration_s=300.0, loadavg_start=[3.5], loadavg_end=[4.5])
    merged = merge(base, run)
    assert merged["raw"]["other"] == {"keep": 1} and merged["raw"]["snapshot"] == snapshot_raw()
    assert merged["errors"] == {"reap": "kept"} and merged["sections"] == ["other", "snapshot", "failover"]
    assert merged["merged"][0]["sections"] == ["snapshot", "failover"] and base["raw"]["snapshot"] == {"old": True}
    again = merge(merged, run)
    assert len(again["merged"]) == 1  # re-merging the same sections replaces the record of the first merge
    only_failover = merge(merged, {**run, "sections": ["failover"], "raw": {"failover": raw_failover()}})
    assert [m["sections"] for m in only_failover["merged"]] == [["snapshot"], ["failover"]]
    build_rows(merged)
    keys = {r["key"] for r in merged["rows"] if "key" in r}
    assert {"snapshot_1024", "failover_gce_total", "projection_vast_1gb"} <= keys
    assert any("measured separately (later, quick, 300 s" in n and "load 3.5 → 4.5" in n for n in merged["notes"])
    assert json.loads(json.dumps(merged))  # stays a results file


def test_routed_toml_for_gpu_asks_a_gpu_for_every_component() -> None:
    text = routed_toml({"thumbnailer": 1, "vectors": 2}, {"thumbnailer": 3, "vectors": 4}, gpu=True)
    assert text.count("gpu = true") == 2
    assert "gpu" not in routed_toml({"thumbnailer": 1, "vectors": 2}, {"thumbnailer": 3, "vectors": 4})


def test_notes_say_whether_the_projection_meets_its_target() -> None:
    alone = {**raw_failover(), "vast": {**raw_failover()["vast"], "failovers": [fo("vast", 1, det=3.0)]}}

    def proj(restore_s: float) -> str:
        return next(n for n in failover.failover_notes(alone, restore_s) if n.startswith("projection:"))

    assert proj(6.0).startswith("projection: 111.2 s, over the 110 s target")  # 86.72 + 6 + app 13 + own 5.5 s
    assert proj(2.0).startswith("projection: 107.2 s, within the 110 s target")
    assert "60–120 s" in next(n for n in failover.failover_notes(raw_failover()) if n.startswith("failover detection"))
