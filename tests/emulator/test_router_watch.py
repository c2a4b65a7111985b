"""The router learns READY, preemption, endings and the lease's release from Firestore listeners
(Google's emulator, the official client's ``on_snapshot``), not from a poll."""

from __future__ import annotations

import queue
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from tests.conftest import TEST_PROJECT
from tests.emulator.emulator_fixtures import empty_firestore, firestore_emulator

from spotleash.instance_agent.front import FrontConfig, FrontThread
from spotleash.router.channel import credential_hash, new_credential
from spotleash.router.proxy import ComponentRoute, Limits, RouterConfig
from spotleash.router.service import RouterService, firestore_watch
from spotleash.router.watch import RecordWatch

pytestmark = [pytest.mark.emulator]


@pytest.fixture(scope="module")
def firestore_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with firestore_emulator(tmp_path_factory.mktemp("firestore-emulator")) as host:
        yield host


@pytest.fixture
def client(firestore_host: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    from google.cloud import firestore

    empty_firestore(firestore_host)
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_host)
    return firestore.Client(project=TEST_PROJECT)


def _record(iid: str, lease: str, state: str, **extra: Any) -> dict[str, Any]:
    return {"instance_id": iid, "lease_id": lease, "state": state, "preempted": False, **extra}


def _next(q: queue.Queue[Any], match: Any, timeout_s: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        item = q.get(timeout=max(deadline - time.monotonic(), 0.01))
        if match(item):
            return item


def test_watch_delivers_each_change_of_the_lease_records_and_the_release(client: Any) -> None:
    records: queue.Queue[tuple[float, list[dict[str, Any]]]] = queue.Queue()
    leases: queue.Queue[dict[str, Any] | None] = queue.Queue()
    watch = RecordWatch(client, "lease-a", lambda r: records.put((time.monotonic(), r)), leases.put)
    client.collection("leases").document("lease-a").set({"lease_id": "lease-a", "released": False})
    watch.start()
    try:
        _next(records, lambda item: item[1] == [])  # the initial, empty result set
        docs = client.collection("instances")
        docs.document("sl-other").set(_record("sl-other", "lease-b", "READY"))  # not ours
        latencies = []
        for change in ({"state": "RUNNING"}, {"state": "READY"}, {"preempted": True}, {"state": "TERMINATING"}):
            t0 = time.monotonic()
            docs.document("sl-1").set({**_record("sl-1", "lease-a", "RUNNING"), **change}, merge=False)
            at, snap = _next(records, lambda item, c=change: bool(item[1]) and all(item[1][0].get(k) == v for k, v in c.items()))
            assert [r["instance_id"] for r in snap] == ["sl-1"]
            latencies.append(at - t0)
        docs.document("sl-1").delete()
        _next(records, lambda item: item[1] == [])
        client.collection("leases").document("lease-a").set({"released": True}, merge=True)
        _next(leases, lambda lease: bool(lease and lease.get("released")))
        print(f"listener latency write→callback: max {max(latencies) * 1000:.0f} ms over {len(latencies)} changes")
    finally:
        watch.stop()


class _Copy(BaseHTTPRequestHandler):
    name = b"?"

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.name)))
        self.end_headers()
        self.wfile.write(self.name)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's signature
        return


def _serve(name: bytes) -> ThreadingHTTPServer:
    handler = type(f"Copy_{name.decode()}", (_Copy,), {"name": name})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_router_follows_the_records_written_by_the_control_plane(client: Any) -> None:
    local, remote = _serve(b"local"), _serve(b"remote")
    credential = new_credential()
    front = FrontThread(FrontConfig(components={"thumbs": remote.server_address[1]},
                                    credential_sha256=credential_hash(credential), listen_host="127.0.0.1",
                                    listen_port=0))
    _, front_port = front.start()
    service = RouterService(
        RouterConfig(components=(ComponentRoute("thumbs", 0, f"http://127.0.0.1:{local.server_address[1]}", "/"),),
                     credential=credential, limits=Limits(probe_interval_s=0.2)),
        watch_factory=firestore_watch(client, "lease-r"))
    host, port = service.start()["thumbs"]

    def answer() -> bytes:
        with urllib.request.urlopen(f"http://{host}:{port}/", timeout=5) as r:
            return bytes(r.read())

    def wait_for(body: bytes, what: str) -> float:
        t0 = time.monotonic()
        while answer() != body:
            assert time.monotonic() - t0 < 10, f"timed out waiting for {what}: {service.routes()}"
            time.sleep(0.02)
        return time.monotonic() - t0

    try:
        assert answer() == b"local"
        doc = client.collection("instances").document("sl-r")
        ready = _record("sl-r", "lease-r", "READY", tls_fingerprint=front.fingerprint,
                        component_states={"thumbs": {"state": "healthy", "endpoint": f"127.0.0.1:{front_port}"}})
        doc.set(ready)
        to_remote = wait_for(b"remote", "READY → remote")
        doc.set({"preempted": True}, merge=True)
        to_local = wait_for(b"local", "preemption → local")
        assert "preemption notice" in service.routes()["thumbs"]["reason"]
        print(f"READY written → first remote answer {to_remote * 1000:.0f} ms; "
              f"preemption written → first local answer {to_local * 1000:.0f} ms")
    finally:
        service.stop()
        front.stop()
        local.shutdown()
        remote.shutdown()
        local.server_close()
        remote.server_close()
