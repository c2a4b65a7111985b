"""``uv run python -m bench [--quick] [--only launch,...,snapshot,failover] [--no-docs] [--out PATH]``

``--render-only --merge RUN.json`` measures nothing: it takes the sections ``RUN.json`` measured (an
``--only`` run) into the results file, keeps every other section's data, and re-renders.

Starts the local stack in a temporary directory (unless only stackless sections are chosen), runs every
benchmark with its same-run baseline, writes ``bench/results/latest.json`` and the table of
``docs/benchmarks.md``, and stops the stack, whatever happens. The full run took ~18 min on a 2-core machine before
the snapshot and failover sections were added (they take ~10 min more; ``--quick`` ~3 min for both).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console

from bench import report
from bench.harness import as_json
from spotleash.demo.run import DEMO_TIMINGS, REAP_TIME_SCALE

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "latest.json"
PAGE = REPO / "docs" / "benchmarks.md"
SECTIONS = ("launch", "sigterm", "sigkill", "agent", "smoke", "package", "model", "snapshot", "failover", "router_load",
            "memory", "reap", "router")
STACKLESS = ("router",)  # in-process on loopback: no local stack needed

# The demo's short control-plane timings (lease loss and reaping happen in seconds), quieter logs, and
# heartbeat-only instances (no package bucket): these sections time the control plane, not an install.
BENCH_TIMINGS = {**DEMO_TIMINGS, "SPOTLEASH_PACKAGE_BUCKET": "", "SPOTLEASH_PROVISIONING_TIMEOUT_S": "60",
                 "SPOTLEASH_LOG_LEVEL": "WARNING"}
REAP_PERIOD_S = 60 / REAP_TIME_SCALE


def machine() -> dict[str, Any]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "arch": platform.machine(), "system": f"{platform.system()} {platform.release()}",
        "cores": os.cpu_count(), "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(), "commit": commit,
    }


def plan(quick: bool) -> dict[str, Any]:
    if quick:
        return {"launches": 10, "direct_creates": 5, "sigterm": 3, "direct_deletes": 3, "sigkill": 2,
                "agent_s": 20.0, "smoke": 1, "reap_sizes": [100, 1_000], "reap_repeats": 2, "reap_executions": 1, "publishes": 2,
                "package_launches": 1, "router_n": 300, "router_s": 2.0, "router_rounds": 1,
                "snapshot_sizes_mb": [100, 1024], "snapshot_repeats": 1, "failovers": 1, "latency_n": 200,
                "failover_state_mb": 100, "router_load_s": 2.0, "router_load_rounds": 2, "memory_runs": 1,
                "memory_rest_s": 20.0, "model_publishes": 1, "model_installs": 2, "model_alarms": 1}
    return {"launches": 30, "direct_creates": 15, "sigterm": 5, "direct_deletes": 5, "sigkill": 3,
            "agent_s": 60.0, "smoke": 3, "reap_sizes": [100, 1_000, 10_000], "reap_repeats": 3, "reap_executions": 3, "publishes": 3,
            "package_launches": 3, "router_n": 3000, "router_s": 10.0, "router_rounds": 2,
            "snapshot_sizes_mb": [100, 1024], "snapshot_repeats": 3, "failovers": 3, "latency_n": 1000,
            "failover_state_mb": 1024, "router_load_s": 5.0, "router_load_rounds": 3, "memory_runs": 3,
            "memory_rest_s": 60.0, "model_publishes": 2, "model_installs": 3, "model_alarms": 3}


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    chosen = [s.strip() for s in args.only.split(",")] if args.only else list(SECTIONS)
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    p = {**plan(args.quick), **dict(args.set)}
    p["router_baselines"] = dict(_baseline(b) for b in args.router_baseline)
    started = time.monotonic()
    results: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(), "quick": args.quick,
        "plan": p, "sections": chosen, "timings": BENCH_TIMINGS, "reap_period_s": REAP_PERIOD_S,
        "raw": {}, "errors": {}, "rows": [], "notes": [], "loadavg_start": list(os.getloadavg()),
        "extra_notes": list(args.note),
    }
    if "router" in chosen:
        _run_router(results, p, console)
    if set(chosen) - set(STACKLESS):
        _run_stack_sections(results, chosen, p, console)
    build_rows(results)
    results["duration_s"] = time.monotonic() - started
    results["loadavg_end"] = list(os.getloadavg())
    return results


def _plan_value(spec: str) -> tuple[str, Any]:
    """``KEY=JSON`` → (KEY, the value): a plan entry of either plan, so an unknown key is an error."""
    key, sep, raw = spec.partition("=")
    if not sep or key not in plan(False):
        raise argparse.ArgumentTypeError(f"{spec!r}: give KEY=JSON with KEY one of {', '.join(sorted(plan(False)))}")
    try:
        return key, json.loads(raw)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{spec!r}: the value is not JSON ({e})") from e


def _baseline(spec: str) -> tuple[str, Path]:
    name, sep, path = spec.partition("=")
    if not sep or not name or not (Path(path) / "spotleash" / "__init__.py").is_file():
        raise SystemExit(f"--router-baseline {spec!r}: give NAME=DIR, DIR holding the spotleash package "
                         "(e.g. main=/tmp/main/shared after `git archive main shared | tar -x -C /tmp/main`)")
    return name, Path(path)


def _timed(results: dict[str, Any], console: Console, name: str, what: str, fn: Callable[[], Any]) -> None:
    t0 = time.monotonic()
    with console.status(f"{what}..."):
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - one failed section must not lose the others' figures
            results["errors"][name] = f"{type(e).__name__}: {e}"
            console.print(f"[red]{name} failed:[/] {e}\n{traceback.format_exc()}")
    console.print(f"{what}: {time.monotonic() - t0:.0f}s")


def _run_router(results: dict[str, Any], p: dict[str, Any], console: Console) -> None:
    from bench import router_overhead

    def router() -> None:
        results["raw"]["router"] = router_overhead.router_section(p["router_n"], p["router_s"], p["router_rounds"])

    _timed(results, console, "router", f"router overhead, {p['router_n']} sequential GETs per target + "
           f"{p['router_rounds']}x{p['router_s']:g} s at 32 clients", router)


def _run_stack_sections(results: dict[str, Any], chosen: list[str], p: dict[str, Any], console: Console) -> None:
    from local_emulator import stack

    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="spotleash-bench-"))
    saved = dict(os.environ)
    try:
        with console.status("starting the local stack..."):
            info = stack.up(work, overrides=BENCH_TIMINGS,
                            fake_args={"scheduler": ["--time-scale", str(REAP_TIME_SCALE)]})
        results["stack_ready_s"] = info.ready_s
        console.print(f"local stack up in {time.monotonic() - started:.1f}s")
        os.environ.update(stack.read_env(work))
        os.environ.update(BENCH_TIMINGS)
        os.environ["SPOTLEASH_STATE_DIR"] = str(work)
        _run_sections(results, chosen, p, work, console)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        with console.status("stopping the local stack..."):
            left = stack.down(work)
        results["stack_parts_stopped"] = left
        shutil.rmtree(work, ignore_errors=True)


def _run_sections(results: dict[str, Any], chosen: list[str], p: dict[str, Any], work: Path,
                  console: Console) -> None:
    from bench import agent_cost, failover, lifecycle, packages, reap_scale, snapshot_throughput, vast_smoke
    from bench.harness import Harness

    h = Harness(work)
    raw = results["raw"]
    ttl = h.settings.lease_ttl_s
    bound = ttl + REAP_PERIOD_S

    def section(name: str, what: str, fn: Callable[[], Any]) -> None:
        if name in chosen:
            _timed(results, console, name, what, fn)

    def launch() -> None:
        raw["demand"] = lifecycle.demand_to_create(h, p["launches"])
        raw["direct_create"] = lifecycle.direct_create(h, p["direct_creates"])

    def sigterm() -> None:
        raw["sigterm"] = lifecycle.signal_to_deleted(h, p["sigterm"], signal.SIGTERM, timeout_s=60)
        raw["direct_delete"] = lifecycle.direct_delete(h, p["direct_deletes"])

    def sigkill() -> None:
        raw["sigkill"] = lifecycle.signal_to_deleted(h, p["sigkill"], signal.SIGKILL, timeout_s=bound + 60)

    def agent() -> None:
        raw["agent"] = agent_cost.agent_cost(h, p["agent_s"])

    def smoke() -> None:
        raw["vast_smoke"] = vast_smoke.vast_smoke(work, p["smoke"])

    def package() -> None:
        raw["package"] = packages.package_section(h, work, work, p["publishes"], p["package_launches"])

    def model() -> None:
        from bench import model_answer

        raw["model"] = {}
        model_answer.model_section(h, work, work, int(os.environ.get("BENCH_MODEL_PUBLISHES", p["model_publishes"])),
                                   int(os.environ.get("BENCH_MODEL_INSTALLS", p["model_installs"])),
                                   int(os.environ.get("BENCH_MODEL_ALARMS", p["model_alarms"])), raw["model"])

    def snapshot() -> None:
        ctx, storage = snapshot_throughput.stack_context(h.settings)
        raw["snapshot"] = snapshot_throughput.snapshot_section(ctx, storage, work / "snapshot-scratch",
                                                               p["snapshot_sizes_mb"], p["snapshot_repeats"])

    def failover_() -> None:
        raw["failover"] = {}
        failover.failover_section(h, work, work, p["failovers"], p["latency_n"], raw["failover"],
                                  p.get("failover_state_mb", 0))

    def router_load_() -> None:
        from bench import router_load

        raw["router_load"] = router_load.router_load_section(work / "router-load", p["router_load_s"],
                                                             p["router_load_rounds"], p.get("router_baselines"))

    def memory() -> None:
        from bench import memory_handoff

        raw["memory"] = memory_handoff.memory_section(h, work, p.get("memory_runs", 1), p.get("memory_rest_s", 20.0))

    def reap() -> None:  # last: 11,100 seeded documents slow the emulator's queries for what follows
        big = max(p["reap_sizes"])  # the largest size is executed on fresh copies, for a median
        raw["reap"] = [reap_scale.reap_at_scale(h, n, p["reap_repeats"], p.get("reap_executions", 1) if n == big else 1)
                       for n in p["reap_sizes"]]

    try:
        section("launch", f"demand → create, {p['launches']} launches + {p['direct_creates']} direct", launch)
        section("sigterm", f"SIGTERM → deleted, {p['sigterm']} agents + {p['direct_deletes']} direct", sigterm)
        section("sigkill", f"SIGKILL → deleted, {p['sigkill']} agents", sigkill)
        section("agent", f"agent CPU/RSS over {p['agent_s']:.0f}s", agent)
        section("smoke", f"VAST smoke run x{p['smoke']}", smoke)
        section("package", f"publish x{p['publishes']} (2 apps), demand → READY x{p['package_launches']} "
                           "(GCE, VAST)", package)
        section("model", f"republish with 1 GiB of weights x{p.get('model_publishes', 1)}, install uv vs pip "
                         f"x{p.get('model_installs', 2)}, memory alarm → first model answer x{p.get('model_alarms', 1)}",
                model)
        section("snapshot", f"snapshot + restore of {p['snapshot_sizes_mb']} MB x{p['snapshot_repeats']}",
                snapshot)
        section("failover", f"failover under load through the router, GCE preemption + VAST outbid "
                            f"x{p['failovers']}", failover_)
        section("router_load", f"wrk against the app, nginx and the agent's router, {p['router_load_rounds']}x"
                               f"{p['router_load_s']:g} s per row", router_load_)
        section("memory", f"memory freed and the way home in a {2048} MB cgroup, x{p.get('memory_runs', 1)}", memory)
        section("reap", f"reap at {p['reap_sizes']} tracked", reap)
    finally:
        h.close()


def build_rows(results: dict[str, Any]) -> None:
    """The table rows and notes, from the raw measurements alone (so ``--render-only`` can redo them)."""
    from bench import (
        agent_cost,
        failover,
        lifecycle,
        memory_handoff,
        packages,
        reap_scale,
        router_load,
        router_overhead,
        snapshot_throughput,
        vast_smoke,
    )

    raw = results["raw"]
    ttl = float(results["timings"]["SPOTLEASH_LEASE_TTL_S"])
    rows: list[dict[str, Any]] = []
    empty: dict[str, Any] = {"summary": {"n": 0}}
    if any(k in raw for k in ("demand", "sigterm", "sigkill")):
        rows += lifecycle.lifecycle_rows({k: raw.get(k, empty) for k in
                                          ("demand", "direct_create", "sigterm", "direct_delete", "sigkill")},
                                         ttl + REAP_PERIOD_S, ttl, REAP_PERIOD_S)
    if "reap" in raw:
        rows += reap_scale.reap_rows(raw["reap"])
    if "agent" in raw:
        rows += agent_cost.agent_rows(raw["agent"])
    if "vast_smoke" in raw:
        rows += vast_smoke.smoke_rows(raw["vast_smoke"])
    if "package" in raw:
        rows += packages.package_rows(raw["package"])
    if "model" in raw:
        from bench import model_answer

        rows += model_answer.model_rows(raw["model"])
    if "router_load" in raw:
        rows += router_load.router_load_rows(raw["router_load"])
    if "router" in raw:
        rows += router_overhead.router_rows(raw["router"])
    if "snapshot" in raw:
        rows += snapshot_throughput.snapshot_rows(raw["snapshot"])
    if "failover" in raw:
        rows += failover.failover_rows(raw["failover"], restore_median_s(raw, 1024))
    if "memory" in raw:
        rows += memory_handoff.memory_rows(raw["memory"])
    results["rows"] = rows
    results["notes"] = notes(results) + list(results.get("extra_notes", []))


def notes(results: dict[str, Any]) -> list[str]:
    raw, out = results["raw"], []
    if "demand" in raw:
        out.append("demand → create: from the publish call to the Compute fake receiving `instances.insert` (its "
                   "call log), through Pub/Sub push, functions-framework, Firestore intent; one launch at a time, "
                   f"{raw['demand']['warmup']} warm-up launches not counted. The baseline calls "
                   "`GceProvider.create()` directly (label lookup + insert).")
    if "sigkill" in raw:
        out.append(f"lease loss: lease TTL {results['timings']['SPOTLEASH_LEASE_TTL_S']} s, reaper every "
                   f"{REAP_PERIOD_S:g} s (scheduler fake at {REAP_TIME_SCALE}x); the time runs from the kill, so "
                   "the renewal interval before it is not counted, but deleting and confirming are.")
    if "reap" in raw:
        out.append("reap: records seeded straight into the Firestore emulator; dry runs compare spotleash's "
                   "targeted queries with a naive read of every live record (same decisions: "
                   f"{all(r['same_decisions_as_naive'] for r in raw['reap'])}); 'executed' deletes and confirms "
                   "every due instance through the Compute fake.")
    if "agent" in raw:
        out.append("agent: `python -m spotleash.agent` replaying the demo trace at 1x with production agent "
                   "timings (1 s samples, 30 s lease beats); the baseline is `python -c 'import time; "
                   "time.sleep(...)'` sampled in the same loop.")
    if "package" in raw:
        from bench.packages import package_notes

        out += package_notes(raw["package"])
    if "model" in raw:
        from bench.model_answer import model_notes

        out += model_notes(raw["model"])
    if "router_load" in raw:
        from bench.router_load import router_load_notes

        out += router_load_notes(raw["router_load"])
    if "router" in raw:
        from bench.router_overhead import router_notes

        out += router_notes(raw["router"])
    if "snapshot" in raw:
        from bench.snapshot_throughput import snapshot_notes

        out += snapshot_notes(raw["snapshot"])
    if "failover" in raw:
        from bench.failover import failover_notes

        out += failover_notes(raw["failover"], restore_median_s(raw, 1024))
    for m in results.get("merged", []):
        out.append(f"sections {', '.join(m['sections'])} measured separately ({m['date']}, "
                   f"{'quick' if m.get('quick') else 'full'}, {m.get('duration_s', 0):.0f} s, commit "
                   f"`{str(m.get('commit', '?'))[:10]}`, load {m['loadavg_start'][0]:.1f} → {m['loadavg_end'][0]:.1f})"
                   " and merged into these results.")
    if "loadavg_start" in results and "loadavg_end" in results:
        out.append(f"machine load (1-min load average) {results['loadavg_start'][0]:.1f} at the start, "
                   f"{results['loadavg_end'][0]:.1f} at the end, on {results['machine'].get('cores')} cores.")
    for name, err in results["errors"].items():
        out.append(f"section {name} FAILED: {err}")
    return out


def restore_median_s(raw: dict[str, Any], mb: int) -> float | None:
    """The median restore time of the ``mb`` MB state in the snapshot section, if it was measured."""
    for sz in raw.get("snapshot", {}).get("sizes", []):
        if sz.get("mb") == mb and sz.get("restore_s", {}).get("n"):
            return float(sz["restore_s"]["median"])
    return None


def merge(base: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """``base`` with the raw data of the sections ``run`` measured taking the place of its own; the other
    sections' data, errors and run details stay. Where a section's raw data came from is kept in ``merged``."""
    out = json.loads(json.dumps(base))
    ran = list(run.get("sections", []))
    produced = set(run.get("raw", {}))
    out["raw"].update(run.get("raw", {}))
    out["errors"] = {k: v for k, v in out.get("errors", {}).items() if k not in ran}
    out["errors"].update(run.get("errors", {}))
    out["plan"] = {**out.get("plan", {}), **run.get("plan", {})}
    out["sections"] = list(dict.fromkeys([*out.get("sections", []), *ran]))
    earlier = [{**m, "sections": [x for x in m["sections"] if x not in ran]} for m in out.get("merged", [])]
    earlier = [m for m in earlier if m["sections"]]
    out["merged"] = [*earlier, {"sections": ran, "raw_keys": sorted(produced), "date": run.get("date"),
                                "quick": run.get("quick"), "duration_s": run.get("duration_s", 0),
                                "commit": run.get("machine", {}).get("commit"),
                                "loadavg_start": run.get("loadavg_start", [0.0]),
                                "loadavg_end": run.get("loadavg_end", [0.0])}]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--quick", action="store_true",
                    help="fewer runs, 20 s agent window, no 10,000-record reap, 2 s router rounds")
    ap.add_argument("--only", default="", help=f"comma-separated sections: {','.join(SECTIONS)}")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results file (default bench/results/latest.json)")
    ap.add_argument("--no-docs", action="store_true", help="do not rewrite the table of docs/benchmarks.md")
    ap.add_argument("--render-only", action="store_true",
                    help="measure nothing: rebuild the table and docs/benchmarks.md from the results file's raw data")
    ap.add_argument("--merge", type=Path, default=None, metavar="RUN.json",
                    help="with --render-only: take the sections RUN.json measured into the results file first")
    ap.add_argument("--router-baseline", action="append", default=[], metavar="NAME=DIR",
                    help="router_load: one more agent importing spotleash from DIR (a checkout's shared/), "
                         "measured as way NAME in the same rounds (repeatable)")
    ap.add_argument("--note", action="append", default=[], help="a note to print under the table (repeatable)")
    ap.add_argument("--set", action="append", default=[], type=_plan_value, metavar="KEY=JSON",
                    help="override one entry of the plan, e.g. --set sigterm=12 --set 'reap_sizes=[10000]' (repeatable)")
    args = ap.parse_args(argv)
    console = Console(width=max(Console().width, 200))
    if args.merge is not None and not args.render_only:
        raise SystemExit("--merge goes with --render-only (measure with --only ... --out RUN.json first)")
    if args.render_only:
        results = json.loads(args.out.read_text())
        if args.merge is not None:
            results = merge(results, json.loads(args.merge.read_text()))
        results["extra_notes"] = list(dict.fromkeys([*results.get("extra_notes", []), *args.note]))
        build_rows(results)
    else:
        results = run(args, console)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(as_json(results), indent=1, default=str) + "\n")
    console.print(report.console_table(results["rows"]))
    for n in results["notes"]:
        console.print(f"- {n}")
    console.print(f"results written to {args.out}")
    if not args.no_docs:
        if report.update_page(PAGE, report.docs_section(results)):
            console.print(f"benchmarks table updated ({PAGE})")
        else:
            console.print(f"[yellow]no {report.START} / {report.END} markers in {PAGE}; page untouched")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
