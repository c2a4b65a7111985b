"""The benchmark's rendering and statistics on a tiny fake result dict (no timing measured or asserted)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from bench import report
from bench.stats import percentile, ratio, summary


def fake_results() -> dict[str, Any]:
    return {
        "date": "2026-11-23 21:00 UTC", "quick": True, "duration_s": 123.4,
        "machine": {"arch": "x86_64", "cores": 2, "ram_gb": 7.8, "python": "3.11.7", "commit": "0123456789abcdef"},
        "rows": [
            {"metric": "demand published → Compute insert received", "unit": "ms", "n": 30, "median": 210.0,
             "p99": 512.5, "max": 530.0, "baseline_name": "provider.create() direct", "baseline": 60.0,
             "ratio": 3.5, "target": "< 300 ms median", "within_target": True},
            {"metric": "reap pass | 10,000 tracked: documents read", "unit": "reads", "n": 3, "median": 101,
             "p99": None, "max": 101, "baseline_name": "naive", "baseline": 10_001, "ratio": 0.0101,
             "target": None, "within_target": None},
            {"metric": "agent RSS", "unit": "MB", "n": 60, "median": 120.0, "p99": 121.0, "max": 122.0,
             "baseline_name": "idle python", "baseline": 9.5, "ratio": 12.6, "target": "< 100 MB",
             "within_target": False},
        ],
        "notes": ["a note"],
    }


def test_table_has_a_header_a_separator_and_one_line_per_row() -> None:
    table = report.markdown_table(fake_results()["rows"])
    lines = table.splitlines()
    assert len(lines) == 2 + 3
    assert lines[0].startswith("| metric | n | median | p99 | max | baseline (median) | ratio | target |")
    assert all(line.count(" | ") == len(report.COLUMNS) - 1 for line in lines[2:]), "a pipe in a cell must be escaped"


def test_cells_carry_units_baseline_ratio_and_verdict() -> None:
    first, reads, rss = (report.row_cells(r) for r in fake_results()["rows"])
    assert first == ["demand published → Compute insert received", "30", "210 ms", "512 ms", "530 ms",
                     "60 ms (provider.create() direct)", "3.50×", "< 300 ms median", "✓"]
    assert reads[2] == "101" and reads[3] == "–" and reads[5] == "10,001 (naive)" and reads[6] == "0.01×"
    assert reads[8] == "" and reads[7] == "–"
    assert rss[2] == "120.0 MB" and rss[6] == "13×" and rss[8] == "✗ over"


def test_docs_section_names_date_machine_and_commit(tmp_path: Path) -> None:
    section = report.docs_section(fake_results())
    assert "2026-11-23 21:00 UTC" in section and "x86_64, 2 cores, 7.8 GB RAM, Python 3.11.7" in section
    assert "`0123456789`" in section and "quick run" in section and "- a note" in section
    page = tmp_path / "benchmarks.md"
    page.write_text(f"# title\n\nbefore\n{report.START}\n(not yet measured)\n{report.END}\nafter\n")
    assert report.update_page(page, section)
    text = page.read_text()
    assert "(not yet measured)" not in text and text.startswith("# title\n\nbefore\n") and text.endswith("after\n")
    assert text.count(report.START) == 1 and report.markdown_table(fake_results()["rows"]) in text
    assert report.update_page(page, "second")  # idempotent replacement between the same markers
    assert f"{report.START}\nsecond\n{report.END}" in page.read_text()


def test_page_without_markers_is_left_untouched(tmp_path: Path) -> None:
    page = tmp_path / "benchmarks.md"
    page.write_text("no markers here\n")
    assert not report.update_page(page, "x")
    assert page.read_text() == "no markers here\n"


def test_statistics() -> None:
    s = summary([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s["n"], s["median"], s["max"], s["min"], s["mean"]) == (5, 3.0, 5.0, 1.0, 3.0)
    assert percentile(list(range(101)), 99) == pytest.approx(99.0)
    assert percentile([1.0, 2.0], 50) == pytest.approx(1.5)
    assert summary([]) == {"n": 0}
    assert ratio(2.0, 4.0) == 0.5 and ratio(1.0, 0.0) is None and ratio(None, 1.0) is None
    with pytest.raises(ValueError):
        percentile([], 50)


def test_console_table_renders_every_row() -> None:
    from rich.console import Console

    console = Console(width=250, record=True)
    console.print(report.console_table(fake_results()["rows"]))
    text = console.export_text()
    assert "demand published" in text and "10,001 (naive)" in text and "✗ over" in text


def test_package_rows_split_demand_to_ready_and_render() -> None:
    from bench.packages import package_notes, package_rows

    def s(*xs: float) -> dict[str, Any]:
        return summary(list(xs))

    phases = {"demand_to_intent_s": s(0.1, 0.2), "create_call_s": s(0.7, 0.8), "boot_s": s(1.0, 1.2),
              "fetch_s": s(0.5, 0.6), "install_s": s(10.0, 12.0), "handoff_s": s(1.5, 1.7),
              "components_s": s(2.0, 2.2), "total_s": s(16.0, 18.0), "intent_to_insert_s": s(0.05, 0.06),
              "insert_to_created_s": s(0.65, 0.74)}
    pub = {"size_bytes": 85_600_000, "wheels": 100, "files": 3, "first_s": s(9.0, 10.0), "again_s": s(2.0, 2.4)}
    res = {"publish": {"example": pub, "generated": {**pub, "size_bytes": 140_000_000}, "generated_app_bytes": 52e6},
           "ready": {"gce": phases, "vast": {k: v for k, v in phases.items() if "insert" not in k}}}
    rows = package_rows(res)
    keys = [r["key"] for r in rows]
    assert keys[:3] == ["publish_example_size", "publish_example_first", "publish_example_again"]
    for p in ("gce", "vast"):
        assert [k for k in keys if k.startswith(f"ready_{p}_")] == [
            f"ready_{p}_{x}" for x in ("total", "provider", "own", "fetch", "install", "components")]
    provider = next(r for r in rows if r["key"] == "ready_gce_provider")
    assert provider["median"] == pytest.approx((1.7 + 2.0) / 2) and provider["n"] == 2  # create call + boot
    own = next(r for r in rows if r["key"] == "ready_gce_own")
    assert own["median"] == pytest.approx((1.6 + 1.9) / 2)  # demand → intent + install → READY beat
    size = next(r for r in rows if r["key"] == "publish_example_size")
    assert report.row_cells(size)[2] == "85.6 MB"
    table = report.markdown_table(rows)
    assert table.count("\n") == len(rows) + 1 and "0 bytes uploaded" in table
    notes = package_notes(res)
    assert len(notes) == 2 and "intent → insert received" in notes[1]
    # the install's own steps (the heartbeat's timings), each a row after the provider's others, when measured
    res["ready"]["gce"] = {**phases, "install_warm_s": s(1.4, 1.6), "install_deps_s": s(0.5, 0.6)}
    steps = [r for r in package_rows(res) if r["key"].startswith("ready_gce_install_")]
    assert [r["key"] for r in steps] == ["ready_gce_install_deps", "ready_gce_install_warm"]
    assert steps[1]["median"] == pytest.approx(1.5) and "imported once" in steps[1]["metric"]


def test_router_rows_compare_with_direct_and_quote_the_targets() -> None:
    from bench.router_overhead import router_notes, router_rows

    direct, routed = summary([0.30, 0.31, 0.32, 0.60]), summary([0.50, 0.52, 0.55, 1.20])
    res = {"sequential": {"direct": {**direct, "failed": 0}, "routed": {**routed, "failed": 1}},
           "throughput": {"direct": {"ok": 4000, "failed": 0, "elapsed_s": 2.0, "rps": 2000.0},
                          "routed": {"ok": 3000, "failed": 2, "elapsed_s": 2.0, "rps": 1500.0}},
           "clients": 32, "duration_s": 2.0, "rounds": 1, "body_bytes": 256}
    rows = {r["key"]: r for r in router_rows(res)}
    assert list(rows) == ["router_get_direct", "router_get_routed", "router_added", "router_rps_direct",
                          "router_rps_routed"]
    assert rows["router_get_routed"]["baseline"] == direct["median"]
    assert rows["router_get_routed"]["ratio"] == pytest.approx(routed["median"] / direct["median"])
    added = rows["router_added"]
    assert added["median"] == pytest.approx(routed["median"] - direct["median"])
    assert added["p99"] == pytest.approx(routed["p99"] - direct["p99"])
    assert added["target"] == "at most 0.5 ms added at p50" and added["within_target"] is True
    assert "1 failed" in rows["router_get_routed"]["metric"]
    rps = rows["router_rps_routed"]
    assert rps["ratio"] == pytest.approx(0.75) and rps["within_target"] is False
    assert rps["target"] == "at least 80 % of direct" and "2 failed" in rps["metric"]
    cells = report.row_cells(rps)
    assert cells[2] == "1,500 req/s" and cells[5] == "2,000 req/s (direct)" and cells[8] == "✗ over"
    assert report.row_cells(added)[2] == "0.2 ms"
    assert "32 client threads" in router_notes(res)[0]
    assert router_rows({}) == []  # a failed section yields no rows, not half-empty ones


def test_router_section_needs_no_stack_and_has_quick_sizes() -> None:
    from bench.__main__ import SECTIONS, STACKLESS, plan

    assert "router" in SECTIONS and STACKLESS == ("router",)
    quick, full = plan(True), plan(False)
    assert quick["router_n"] < full["router_n"] and quick["router_s"] < full["router_s"]


WRK_OUT = """Running 1s test @ http://127.0.0.1:18999/nope
  1 threads and 1 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.12ms    1.39ms   8.69ms   84.56%
    Req/Sec     1.20k   545.63     2.30k    80.00%
  Latency Distribution
     50%  355.00us
     75%    1.65ms
     90%    3.12ms
     99%    6.34ms
  1192 requests in 1.00s, 605.49KB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec:   1187.73
