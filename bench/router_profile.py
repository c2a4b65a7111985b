"""Where the router's time goes per request: the real router (``RouterService``, uvloop, as the agent runs it)
in front of the example's thumbnailer, sequential keep-alive GETs from a raw-socket client in another process.

    python -m bench.router_profile profile [N]       # cProfile of the router's thread, grouped by layer
    python -m bench.router_profile rate [N]          # req/s of N sequential GETs through the router, then direct
    valgrind --tool=callgrind --instr-atstart=no python -m bench.router_profile instructions [N]
                                                      # user-space instructions per request (repeatable)

Not a section of ``python -m bench`` and not a latency figure (``router_load`` is that, from outside, under
wrk): a tool to find and compare costs. Wall-clock samplers (py-spy) put half the time in the socket
writes on this 2-core machine — the writer is preempted by the woken reader (the app, wrk) — so use
instruction counts or the profile's layers without the writes to compare two versions. ``PYTHONPATH=DIR``
profiles spotleash imported from DIR (e.g. main's ``shared/``) with the same harness.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_CLIENT_LAYERS = {"client_reqrep.py", "client_proto.py", "client.py", "connector.py", "streams.py", "helpers.py"}
_SERVER_LAYERS = {"web_protocol.py", "web_response.py", "web_request.py", "web_server.py", "base_protocol.py"}


def client(port: int, n: int, path: str = "/healthz") -> float:
    """``n`` sequential GETs on one keep-alive connection (a new one when the server closes); seconds taken."""
    req = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: */*\r\n\r\n".encode()
    s = socket.create_connection(("127.0.0.1", port))
    started = time.perf_counter()
    for _ in range(n):
        s.sendall(req)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise RuntimeError("the server closed the connection mid-response")
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        fields = dict(line.split(b":", 1) for line in head.lower().split(b"\r\n")[1:])
        while len(body) < int(fields.get(b"content-length", b"0")):
            body += s.recv(65536)
        if fields.get(b"connection", b"").strip() == b"close":
            s.close()
            s = socket.create_connection(("127.0.0.1", port))
    s.close()
    return time.perf_counter() - started


def _client_process(port: int, n: int) -> None:
    subprocess.run([sys.executable, "-m", "bench.router_profile", "client", str(port), str(n)], cwd=REPO, check=True)


def layers(stats: pstats.Stats) -> Counter[str]:
    """Own time by layer: aiohttp's client, its server, the router's code, the socket writes."""
    out: Counter[str] = Counter()
    for (file, _line, fn), (_cc, _nc, own, _cum, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        base = file.rsplit("/", 1)[-1]
        if "http_writer" in file and fn in ("_write", "_writelines"):
            key = "socket writes (syscall, and waiting while the woken reader runs)"
        elif "aiohttp" in file and base in _CLIENT_LAYERS:
            key = "aiohttp client"
        elif "aiohttp" in file and base in _SERVER_LAYERS:
            key = "aiohttp server"
        elif base == "lean.py":
            key = "the router's lean client (router.lean)"
        elif "spotleash" in file or "prometheus" in file:
            key = "the router's own code and metrics"
        elif "asyncio" in file:
            key = "asyncio (timeouts, semaphores, tasks)"
        else:
            key = "other (builtins, aiohttp's writer, multidict, yarl)"
        out[key] += own
    return out


def main(argv: list[str]) -> None:
    mode = argv[0] if argv else "profile"
    if mode == "client":
        port, n = int(argv[1]), int(argv[2])
        took = client(port, n)
        print(f"{n} requests, {n / took:.0f} req/s")
        return
    n = int(argv[1]) if len(argv) > 1 else 3000
    from local_emulator.procs import free_port
    from spotleash.router import ComponentRoute, RouterConfig, RouterService

    app_port = free_port()
    app = subprocess.Popen([sys.executable, "thumbnailer.py"], cwd=REPO / "examples" / "thumbs",
                           env={**os.environ, "PORT": str(app_port), "HOST": "127.0.0.1"},
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{app_port}/healthz", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        service = RouterService(RouterConfig(components=(
            ComponentRoute("thumbnailer", 0, f"http://127.0.0.1:{app_port}"),), credential="x" * 32))
        port = service.start()["thumbnailer"][1]
        print(f"router loop: {type(service._loop).__module__}; spotleash from "  # noqa: SLF001 - a probe of the loop
              f"{Path(sys.modules['spotleash'].__file__ or '').parent}")
        _client_process(port, 30)  # warm: imports, the pool's connection
        if mode == "rate":  # no profiler: sequential requests through the router, then straight to the app
            _client_process(port, n)
            _client_process(app_port, n)
        elif mode == "instructions":
            pid = str(os.getpid())
            subprocess.run(["callgrind_control", "-i", "on", pid], capture_output=True, check=False)
            _client_process(port, n)
            subprocess.run(["callgrind_control", "-i", "off", pid], capture_output=True, check=False)
            subprocess.run(["callgrind_control", "-d", pid], capture_output=True, check=False)
            print("instructions: sum the 'totals:' lines of the callgrind.out.* files here, divide by", n)
        else:
            prof = cProfile.Profile()
            service._call(prof.enable)  # noqa: SLF001 - the profiler must be enabled in the router's thread
            _client_process(port, n)
            service._call(prof.disable)  # noqa: SLF001
            by_layer = layers(pstats.Stats(prof))
            total = sum(by_layer.values())
            for key, own in by_layer.most_common():
                print(f"{own / total * 100:5.1f} %  {own / n * 1e6:6.0f} µs/request (profiled)  {key}")
        service.stop()
    finally:
        app.terminate()
        app.wait(10)


if __name__ == "__main__":
    main(sys.argv[1:])
