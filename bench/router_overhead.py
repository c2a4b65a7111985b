"""Router overhead on loopback: the same GETs to a small HTTP server, direct and through ``spotleash.router``.

Three processes, as on a user's machine: the app (a threading HTTP/1.1 server returning a fixed small body),
the router (``RouterService`` with the agent's ``Limits``, local target only: no control plane, so no
record ever makes a remote copy the target) and the clients (this process, httpx with keep-alive). Each
runs in its own process so that no two of them share a GIL: in one process the 32 client threads would
starve the router's thread and the figures would measure the GIL, not the router.

Sequential latency alternates blocks of direct and routed requests so that the machine's load drifts
over both alike; throughput alternates rounds of a fixed duration with 32 client threads.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from bench.stats import ratio, summary

REPO = Path(__file__).resolve().parent.parent
BODY = b"x" * 256  # a small fixed body: the cost measured is per request, not per byte
CLIENTS = 32
BLOCK = 50  # sequential requests per block before switching between direct and routed
ADDED_P50_TARGET_MS = 0.5
THROUGHPUT_TARGET = 0.8


class _Fixed(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real app server offers
    disable_nagle_algorithm = True  # headers and body go out in two writes: Nagle + delayed ACK would add 40 ms

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002, ARG002 - the stdlib's signature
        return


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # 32 clients connect at once


def _serve_upstream() -> None:
    server = _Server(("127.0.0.1", 0), _Fixed)
    print(server.server_address[1], flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdin.read()  # until the parent closes our stdin (or ends us)


def _serve_router(local_url: str) -> None:
    from spotleash.router import ComponentRoute, RouterConfig, RouterService
    from spotleash.router.channel import new_credential

    # The agent's construction (agent.routing.router_config): default Limits, one routed component.
    config = RouterConfig(components=(ComponentRoute("bench", 0, local_url),), credential=new_credential())
    service = RouterService(config)
    (_, port), = service.start().values()
    print(port, flush=True)
    try:
        sys.stdin.read()
    finally:
        service.stop()


@contextmanager
def _child(*args: str) -> Iterator[str]:
    """A serving child process; yields its loopback URL; ends it whatever happens."""
    env = {**os.environ, "SPOTLEASH_LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, "-m", "bench.router_overhead", *args], cwd=REPO, env=env,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        line = p.stdout.readline().strip()
        if not line.isdigit():
            raise RuntimeError(f"bench child {args} did not report a port (exit {p.poll()}): {line!r}")
        yield f"http://127.0.0.1:{line}"
    finally:
        assert p.stdin is not None
        p.stdin.close()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)


def _get(client: httpx.Client, url: str) -> bool:
    r = client.get(url)
    return r.status_code == 200 and r.content == BODY


def sequential(urls: dict[str, str], n: int, warmup: int = 20) -> dict[str, Any]:
    """n GETs per target, one at a time, in alternating blocks; latency in ms."""
    samples: dict[str, list[float]] = {k: [] for k in urls}
    failed = dict.fromkeys(urls, 0)
    with httpx.Client(timeout=10) as direct, httpx.Client(timeout=10) as routed:
        clients = {"direct": direct, "routed": routed}
        for k, url in urls.items():
            for _ in range(warmup):
                _get(clients[k], url)
        while any(len(samples[k]) + failed[k] < n for k in urls):
            for k, url in urls.items():
                for _ in range(min(BLOCK, n - len(samples[k]) - failed[k])):
                    t0 = time.perf_counter()
                    ok = _get(clients[k], url)
                    dt = (time.perf_counter() - t0) * 1000
                    if ok:
                        samples[k].append(dt)
                    else:
                        failed[k] += 1
    return {k: {**summary(samples[k]), "failed": failed[k]} for k in urls}


def _hammer(url: str, duration_s: float) -> tuple[int, int, float]:
    """CLIENTS threads GET ``url`` until the deadline: (ok, failed, elapsed seconds)."""
    counts = [[0, 0] for _ in range(CLIENTS)]
    deadline: list[float] = []
    # The clock starts once every client is connected: the barrier's action runs before any is released.
    start = threading.Barrier(CLIENTS + 1, action=lambda: deadline.append(time.perf_counter() + duration_s))

    def worker(i: int) -> None:
        with httpx.Client(timeout=10) as c:
            _get(c, url)  # connect before the clock starts
            start.wait()
            while time.perf_counter() < deadline[0]:
                try:
                    counts[i][0 if _get(c, url) else 1] += 1
                except httpx.HTTPError:
                    counts[i][1] += 1

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join(duration_s + 30)
    elapsed = time.perf_counter() - t0
    return sum(c[0] for c in counts), sum(c[1] for c in counts), elapsed


def throughput(urls: dict[str, str], duration_s: float, rounds: int) -> dict[str, Any]:
    """Requests per second with CLIENTS concurrent keep-alive clients, alternating rounds per target."""
    out: dict[str, Any] = {k: {"ok": 0, "failed": 0, "elapsed_s": 0.0, "rounds_rps": []} for k in urls}
    for _ in range(rounds):
        for k, url in urls.items():
            ok, failed, elapsed = _hammer(url, duration_s)
            o = out[k]
            o["ok"] += ok
            o["failed"] += failed
            o["elapsed_s"] += elapsed
            o["rounds_rps"].append(ok / elapsed)
    for o in out.values():
        o["rps"] = o["ok"] / o["elapsed_s"] if o["elapsed_s"] else None
    return out


def router_section(n: int, duration_s: float, rounds: int) -> dict[str, Any]:
    with _child("upstream") as upstream, _child("router", upstream) as routed:
        urls = {"direct": f"{upstream}/item", "routed": f"{routed}/item"}
        return {"sequential": sequential(urls, n), "throughput": throughput(urls, duration_s, rounds),
                "clients": CLIENTS, "duration_s": duration_s, "rounds": rounds, "body_bytes": len(BODY)}


# --------------------------------------------------------------------------- rows


def _row(key: str, metric: str, unit: str, n: int, median: float | None, p99: float | None = None,
         max_: float | None = None, baseline: float | None = None, baseline_name: str | None = None,
         target: str | None = None, within: bool | None = None) -> dict[str, Any]:
    return {"key": key, "metric": metric, "unit": unit, "n": n, "median": median, "p99": p99, "max": max_,
            "baseline": baseline, "baseline_name": baseline_name, "ratio": ratio(median, baseline),
            "target": target, "within_target": within}


def router_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    seq = res.get("sequential") or {}
    d, r = seq.get("direct", {}), seq.get("routed", {})
    if d.get("n") and r.get("n"):
        added_p50, added_p99 = r["median"] - d["median"], r["p99"] - d["p99"]
        rows += [
            _row("router_get_direct", "GET direct to the app (sequential, loopback)", "ms", d["n"], d["median"],
                 d["p99"], d["max"]),
            _row("router_get_routed", f"GET through the router (sequential; {r['failed']} failed)", "ms", r["n"],
                 r["median"], r["p99"], r["max"], baseline=d["median"], baseline_name="direct"),
            {**_row("router_added", "router overhead: latency added (median: at p50, p99: at p99)", "ms", r["n"],
                    added_p50, added_p99, target=f"at most {ADDED_P50_TARGET_MS} ms added at p50",
                    within=added_p50 <= ADDED_P50_TARGET_MS), "ratio": None},
        ]
    tp = res.get("throughput") or {}
    td, tr = tp.get("direct", {}), tp.get("routed", {})
    if td.get("rps") and tr.get("rps"):
        clients = res.get("clients", CLIENTS)
        rows += [
            _row("router_rps_direct", f"throughput, {clients} clients, direct ({td['failed']} failed)", "req/s",
                 td["ok"], td["rps"]),
            _row("router_rps_routed", f"throughput, {clients} clients, through the router ({tr['failed']} failed)",
                 "req/s", tr["ok"], tr["rps"], baseline=td["rps"], baseline_name="direct",
                 target=f"at least {THROUGHPUT_TARGET:.0%} of direct".replace("%", " %"),
                 within=tr["rps"] / td["rps"] >= THROUGHPUT_TARGET),
        ]
    return rows


def router_notes(res: dict[str, Any]) -> list[str]:
    return [f"router: GETs of a {res.get('body_bytes', len(BODY))}-byte body from a threading HTTP/1.1 server "
            "(the app), direct and through `spotleash.router`'s RouterService built as the agent builds it "
            "(default limits, local target only: no control plane, so no remote copy), each in its own process, "
            "clients httpx with keep-alive in a third; sequential requests alternate blocks of "
            f"{BLOCK} direct and {BLOCK} routed; throughput: {res.get('clients', CLIENTS)} client threads for "
            f"{res.get('duration_s', 0):g} s per round, {res.get('rounds', 0)} alternating round(s) per target, "
            "n = requests served. Clients, app and router share the machine's cores, so throughput is bounded by "
            "the machine as a whole: the ratio says whether the router becomes the bottleneck, not what its own "
            "ceiling is. The remote path (pinned TLS to an instance's "
            "front) is not measured here."]


if __name__ == "__main__":
    if sys.argv[1:2] == ["upstream"]:
        _serve_upstream()
    elif sys.argv[1:2] == ["router"] and len(sys.argv) == 3:
        _serve_router(sys.argv[2])
    else:
        raise SystemExit("usage: python -m bench.router_overhead upstream | router LOCAL_URL")
