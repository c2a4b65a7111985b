"""The floor of a proxy in Python here: how close the router could get to direct with a lean server half.

    python -m bench.router_floor [SECONDS] [ROUNDS]

Runs the example's thumbnailer, the real router (``RouterService``, uvloop, as the agent runs it) and ``floor``:
the smallest keep-alive proxy on a raw asyncio protocol (uvloop), GETs without a body only, forwarding through the
router's own ``LeanPool`` — no route table, metrics, limits, retries or streaming. Debian's wrk drives each
(1 and 16 connections, rounds in a rotating order) beside the app direct. What ``floor`` adds is what the router's
server half and bookkeeping could at best shrink to. Not a section of ``python -m bench`` (``router_load`` is the
figure users meet); a tool to decide whether a lean server half is worth building.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


class _Floor(asyncio.Protocol):
    def __init__(self, pool: object) -> None:
        self.pool = pool
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._next()

    def _next(self) -> None:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head, self.buf = self.buf[:end], self.buf[end + 4:]
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = [(k, v) for k, _, v in (x.partition(": ") for x in lines[1:])
                   if k.lower() not in ("host", "connection")]
        self.busy = True
        asyncio.ensure_future(self._forward(method, path, headers))

    async def _forward(self, method: str, path: str, headers: list[tuple[str, str]]) -> None:
        resp = await self.pool.request(method, path, headers)  # type: ignore[attr-defined]
        body = await resp.read()
        resp.release()
        out = [f"HTTP/1.1 {resp.status} {resp.reason}\r\n".encode()]
        out += [f"{k}: {v}\r\n".encode("latin-1") for k, v in resp.headers.items() if k.lower() != "content-length"]
        out += [f"Content-Length: {len(body)}\r\n\r\n".encode(), body]
        assert self.transport is not None
        if self.transport.is_closing():  # wrk closed it at the end of its run
            return
        self.transport.write(b"".join(out))
        self.busy = False
        self._next()


def serve_floor(upstream: str, port: int) -> None:
    import uvloop

    from spotleash.router.lean import LeanPool

    async def main() -> None:
        pool = LeanPool(upstream, limit=66, keepalive_s=4.0, connect_timeout_s=3.0, idle_timeout_s=300.0)
        server = await asyncio.get_running_loop().create_server(lambda: _Floor(pool), "127.0.0.1", port)
        await server.serve_forever()

    uvloop.run(main())


def main(argv: list[str]) -> None:
    if argv and argv[0] == "serve":
        serve_floor(argv[1], int(argv[2]))
        return
    seconds = float(argv[0]) if argv else 4.0
    rounds = int(argv[1]) if len(argv) > 1 else 3
    from bench.router_load import EXAMPLE, _process, _wait_for, wrk
    from local_emulator.procs import free_port
    from spotleash.router import ComponentRoute, RouterConfig, RouterService

    app_port, floor_port = free_port(), free_port()
    env = {**os.environ, "PORT": str(app_port), "HOST": "127.0.0.1"}
    with tempfile.TemporaryDirectory() as work, ExitStack() as stack:
        stack.enter_context(_process([sys.executable, "thumbnailer.py"], Path(work) / "app.log", cwd=EXAMPLE, env=env))
        _wait_for(f"http://127.0.0.1:{app_port}/healthz", "the app")
        stack.enter_context(_process([sys.executable, "-m", "bench.router_floor", "serve",
                                      f"http://127.0.0.1:{app_port}", str(floor_port)], Path(work) / "floor.log",
                                     cwd=REPO))
        _wait_for(f"http://127.0.0.1:{floor_port}/healthz", "the floor proxy")
        service = RouterService(RouterConfig(components=(
            ComponentRoute("thumbnailer", 0, f"http://127.0.0.1:{app_port}"),), credential="x" * 32))
        ways = {"direct": app_port, "router": service.start()["thumbnailer"][1], "floor": floor_port}
        stack.callback(service.stop)
        print(f"load {os.getloadavg()[0]:.1f}; wrk {rounds} x {seconds:g} s per way, rotating")
        for clients in (1, 16):
            got: dict[str, list[dict[str, Any]]] = {k: [] for k in ways}
            order = list(ways)
            for r in range(rounds):
                for k in order[r % 3:] + order[:r % 3]:
                    got[k].append(wrk(f"http://127.0.0.1:{ways[k]}/healthz", clients, seconds))
            for k in ways:
                pairs = list(zip(got[k], got["direct"], strict=True))
                print(f"{clients:2d} client(s) {k:7s} {statistics.median(x['rps'] for x in got[k]):7.0f} req/s, "
                      f"{statistics.median(x['rps'] / d['rps'] for x, d in pairs):.2f}x direct, "
                      f"{statistics.median(x['p50_ms'] - d['p50_ms'] for x, d in pairs):+.3f} ms at p50, "
                      f"{statistics.median(x['p99_ms'] - d['p99_ms'] for x, d in pairs):+.3f} ms at p99")
        print(f"load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main(sys.argv[1:])
