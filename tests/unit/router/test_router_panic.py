"""Panic routing with real sockets: a lone local copy too slow to pass its probes keeps serving under load.

The copy is a threading HTTP server on loopback that answers every request (its health path included)
after a delay longer than the router's probe timeout, as an app does when a load saturates it; the router
is the real one, the load real concurrent keep-alive clients. Before panic routing, two failed probes made
the router answer 503 to everything until a probe passed again (issue 24: 5,048 requests in one run).
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import aiohttp
from tests.unit.router.router_harness import FAST, run, until

from spotleash.router.channel import new_credential
from spotleash.router.proxy import ComponentRoute, Router, RouterConfig
from spotleash.router.table import Failure, Policy

DELAY_S = 0.3
LIMITS = dataclasses.replace(FAST, probe_timeout_s=0.1, probe_interval_s=0.05)  # every probe times out


class _Slow(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        time.sleep(DELAY_S)
        body = b"slow but here"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002, ARG002 - the stdlib's signature
        return


class _Server(ThreadingHTTPServer):
    daemon_threads = True


@contextmanager
def slow_copy() -> Iterator[str]:
    server = _Server(("127.0.0.1", 0), _Slow)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_lone_copy_too_slow_for_its_probes_gets_no_503_under_load() -> None:
    async def main() -> None:
        with slow_copy() as url:
            router = Router(RouterConfig(components=(ComponentRoute("thumbs", 0, url),), credential=new_credential(),
                                         limits=LIMITS, policy=Policy()))
            await router.start()
            statuses: Counter[int] = Counter()
            try:
                base = "http://{}:{}/thumbnail".format(*router.addresses["thumbs"])
                deadline = time.monotonic() + 2.5

                async def client() -> None:
                    async with aiohttp.ClientSession() as s:
                        while time.monotonic() < deadline:
                            async with s.get(base) as r:
                                await r.read()
                                statuses[r.status] += 1

                load = asyncio.gather(*(client() for _ in range(8)))
                await until(lambda: router.table.current("thumbs").panic, "panic routing", timeout_s=3.0)
                probes = router.table.local_probes("thumbs")
                assert probes.fail_streak >= 2 and probes.last_failure == Failure.SLOW
                await load
                assert router.table.current("thumbs").target == "local"
            finally:
                await router.stop()
            assert set(statuses) == {200}, statuses  # not one 503 while the copy exists
            assert statuses[200] >= 8 * 4
            assert router.metrics.value("panic_total", component="thumbs") > 0
            assert router.metrics.value("failed_total", component="thumbs") == 0

    run(main(), timeout_s=20.0)
