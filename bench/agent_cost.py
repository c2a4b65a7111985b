"""The agent's own CPU and RSS, sampled at 1 Hz with psutil, beside an idle Python process."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

import psutil

from bench.harness import Harness, log
from bench.stats import ratio, summary
from spotleash.polling import wait_until

# The agent runs with production defaults for what it does on its own (1 s RAM samples, 30 s lease
# beats): the bench stack's short timings are for the control plane's reaction times, not the agent's.
AGENT_TIMING_VARS = ("SPOTLEASH_SAMPLE_INTERVAL_S", "SPOTLEASH_LEASE_RENEW_S", "SPOTLEASH_LEASE_TTL_S",
                     "SPOTLEASH_DEMAND_COOLDOWN_S", "SPOTLEASH_LOG_LEVEL")


def _tree(p: psutil.Process) -> list[psutil.Process]:
    try:
        return [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _sample(procs: list[psutil.Process], first: bool) -> tuple[float, float]:
    """(cpu % of one core since the previous call, RSS MB) summed over a process tree."""
    cpu = rss = 0.0
    for q in procs:
        try:
            c = q.cpu_percent(interval=None)
            rss += q.memory_info().rss / 1e6
            cpu += 0.0 if first else c
        except psutil.NoSuchProcess:
            continue
    return cpu, rss


def agent_cost(h: Harness, seconds: float) -> dict[str, Any]:
    lid = f"bench-agent-{uuid.uuid4().hex[:8]}"
    proc, log_path = h.start_agent(lid, speed=1.0, drop_env=AGENT_TIMING_VARS)
    idle = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds + 30})"])
    try:
        # Start sampling once the agent has finished starting up (imports, clients, first lease beat).
        wait_until(lambda: "agent starting" in log_path.read_text(errors="replace"), timeout_s=60, interval_s=0.1,
                   what="the agent to start")
        a, b = psutil.Process(proc.pid), psutil.Process(idle.pid)
        a_tree, b_tree = _tree(a), _tree(b)
        _sample(a_tree, True)
        _sample(b_tree, True)
        a_cpu: list[float] = []
        a_rss: list[float] = []
        b_cpu: list[float] = []
        b_rss: list[float] = []
        start = time.monotonic()
        tick = start
        while time.monotonic() - start < seconds:
            tick += 1.0
            time.sleep(max(tick - time.monotonic(), 0.0))  # 1 Hz, drift-free; a bench, not a test
            c, r = _sample(_tree(a), False)
            a_cpu.append(c)
            a_rss.append(r)
            c, r = _sample(b_tree, False)
            b_cpu.append(c)
            b_rss.append(r)
        cpu_times = a.cpu_times()
        demanded = "demand" in log_path.read_text(errors="replace")
    finally:
        idle.kill()
        idle.wait(timeout=10)
        rc = h.stop_agent(proc)
    log.info("bench agent cost", cpu_mean=round(statistics.fmean(a_cpu), 3), rss_max=round(max(a_rss), 1))
    return {
        "seconds": seconds, "agent_exit": rc, "agent_published_demand": demanded,
        "agent_cpu_percent": summary(a_cpu), "agent_rss_mb": summary(a_rss),
        "idle_cpu_percent": summary(b_cpu), "idle_rss_mb": summary(b_rss),
        "agent_cpu_user_s": cpu_times.user, "agent_cpu_system_s": cpu_times.system,
    }


STARTUP_SAMPLES = 5  # the first seconds after "agent starting": Pub/Sub channel, first lease beat


def agent_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    cpu, rss, icpu, irss = res["agent_cpu_percent"], res["agent_rss_mb"], res["idle_cpu_percent"], res["idle_rss_mb"]
    steady = summary(cpu["samples"][STARTUP_SAMPLES:])
    secs = f"{res['seconds']:.0f} s"
    return [
        {"key": "agent_cpu", "metric": f"agent CPU at 1 Hz over {secs}, % of one core "
                                       f"(mean {cpu['mean']:.2f} %; after its first {STARTUP_SAMPLES} s: "
                                       f"mean {steady['mean']:.2f} %)",
         "unit": "%", "n": cpu["n"], "median": cpu["median"], "p99": cpu["p99"], "max": cpu["max"],
         "baseline_name": "idle python", "baseline": icpu["median"], "ratio": None,
         "target": "< 1 % of a core (steady-state mean)", "within_target": steady["mean"] < 1.0,
         "mean": cpu["mean"], "steady_mean": steady["mean"]},
        {"key": "agent_rss", "metric": f"agent RSS at 1 Hz over {secs}", "unit": "MB",
         "n": rss["n"], "median": rss["median"], "p99": rss["p99"], "max": rss["max"],
         "baseline_name": "idle python", "baseline": irss["median"], "ratio": ratio(rss["median"], irss["median"]),
         "target": "< 100 MB", "within_target": rss["max"] < 100},
    ]