Transfer/sec:    603.32KB
"""


def test_wrk_output_is_read_in_ms_with_its_failures() -> None:
    from bench.router_load import parse_wrk

    got = parse_wrk(WRK_OUT)
    assert got == {"p50_ms": pytest.approx(0.355), "p99_ms": pytest.approx(6.34), "rps": 1187.73,
                   "requests": 1192, "non_2xx": 7, "socket_errors": 3}
    with pytest.raises(ValueError, match="wrk output without"):
        parse_wrk("nothing")


def test_router_load_rows_compare_each_way_with_direct_in_the_same_round() -> None:
    from bench.router_load import router_load_notes, router_load_rows

    def run(p50: float, p99: float, rps: float, non_2xx: int = 0) -> dict[str, float]:
        return {"p50_ms": p50, "p99_ms": p99, "rps": rps, "requests": int(rps), "non_2xx": non_2xx,
                "socket_errors": 0}

    rounds = [{"direct": run(0.20, 0.50, 4000), "nginx": run(0.25, 0.60, 3900), "spotleash": run(0.40, 1.00, 3400)},
              {"direct": run(0.30, 0.70, 3000), "nginx": run(0.36, 0.80, 2950), "spotleash": run(0.50, 1.30, 2500)},
              {"direct": run(0.22, 0.55, 3800), "nginx": run(0.27, 0.62, 3700), "spotleash": run(0.90, 3.00, 1000, 5)}]
    res = {"runs": {"healthz/16": rounds}, "paths": {"healthz": "/healthz"}, "rounds": 3, "duration_s": 5.0,
           "router": {"spotleash": {"failed_total": 0.0, "panic_total": 0.0}}}
    rows = {r["key"]: r for r in router_load_rows(res)}
    assert list(rows) == ["router_wrk_healthz_16_direct", "router_wrk_healthz_16_nginx", "router_wrk_healthz_16_spotleash"]
    ours = rows["router_wrk_healthz_16_spotleash"]
    assert ours["median"] == pytest.approx(0.50) and ours["baseline"] == pytest.approx(0.22)
    assert "+0.20 ms at p50" in ours["metric"]  # median of 0.20, 0.20, 0.68: taken within each round
    assert "(0.83× direct)" in ours["metric"] and "5 failed" in ours["metric"]
    assert ours["within_target"] is False and "≤ +0.3 ms p50" in ours["target"]
    assert rows["router_wrk_healthz_16_direct"]["within_target"] is None
    assert "0 requests it could not serve" in router_load_notes(res)[0]
    assert router_load_rows({}) == []
