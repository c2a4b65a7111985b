"""Cloud Storage faults for tests: an HTTP proxy in front of fake-gcs-server that answers from a FaultPlan.

fake-gcs-server (a Go binary) has no fault hook, and stopping it loses every object (in-memory backend).
Whoever should see faults is pointed at this proxy instead (``STORAGE_EMULATOR_HOST`` of a function:
the signed URLs it issues then name the proxy too); everyone else keeps talking to the emulator.

The control API is the one of every fake (``local_emulator.faults``): ``POST/GET/DELETE /_control/faults``.
A request's *operation* is ``upload`` (``/upload/...``), ``download`` (``/download/...``) or ``json``
(the JSON API: metadata, listings, deletes); a rule's ``path`` is searched in the path *with* its query
string, where a signed upload names its object (``name=snapshots%2F...``), and for an upload also in the
head of its body, where the official client's multipart and resumable uploads name theirs. A rule with ``effect: "cut"``
forwards the request, then sends the real status and Content-Length but only half the body and closes
the connection: Cloud Storage failing mid-download. A rule sleeps ``latency_s`` and then
answers ``status`` in Cloud Storage's error shape — the request never reaches the emulator (a held upload
whose client died meanwhile leaves no object, as an interrupted single-request upload leaves none). A
rule with latency and no status delays the request, then forwards it.

    proxy = FaultProxy("http://127.0.0.1:4443").start()   # proxy.url: where clients go
    ...
    proxy.stop()
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from local_emulator.faults import FaultError, FaultPlan, FaultRule
from local_emulator.procs import LOOPBACK

CONTROL_PATH = "/_control/faults"
CUT = "cut"  # effect: half the body, then the connection closes
UPLOAD_HEAD = 4096  # bytes of an upload's body searched for a rule's path (its object metadata)
HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
                        "proxy-authorization", "proxy-authenticate", "host", "content-length"})


def operation_of(path: str) -> str:
    if path.startswith("/upload/"):
        return "upload"
    if path.startswith("/download/"):
        return "download"
    return "json"


def error_body(rule: FaultRule) -> bytes:
    """Cloud Storage's JSON error shape, which the official client and our instance agent both read."""
    status = rule.status or 503
    message = rule.message or f"injected fault {rule.id}"
    return json.dumps({"error": {"code": status, "message": message,
                                 "errors": [{"reason": rule.reason or "backendError", "message": message}]}}).encode()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _reply(self, status: int, body: bytes, headers: list[tuple[str, str]] | None = None) -> None:
        self.send_response(status)
        for k, v in headers or [("Content-Type", "application/json")]:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _control(self, body: bytes) -> None:
        try:
            out = self.server.plan.control(self.command, json.loads(body) if body else None)
        except (FaultError, ValueError) as e:
            self._reply(400, json.dumps({"error": str(e)}).encode())
            return
        self._reply(200, json.dumps(out).encode())

    def _handle(self) -> None:
        body = self._body()
        if self.path.split("?", 1)[0] == CONTROL_PATH:
            self._control(body)
            return
        op = operation_of(self.path)
        # the official client names an uploaded object in the JSON metadata at the head of the body (multipart,
        # resumable initiation), a signed request in the query: a rule's path is searched in both
        where = self.path + (" " + body[:UPLOAD_HEAD].decode("latin-1") if op == "upload" else "")
        rule = self.server.plan.take(op, method=self.command, path=where) \
            or self.server.plan.take(op, method=self.command, path=where, effect=CUT)
        if rule is not None:
            time.sleep(rule.latency_s)
            if rule.status is not None:
                self._reply(rule.status, error_body(rule))
                return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        try:
            r = self.server.client.request(self.command, self.path, content=body, headers=headers)
        except httpx.HTTPError as e:
            self._reply(502, json.dumps({"error": {"code": 502, "message": f"upstream: {e}"}}).encode())
            return
        headers_back = [(k, v) for k, v in r.headers.items() if k.lower() not in HOP_BY_HOP
                        and k.lower() != "content-encoding"]
        if rule is not None and rule.effect == CUT:
            self.send_response(r.status_code)
            for k, v in headers_back:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(r.content)))
            self.end_headers()
            self.wfile.write(r.content[:len(r.content) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self._reply(r.status_code, r.content, headers_back)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    plan: FaultPlan
    client: httpx.Client


class FaultProxy:
    """The proxy on a free loopback port, served from a daemon thread."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self._server = _Server((LOOPBACK, 0), _Handler)
        self._server.plan = FaultPlan(effects=(CUT,))
        # httpx decodes gzip bodies in .content, so the encoding header is dropped on the way back
        self._server.client = httpx.Client(base_url=self.upstream, timeout=120.0, trust_env=False)
        self._thread = threading.Thread(target=self._server.serve_forever, name="storage-fault-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self._server.server_address[1]}"

    @property
    def plan(self) -> FaultPlan:
        return self._server.plan

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._server.client.close()
