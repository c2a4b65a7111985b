"""Fault hooks of the local stack that sit in front of real servers: the Cloud Storage proxy (in front of
any HTTP server here) and the functions' WSGI layer (around a plain WSGI app here)."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from local_emulator.function_faults import FaultHook, operation_of
from local_emulator.storage.fault_proxy import FaultProxy
from local_emulator.storage.fault_proxy import operation_of as storage_operation


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, str, bytes]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def _any(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.seen.append((self.command, self.path, body))
        out = json.dumps({"path": self.path, "size": len(body)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = _any


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    _Echo.seen = []
    p = FaultProxy(f"http://127.0.0.1:{upstream.server_address[1]}").start()
    yield p
    p.stop()
    upstream.shutdown()
    upstream.server_close()


def test_the_proxy_forwards_bodies_and_queries_and_answers_faults_in_storage_shape(proxy: FaultProxy) -> None:
    with httpx.Client(base_url=proxy.url, trust_env=False) as c:
        rule = c.post("/_control/faults", json={"operation": "upload", "path": r"name=snap.*part-", "status": 503,
                                                "count": 2}).json()["rule"]
        assert rule["left"] == 2
        body = b"x" * 300_000
        url = "/upload/storage/v1/b/bk/o?uploadType=media&name=snap%2Fpart-00000"
        for _ in range(2):
            r = c.post(url, content=body)
            assert r.status_code == 503 and r.json()["error"]["errors"][0]["reason"] == "backendError"
        assert _Echo.seen == []  # a faulted request never reaches the server
        r = c.post(url, content=body)
        assert r.status_code == 200 and r.json() == {"path": url, "size": len(body)}
        assert c.get("/download/storage/v1/b/bk/o/snap%2Fmanifest.json?alt=media").status_code == 200
        state = c.get("/_control/faults").json()
        assert state["left"] == 0 and state["calls"] == {"upload": 3, "download": 1}
        assert c.post("/_control/faults", json={"status": 200}).status_code == 400  # not an error status


def test_storage_operations_follow_the_json_api_paths() -> None:
    assert storage_operation("/upload/storage/v1/b/x/o?name=a") == "upload"
    assert storage_operation("/download/storage/v1/b/x/o/a?alt=media") == "download"
    assert storage_operation("/storage/v1/b/x/o/a") == "json"


def _app(calls: list[str]) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        calls.append(environ["wsgi.input"].read().decode())
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"done"]

    return app


def _call(hook: FaultHook, method: str, path: str, body: bytes = b"") -> tuple[str, bytes]:
    got: list[str] = []
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "CONTENT_LENGTH": str(len(body)),
               "wsgi.input": io.BytesIO(body)}
    out = b"".join(hook(environ, lambda status, headers, exc_info=None: got.append(status)))
    return got[0], out


def test_a_function_held_by_a_latency_fault_has_done_its_work_before_it_answers() -> None:
    calls: list[str] = []
    hook = FaultHook(_app(calls))
    beat = json.dumps({"lease_id": "l", "snapshot": {"op": "upload"}}).encode()
    status, _ = _call(hook, "POST", "/_control/faults",
                      json.dumps({"operation": "snapshot.upload", "latency_s": 2.0}).encode())
    assert status.startswith("200")
    assert _call(hook, "POST", "/", b'{"lease_id": "l"}') == ("200 OK", b"done")  # another operation: untouched
    result: list[tuple[str, bytes]] = []
    worker = threading.Thread(target=lambda: result.append(_call(hook, "POST", "/", beat)))
    worker.start()
    end = time.monotonic() + 5
    while len(calls) < 2 and time.monotonic() < end:
        time.sleep(0.01)
    assert len(calls) == 2 and not result  # the function ran; its answer is still held
    worker.join()
    assert result == [("200 OK", b"done")]


def test_a_status_fault_answers_without_running_the_function() -> None:
    calls: list[str] = []
    hook = FaultHook(_app(calls))
    hook.plan.add({"operation": "call", "status": 503})
    status, body = _call(hook, "POST", "/", b"{}")
    assert status.startswith("503") and b"fault" in body and calls == []
    assert operation_of(b"not json") == "call" and operation_of(b'{"snapshot": {"op": "restore"}}') == "snapshot.restore"


def test_the_storage_proxy_cuts_a_download_half_way(proxy: FaultProxy) -> None:
    import http.client

    proxy.plan.add({"operation": "download", "effect": "cut", "count": 1})
    conn = http.client.HTTPConnection(proxy.url.removeprefix("http://"), timeout=10)
    conn.request("GET", "/download/storage/v1/b/b/o/x?alt=media")
    r = conn.getresponse()
    with pytest.raises(http.client.IncompleteRead):
        r.read()
    conn.close()


def test_the_storage_proxy_finds_an_upload_s_object_in_its_metadata(proxy: FaultProxy) -> None:
    proxy.plan.add({"operation": "upload", "path": "blobs/abc", "status": 503, "count": 1})
    with httpx.Client(base_url=proxy.url, trust_env=False) as c:
        body = b'--b\r\ncontent-type: application/json\r\n\r\n{"name": "blobs/abc"}\r\n--b\r\n\r\nbytes\r\n--b--'
        assert c.post("/upload/storage/v1/b/bk/o?uploadType=multipart", content=body).status_code == 503
        assert c.post("/upload/storage/v1/b/bk/o?uploadType=multipart", content=body).status_code == 200
