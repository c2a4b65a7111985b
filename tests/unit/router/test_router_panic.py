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
from tests.unit.router.router_harness import COMPONENT, FAST, run, until, world

from spotleash.instance_agent.front import Front, FrontConfig
from spotleash.router.channel import credential_hash, new_credential
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


def test_with_a_hold_a_request_whose_only_copy_failed_it_waits_for_the_replacement() -> None:
    """No local copy; the remote one's box goes away mid-traffic (its front refuses): an idempotent request that
    failed on it waits (hold_s) for the route table to name another copy, and is served there."""
    async def main() -> None:
        async with world(limits=dataclasses.replace(FAST, hold_s=5.0, probe_interval_s=5.0), local=False) as w:
            await w.go_remote()
            assert await w.get_text("/who") == (200, "remote")
            await w.front.stop()  # the box is gone; the probes (every 5 s here) have not noticed yet
            waiting = asyncio.ensure_future(w.get_text("/who"))
            await until(lambda: w.router.metrics.value("held_total", component=COMPONENT) == 1, "the request held")
            assert not waiting.done()
            replacement = Front(FrontConfig(components={COMPONENT: w.remote.port},
                                            credential_sha256=credential_hash(w.credential),
                                            listen_host="127.0.0.1", listen_port=0))
            await replacement.start()
            try:
                assert replacement.address is not None
                w.router.apply_records([
                    w.record(state="TERMINATED"),
                    {**w.record(instance_id="sl-2", fingerprint=replacement.fingerprint),
                     "component_states": {COMPONENT: {"state": "healthy",
                                                      "endpoint": f"127.0.0.1:{replacement.address[1]}"}}}])
                assert await waiting == (200, "remote")
                assert w.router.table.current(COMPONENT).key == "remote:sl-2"
                assert w.router.metrics.value("failed_total", component=COMPONENT) == 0
            finally:
                await replacement.stop()

    run(main())
