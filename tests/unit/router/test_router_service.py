"""RouterService: the router in its own thread, as the synchronous agent runs it."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from spotleash.router.channel import new_credential
from spotleash.router.proxy import ComponentRoute, Limits, RouterConfig
from spotleash.router.service import RouterService


class _Local(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        body = b"local"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's signature
        return


@pytest.fixture
def local_copy() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Local)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_service_starts_routes_answers_and_stops(local_copy: str) -> None:
    config = RouterConfig(components=(ComponentRoute("thumbs", 0, local_copy),), credential=new_credential(),
                          admin_port=0, limits=Limits(probe_interval_s=0.05))
    service = RouterService(config)
    addresses = service.start()
    try:
        host, port = addresses["thumbs"]
        with urllib.request.urlopen(f"http://{host}:{port}/anything", timeout=5) as r:
            assert r.read() == b"local"
        service.apply_records([{"instance_id": "sl-1", "state": "RUNNING", "component_states": {}}])
        routes = service.routes()
        assert routes["thumbs"]["target"] == "local"
        assert routes["thumbs"]["address"] == f"{host}:{port}"
        service.release_lease()
        deadline = time.monotonic() + 5
        while service.routes()["thumbs"]["reason"] != "lease released":
            assert time.monotonic() < deadline, service.routes()
            time.sleep(0.02)
        assert service.totals() == {"total": 1, "remote": 0, "retried": 0, "failed": 0}
    finally:
        service.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://{host}:{port}/anything", timeout=2)


def test_service_reports_a_taken_port() -> None:
    first = RouterService(RouterConfig(components=(ComponentRoute("a", 0, None),), credential="c"))
    (_, port), = first.start().values()
    try:
        second = RouterService(RouterConfig(components=(ComponentRoute("a", port, None),), credential="c"))
        with pytest.raises(OSError):
            second.start()
    finally:
        first.stop()
