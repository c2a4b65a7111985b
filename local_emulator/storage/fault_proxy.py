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
rule with latency and no status delays the request, then forwards it. Answers stream back in slices.

The same proxy, with ``sessions``, is the stack's own Cloud Storage front (``local_emulator.storage.front``):
there it also checks the preconditions of resumable uploads (``local_emulator.storage.preconditions``).

    proxy = FaultProxy("http://127.0.0.1:4443").start()   # proxy.url: where clients go
    ...
    proxy.stop()
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx

from local_emulator.faults import FaultError, FaultPlan, FaultRule
from local_emulator.procs import LOOPBACK
from local_emulator.serving import Server
from local_emulator.storage.preconditions import (
    Sessions,
    Target,
    Upload,
    failure_body,
    read_upload,
    upload_id_of,
)

CONTROL_PATH = "/_control/faults"
CUT = "cut"  # effect: half the body, then the connection closes
STREAM_SLICE = 1 << 20  # bytes of an answer passed on at a time
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
    # TCP_NODELAY, as Cloud Storage's front ends answer: the head and the body are separate writes, and with Nagle
    # an answer's last partial segment waits for the client's delayed ACK (~40 ms) on a kept connection — a
    # penalty per request that real Cloud Storage does not charge and that made kept connections look slow
    disable_nagle_algorithm = True

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
        upload = None
        if self.server.sessions is not None and op == "upload":
            upload = read_upload(self.command, self.path, self.headers.get("Content-Range"), body[:UPLOAD_HEAD])
        if upload is not None:
            self._guarded(upload, body)
        else:
            self._forward(body, cut=rule is not None and rule.effect == CUT)

    # ------------------------------------------------------------------ preconditions (the stack's front only)
    def _guarded(self, upload: Upload, body: bytes) -> None:
        """An upload, with the preconditions of a resumable session checked when the request that completes it
        comes (``local_emulator.storage.preconditions``). Every write of an object — a session's completion, a
        single-request upload (whose preconditions the emulator checks itself) — takes the object's lock, so
        that none lands between a completion's check and its write."""
        sessions = self.server.sessions
        assert sessions is not None
        if upload.kind == "initiate":
            status, headers = self._forward(body)
            upload_id = upload_id_of(next((v for k, v in headers if k.lower() == "location"), None))
            if status == 200 and upload.name and upload_id:
                sessions.opened(upload_id, Target(upload.bucket, upload.name), upload.preconditions)
            return
        if upload.kind == "single":
            if upload.name:
                with sessions.lock(Target(upload.bucket, upload.name)):
                    self._forward(body)
            else:
                self._forward(body)
            return
        opened = sessions.of(upload.upload_id or "") if upload.completes else None
        if opened is None:
            self._forward(body)
            return
        target, pre = opened
        with sessions.lock(target):
            try:
                live = self._live(target) if pre else None
            except (httpx.HTTPError, ValueError) as e:
                self._reply(503, json.dumps({"error": {"code": 503, "message": f"precondition check: {e}"}}).encode())
                return
            if pre and pre.failed(live):
                sessions.closed(upload.upload_id or "")
                with contextlib.suppress(httpx.HTTPError):  # the session ends here, as Cloud Storage ends it
                    self.server.client.delete(self.path)
                self._reply(412, failure_body())
                return
            status, _ = self._forward(body)
        if status in (200, 201):
            sessions.closed(upload.upload_id or "")

    def _live(self, target: Target) -> tuple[int, int] | None:
        """The object's live (generation, metageneration), None if there is none."""
        b, o = urllib.parse.quote(target.bucket, safe=""), urllib.parse.quote(target.name, safe="")
        r = self.server.client.get(f"/storage/v1/b/{b}/o/{o}")
        if r.status_code == 404:
            return None
        r.raise_for_status()
        meta = r.json()
        return int(meta["generation"]), int(meta["metageneration"])

    # ------------------------------------------------------------------ to the emulator and back
    def _forward(self, body: bytes, *, cut: bool = False) -> tuple[int, list[tuple[str, str]]]:
        """Send the request on; stream the answer back (a download of any size passes through in slices).
        ``cut``: half the body, then the connection closes. Returns the status and the headers sent back."""
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        if self.server.sessions is not None and self.headers.get("Host"):
            # the front: the emulator builds a resumable session's URL from the Host it sees, so it must see the
            # front's, or the session's chunks would go round the front (a test's proxy keeps them off itself)
            headers["Host"] = self.headers["Host"]
        client = self.server.client
        try:
            r = client.send(client.build_request(self.command, self.path, content=body, headers=headers), stream=True)
        except httpx.HTTPError as e:
            self._reply(502, json.dumps({"error": {"code": 502, "message": f"upstream: {e}"}}).encode())
            return 502, []
        try:
            length = r.headers.get("Content-Length")
            if cut or length is None:
                # httpx decodes gzip bodies in .content, so the encoding header is dropped on the way back
                content = r.read()
                back = [(k, v) for k, v in r.headers.items() if k.lower() not in HOP_BY_HOP
                        and k.lower() != "content-encoding"]
                if cut:
                    self._cut(r.status_code, back, content)
                else:
                    self._reply(r.status_code, content, back)
                return r.status_code, back
            back = [(k, v) for k, v in r.headers.items() if k.lower() not in HOP_BY_HOP]
            self.send_response(r.status_code)
            for k, v in back:
                self.send_header(k, v)
            self.send_header("Content-Length", length)  # the raw (still encoded) bytes that follow
            self.end_headers()
            if self.command != "HEAD":
                try:
                    for piece in r.iter_raw(STREAM_SLICE):
                        self.wfile.write(piece)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client left mid-answer (a VM deleted while it downloads)
            return r.status_code, back
        finally:
            r.close()

    def _cut(self, status: int, headers: list[tuple[str, str]], content: bytes) -> None:
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content[:len(content) // 2])
        self.wfile.flush()
        self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle


class _Server(Server):
    plan: FaultPlan
    client: httpx.Client
    sessions: Sessions | None


class FaultProxy:
    """The proxy on a loopback port (a free one by default), served from a daemon thread. ``sessions``: check the
    preconditions of resumable uploads, which the emulator drops (what the stack's front does, not a test's proxy)."""

    def __init__(self, upstream: str, *, port: int = 0, sessions: Sessions | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self._server = _Server((LOOPBACK, port), _Handler)
        self._server.plan = FaultPlan(effects=(CUT,))
        self._server.sessions = sessions
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
