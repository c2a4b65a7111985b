"""The router as users meet it: an outside load generator against the real agent's router, beside the same
load straight to the app and through nginx, in the same run.

The app is the example's ``thumbnailer`` (``python thumbnailer.py``, the file an instance runs), the agent
is ``python -m spotleash.agent`` on the local stack (its environment: ``python -m bench`` set it) with the example's ``spotleash.toml`` (its router on the
component's ``route_port``, its local copy the app; a RAM trace below the threshold, so every request goes
to the local copy) at the log level a user gets, and the load is Debian's ``wrk`` (C, event-driven: its own
cost stays out of the figures). nginx (one worker, keep-alive to the upstream, no access log) is the
reference for what a proxy hop costs on this machine. Each round runs every (path, clients) row against
the three in a rotating order, so the machine's drift falls on all alike; the figures are medians over the
rounds, and the ratios are taken within each round before their median.

``--router-baseline NAME=DIR`` (``python -m bench``) adds one more way: a second agent importing spotleash
from ``DIR`` (e.g. ``git archive main shared | tar -x -C /tmp/main``, DIR ``/tmp/main/shared``), so a change
to the router is measured against its baseline in the same run.

``scripts/ensure_bench_tools.sh`` installs wrk and nginx (``make bench`` runs it); without them the section
says so and measures nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from local_emulator.procs import free_port

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "thumbs"
WRK, NGINX = "/usr/bin/wrk", "/usr/sbin/nginx"
PATHS = {"healthz": "/healthz", "thumbnail": "/thumbnail?size=64"}
CLIENTS = (1, 16)
WAYS = ("direct", "nginx", "spotleash")
ADDED_P50_TARGET_MS = 0.3
ADDED_P99_TARGET_MS = 1.0
THROUGHPUT_TARGET = 0.8
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --------------------------------------------------------------------------- wrk


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text.strip())
    if m is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _UNIT_MS[m.group(2)]


def parse_wrk(out: str) -> dict[str, Any]:
    """p50 / p99 (ms), req/s, requests, non-2xx/3xx responses and socket errors from ``wrk --latency``."""
    def grab(pattern: str) -> str:
        m = re.search(pattern, out, re.M)
        if m is None:
            raise ValueError(f"wrk output without {pattern!r}:\n{out}")
        return m.group(1)

    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"p50_ms": _ms(grab(r"^\s+50%\s+(\S+)")), "p99_ms": _ms(grab(r"^\s+99%\s+(\S+)")),
            "rps": float(grab(r"^Requests/sec:\s+([0-9.]+)")),
            "requests": int(grab(r"^\s+(\d+) requests in")),
            "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": sum(int(x) for x in errors.groups()) if errors else 0}


def wrk(url: str, clients: int, duration_s: float) -> dict[str, Any]:
    threads = min(clients, os.cpu_count() or 1)
    cmd = [WRK, f"-t{threads}", f"-c{clients}", f"-d{duration_s:g}s", "--latency", "--timeout", "10s", url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}: {(done.stderr or done.stdout)[-300:]}")
    return parse_wrk(done.stdout)


# --------------------------------------------------------------------------- the three servers


@contextmanager
def _process(cmd: list[str], log: Path, *, cwd: Path | None = None,
             env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield p
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)


def _answers(url: str) -> bool:
    try:
        with _NO_PROXY.open(url, timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def _wait_for(url: str, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not _answers(url):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer {url} within {timeout_s:g} s")
        time.sleep(0.2)


def nginx_conf(work: Path, listen: int, upstream: int) -> str:
    """One worker (the router is one process too), keep-alive to the upstream, no access log."""
    return f"""worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {work}/body; proxy_temp_path {work}/proxy; fastcgi_temp_path {work}/fastcgi;
  uwsgi_temp_path {work}/uwsgi; scgi_temp_path {work}/scgi;
  upstream app {{ server 127.0.0.1:{upstream}; keepalive 32; }}
  server {{
    listen 127.0.0.1:{listen};
    location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
"""


def routed_toml(app_port: int, route_port: int, other_route_port: int) -> str:
    """The example's spotleash.toml, app tree absolute, the thumbnailer's local copy and route port ours (and
    the other component's route port, so that two agents can run side by side)."""
    text = (EXAMPLE / "spotleash.toml").read_text()
    for old, new in (('dir = "."', f'dir = "{EXAMPLE}"'), ("http://127.0.0.1:8101", f"http://127.0.0.1:{app_port}"),
                     ("route_port = 8201", f"route_port = {route_port}"),
                     ("route_port = 8202", f"route_port = {other_route_port}")):
        if text.count(old) != 1:
            raise RuntimeError(f"{old!r} is not once in {EXAMPLE / 'spotleash.toml'}")
        text = text.replace(old, new)
    return text


def router_metrics(admin_port: int) -> dict[str, float]:
    """The agent router's failed and panic totals (the 503s the issue saw, and panic routing)."""
    with _NO_PROXY.open(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for name in ("failed_total", "panic_total"):
        out[name] = sum(float(m.group(1)) for m in
                        re.finditer(rf"^spotleash_router_{name}{{[^}}]*}} ([0-9.e+]+)$", text, re.M))
    return out


@contextmanager
def _agent(work: Path, name: str, app_port: int, source: Path | None) -> Iterator[dict[str, Any]]:
    """``python -m spotleash.agent`` routing the app (spotleash imported from ``source`` when given)."""
    route_port, admin_port = free_port(), free_port()
    config = work / f"spotleash-{name}.toml"
    config.write_text(routed_toml(app_port, route_port, free_port()))
    trace = work / "low.csv"
    trace.write_text("t_seconds,percent\n0,10\n1,10\n")  # below the threshold: no demand, all local
    env = {**os.environ, "SPOTLEASH_CONFIG_FILE": str(config), "SPOTLEASH_STATE_DIR": str(work / f"state-{name}"),
           "SPOTLEASH_ROUTER_ADMIN_PORT": str(admin_port), "PYTHONUNBUFFERED": "1"}
    for var in ("SPOTLEASH_COMPONENTS", "SPOTLEASH_COMPONENT_RAM_GB", "SPOTLEASH_GPU_COMPONENTS",
                "SPOTLEASH_LOG_LEVEL"):  # the components come from [app]; the log level is the user's default
        env.pop(var, None)
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join(x for x in (str(source), env.get("PYTHONPATH", "")) if x)
    lease = f"bench-router-{name}-{os.getpid()}".replace("@", "-").replace(".", "-")
    log = work / f"agent-{name}.log"
    with _process([sys.executable, "-m", "spotleash.agent", "--lease-id", lease, "--trace", str(trace)], log,
                  env=env) as p:
        url = f"http://127.0.0.1:{route_port}"
        try:
            _wait_for(url + "/healthz", f"the router of agent {name}")
        except RuntimeError as e:
            tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
            raise RuntimeError(f"{e} (exit {p.poll()}); its log ends: {tail}") from None
        yield {"url": url, "admin_port": admin_port, "pid": p.pid}


@contextmanager
def servers(work: Path, baselines: dict[str, Path] | None = None) -> Iterator[dict[str, Any]]:
    """The app, nginx in front of it and the agent's router in front of it (plus one agent per baseline);
    yields their base URLs by way."""
    work.mkdir(parents=True, exist_ok=True)
    app_port, nginx_port = free_port(), free_port()
    for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (work / d).mkdir(exist_ok=True)
    (work / "nginx.conf").write_text(nginx_conf(work, nginx_port, app_port))
    app_env = {**os.environ, "PORT": str(app_port), "HOST": "127.0.0.1", "PYTHONUNBUFFERED": "1"}
    app_env.pop("SPOTLEASH_COMPONENT_OF", None)
    with ExitStack() as stack:
        stack.enter_context(_process([sys.executable, "thumbnailer.py"], work / "app.log", cwd=EXAMPLE, env=app_env))
        _wait_for(f"http://127.0.0.1:{app_port}/healthz", "the app")
        stack.enter_context(_process([NGINX, "-p", str(work), "-c", str(work / "nginx.conf")], work / "nginx.log"))
        _wait_for(f"http://127.0.0.1:{nginx_port}/healthz", "nginx")
        agents = {"spotleash": stack.enter_context(_agent(work, "spotleash", app_port, None))}
        failed: dict[str, str] = {}
        for name, source in (baselines or {}).items():
            try:  # a baseline that does not start costs its rows, not the section's
                agents[name] = stack.enter_context(_agent(work, name, app_port, source))
            except RuntimeError as e:
                failed[name] = str(e)
        yield {"urls": {"direct": f"http://127.0.0.1:{app_port}", "nginx": f"http://127.0.0.1:{nginx_port}",
                        **{k: a["url"] for k, a in agents.items()}},
               "admin_ports": {k: a["admin_port"] for k, a in agents.items()}, "failed": failed}


# --------------------------------------------------------------------------- the section


def available() -> str | None:
    """None when wrk and nginx are here; otherwise what to run."""
    missing = [p for p in (WRK, NGINX) if not shutil.which(p)]
    return f"{' and '.join(missing)} missing: run scripts/ensure_bench_tools.sh (as root)" if missing else None


def router_load_section(work: Path, duration_s: float, rounds: int,
                        baselines: dict[str, Path] | None = None) -> dict[str, Any]:
    """``baselines``: name → a directory spotleash is imported from, each one more agent (and way)."""
    why = available()
    if why is not None:
        raise RuntimeError(why)
    runs: dict[str, list[dict[str, Any]]] = {}
    with servers(work, baselines) as s:
        urls = s["urls"]
        ways = list(urls)
        for way in ways:  # warm every path (imports, pools, the app's first thumbnail)
            for path in PATHS.values():
                wrk(urls[way] + path, 1, 1)
        before = {k: router_metrics(port) for k, port in s["admin_ports"].items()}
        for r in range(rounds):
            for path_key, path in PATHS.items():
                for clients in CLIENTS:
                    order = ways[r % len(ways):] + ways[:r % len(ways)]
                    runs.setdefault(f"{path_key}/{clients}", []).append(
                        {way: wrk(urls[way] + path, clients, duration_s) for way in order})
        after = {k: router_metrics(port) for k, port in s["admin_ports"].items()}
    return {"runs": runs, "duration_s": duration_s, "rounds": rounds, "paths": PATHS, "clients": list(CLIENTS),
            "ways": ways, "baselines": {k: str(v) for k, v in (baselines or {}).items() if k in ways},
            "baseline_errors": s["failed"],
            "router": {k: {m: after[k][m] - before[k][m] for m in after[k]} for k in after}}


# --------------------------------------------------------------------------- rows


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def combine(runs: list[dict[str, Any]], ways: list[str]) -> dict[str, dict[str, Any]]:
    """Per way: medians over the rounds of p50, p99, req/s, and of each round's difference/ratio to direct."""
    out: dict[str, dict[str, Any]] = {}
    for way in ways:
        mine = [r[way] for r in runs if way in r]
        pairs = [(r[way], r["direct"]) for r in runs if way in r and "direct" in r]
        out[way] = {
            "n": sum(m["requests"] for m in mine), "rounds": len(mine),
            "p50_ms": _median([m["p50_ms"] for m in mine]), "p99_ms": _median([m["p99_ms"] for m in mine]),
            "rps": _median([m["rps"] for m in mine]),
            "added_p50_ms": _median([m["p50_ms"] - d["p50_ms"] for m, d in pairs]),
            "added_p99_ms": _median([m["p99_ms"] - d["p99_ms"] for m, d in pairs]),
            "rps_ratio": _median([m["rps"] / d["rps"] for m, d in pairs if d["rps"]]),
            "non_2xx": sum(m["non_2xx"] for m in mine), "socket_errors": sum(m["socket_errors"] for m in mine),
        }
    return out


def router_load_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    paths = res.get("paths", PATHS)
    ways = res.get("ways", list(WAYS))
    for key, runs in res.get("runs", {}).items():
        path_key, clients = key.split("/")
        c = combine(runs, ways)
        d = c["direct"]
        for way in ways:
            w = c[way]
            if not w["rounds"]:
                continue
            label = {"direct": "direct to the app", "nginx": "through nginx", "spotleash": "through the agent's router"}
            label.setdefault(way, f"through the agent's router at {way} (baseline)")
            failed = w["non_2xx"] + w["socket_errors"]
            metric = (f"wrk GET {paths[path_key]}, {clients} client{'s' if clients != '1' else ''}, {label[way]}: "
                      f"{w['rps']:,.0f} req/s" + ("" if way == "direct" else
                                                  f" ({w['rps_ratio']:.2f}× direct), {w['added_p50_ms']:+.2f} ms "
                                                  f"at p50, {w['added_p99_ms']:+.2f} ms at p99")
                      + (f"; {failed} failed" if failed else ""))
            row: dict[str, Any] = {
                "key": f"router_wrk_{path_key}_{clients}_{way}", "metric": metric, "unit": "ms", "n": w["n"],
                "median": w["p50_ms"], "p99": w["p99_ms"], "max": None,
                "baseline": None if way == "direct" else d["p50_ms"],
                "baseline_name": None if way == "direct" else "direct p50",
                "ratio": None if way == "direct" or not d["p50_ms"] else w["p50_ms"] / d["p50_ms"],
                "target": None, "within_target": None,
            }
            if way == "spotleash":
                row["target"] = (f"≤ +{ADDED_P50_TARGET_MS} ms p50, ≤ +{ADDED_P99_TARGET_MS:g} ms p99, "
                                 f"≥ {THROUGHPUT_TARGET}× direct req/s")
                row["within_target"] = (w["added_p50_ms"] <= ADDED_P50_TARGET_MS
                                        and w["added_p99_ms"] <= ADDED_P99_TARGET_MS
                                        and w["rps_ratio"] >= THROUGHPUT_TARGET and not failed)
            rows.append(row)
    return rows


def router_load_notes(res: dict[str, Any]) -> list[str]:
    router = res.get("router", {}).get("spotleash", {})
    baselines = res.get("baselines", {})
    return [f"router (wrk): Debian's wrk against the example's thumbnailer (waitress, 8 threads, HTTP/1.1 "
            "keep-alive) direct, through nginx (1 worker, upstream keep-alive, no "
            "access log) and through `python -m spotleash.agent`'s router on the local stack (every request to the "
            f"local copy); {res.get('rounds', 0)} round(s) of {res.get('duration_s', 0):g} s per row and way, in a "
            "rotating order; median (p50) and p99 columns are wrk's, medians over the rounds; the added latency and "
            "the req/s ratio are taken to direct within each round, then their median. The router counted "
            f"{router.get('failed_total', 0):.0f} requests it could not serve and {router.get('panic_total', 0):.0f} "
            "sent in panic during the measured rounds. wrk, the app, nginx, the agent and the local stack share "
            "the machine's cores."] + (
        [f"router (wrk) baselines: {', '.join(f'{k} = spotleash imported from {v}' for k, v in baselines.items())}, "
         "its own agent on the same app in the same rounds."] if baselines else []) + [
        f"router (wrk) baseline {k} did not start: {v[:300]}" for k, v in res.get("baseline_errors", {}).items()]


if __name__ == "__main__":
    raise SystemExit("run it through `python -m bench --only router_load`")
