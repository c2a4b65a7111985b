"""Section ``model`` of the benchmarks, its pure parts: the projection for a 1 GB model on a real VAST box, the rows
(each figure beside its baseline, the issue's targets quoted), and the embedder config the bench's agent runs.

Built from hand-made raw results; nothing is timed and no timing is asserted."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest
from bench import model_answer
from bench.__main__ import build_rows
from bench.failover import FIELD_VAST
from bench.stats import summary

PHASES = {"alarm_to_intent_s": 1.2, "launch_s": 0.3, "boot_s": 1.5, "fetch_s": 0.4,
          "install_s": 2.0, "load_s": 1.5, "restore_s": 0.0, "handoff_s": 0.5, "route_s": 0.5, "total_s": 8.4}


def raw_model() -> dict[str, Any]:
    runs = [{"instance_id": "sl-1", "phases": PHASES, "demand_logged_s": 1.0, "served_by": "sl-1", "paraphrase": 0.8, "unrelated": 0.1,
             "inet_down_mbps": 1000.0}]
    alarm: dict[str, Any] = {"sha256": "a" * 64, "package_bytes": 200_000_000, "weights_bytes": 100_000_000,
                             "runs": runs, "phases": {k: summary([v]) for k, v in PHASES.items()}, "read_mb_s": 1000.0}
    alarm["projection"] = model_answer.project(alarm)
    one = {"uploaded_bytes": 30_000, "blobs_uploaded": 1}
    install = {"python": "/usr/bin/python3", "blobs": 75, "runs": [],
               "uv": {"total_s": summary([1.6, 1.8]), "assemble_s": summary([0.3, 0.3]), "path": "uv",
                      "steps": {"uv venv": summary([0.1, 0.1]), "install": summary([1.1, 1.3])}},
               "pip": {"total_s": summary([5.0, 6.0]), "assemble_s": summary([0.3, 0.3]), "path": "pip",
                       "steps": {"python -m venv": summary([2.0, 2.0]), "install": summary([4.7, 5.7])}}}
    republish = {"weights_bytes": 2**30, "size_bytes": 1_150_000_000, "wheels": 72, "first": [one], "oneline": [one],
                 "first_s": summary([12.0]), "oneline_s": summary([2.5]), "first_mb": summary([1150.0]),
                 "oneline_mb": summary([0.03])}
    return {"republish": republish, "install": install, "alarm": alarm}


def test_the_projection_puts_the_field_waits_and_the_link_in_place_of_the_fakes() -> None:
    pj = raw_model()["alarm"]["projection"]
    assert pj["provider_s"] == pytest.approx(sum(FIELD_VAST.values()))
    # the package less MiniLM (100 MB) plus 1 GiB of weights, at 1000 Mbit/s
    assert pj["over_link_bytes"] == 100_000_000 + 2**30
    assert pj["download_s"] == pytest.approx((100_000_000 + 2**30) * 8 / 1e9)
    # the measured load plus the rest of the 1 GiB read at 1000 MB/s
    assert pj["load_s"] == pytest.approx(1.5 + (2**30 - 100_000_000) / 1e9)
    assert pj["own_s"] == pytest.approx(1.2 + 0.3 + 0.5 + 0.5)
    assert pj["total_s"] == pytest.approx(pj["provider_s"] + pj["download_s"] + 2.0 + pj["load_s"] + pj["own_s"])
    assert pj["own_met"] is True and pj["total_met"] is (pj["total_s"] <= 110.0)
    # at the link the target needs, the total is exactly 110 s
    left = 110.0 - (pj["provider_s"] + 2.0 + pj["load_s"] + pj["own_s"])
    assert pj["inet_down_needed_mbps"] == pytest.approx(pj["over_link_bytes"] * 8 / 1e6 / left)


def test_without_the_offer_s_link_speed_there_is_no_projected_total() -> None:
    alarm = raw_model()["alarm"]
    alarm["runs"][0]["inet_down_mbps"] = None
    pj = alarm["projection"] = model_answer.project(alarm)
    assert pj["total_s"] is None and pj["total_met"] is False
    assert not any(r["key"] == "model_alarm_projected" for r in model_answer.model_rows({"alarm": alarm}))


def test_rows_put_each_figure_beside_its_baseline_and_quote_the_targets() -> None:
    rows = {r["key"]: r for r in model_answer.model_rows(raw_model())}
    oneline = rows["model_publish_big_oneline"]
    assert oneline["baseline"] == 12.0 and oneline["target"] == "≤ 3 s" and oneline["within_target"] is True
    assert rows["model_publish_big_oneline_mb"]["baseline"] == 1150.0
    assert rows["model_publish_big_oneline_mb"]["within_target"] is True
    uv = rows["model_install_uv"]
    assert uv["baseline"] == 5.5 and uv["baseline_name"] == "pip" and uv["within_target"] is False  # 1.7 s median
    assert "uv venv 0.10 s" in uv["metric"]
    phases = [k for k in rows if k.startswith("model_alarm_") and not k.startswith("model_alarm_projected")]
    assert len(phases) == 1 + 8  # the total and each phase
    assert "demand published at 1.00 s" in rows["model_alarm_alarm_to_intent"]["metric"]
    assert rows["model_alarm_projected_own"]["within_target"] is True


def test_the_section_is_a_bench_section_with_rows_and_notes() -> None:
    results: dict[str, Any] = {"raw": {"model": raw_model()}, "timings": {"SPOTLEASH_LEASE_TTL_S": "6"},
                               "errors": {}, "machine": {"cores": 2}}
    build_rows(results)
    assert any(r["key"] == "model_alarm_total" for r in results["rows"])
    assert any(n.startswith("model/alarm:") for n in results["notes"])


def test_the_bench_s_embedder_config_asks_for_a_gpu_and_routes_on_the_given_port() -> None:
    app = tomllib.loads(model_answer.embedder_toml(18001, 18002, gpu=True))["app"]
    c = app["components"][0]
    assert c["local_url"] == "http://127.0.0.1:18001" and c["local_copy"] == "user"
    assert c["route_port"] == 18002 and c["gpu"] is True
    assert app["dir"] == str(model_answer.EXAMPLE) and app["artifacts"][0]["name"] == "minilm"
