"""One metadata server per VM, on its own loopback port (the most faithful choice: the VM's process
finds it through ``GCE_METADATA_HOST=127.0.0.1:PORT``, the variable Google's own libraries read, and
uses ``http://$GCE_METADATA_HOST/computeMetadata/v1/...`` exactly as on a real VM).

Rules copied from the real server: the header ``Metadata-Flavor: Google`` is required (403 without,
and 403 when ``X-Forwarded-For`` is present); answers carry ``Metadata-Flavor: Google`` and an
``ETag``; ``?wait_for_change=true`` long-polls until the value's ETag differs from ``last_etag`` (or
from the value at request time) or ``timeout_sec`` passes; ``?recursive=true`` on a directory
answers JSON. Unknown paths are 404.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from local_emulator.serving import Server

PREFIX = "/computeMetadata/v1/"
MAX_WAIT_S = 3600.0

# A resolver maps a path below PREFIX to (content type, body) or None (404).
Resolver = Callable[[str, bool], "tuple[str, str] | None"]


def etag_of(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()[:16]


class MetadataServer:
    def __init__(self, resolve: Resolver, changed: threading.Condition) -> None:
        self._resolve = resolve
        self._changed = changed  # notified by the model on any change to this VM
        self._closed = False
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002, ARG002 - stdlib signature
                return

            def do_GET(self) -> None:  # noqa: N802 - stdlib name
                outer._handle(self)

        self._httpd = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="gce-metadata", daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> MetadataServer:
        self._thread.start()
        return self

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _send(self, h: BaseHTTPRequestHandler, code: int, body: str, ctype: str = "text/plain") -> None:
        data = body.encode()
        h.send_response(code)
        h.send_header("Metadata-Flavor", "Google")
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(data)))
        if code == 200:
            h.send_header("ETag", etag_of(body))
        h.end_headers()
        try:
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            return  # the VM's process went away while it waited; nothing to answer

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        if h.headers.get("Metadata-Flavor") != "Google" or h.headers.get("X-Forwarded-For"):
            self._send(h, 403, "Missing required header: Metadata-Flavor: Google\n")
            return
        parts = urlsplit(h.path)
        if not parts.path.startswith(PREFIX):
            self._send(h, 404, "not found\n")
            return
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        path = parts.path[len(PREFIX):]
        recursive = query.get("recursive", "").lower() == "true"
        found = self._resolve(path, recursive)
        if found is None:
            self._send(h, 404, f"{parts.path} not found\n")
            return
        if query.get("wait_for_change", "").lower() == "true":
            try:
                timeout = min(float(query.get("timeout_sec", MAX_WAIT_S)), MAX_WAIT_S)
            except ValueError:
                self._send(h, 400, "timeout_sec must be a number\n")
                return
            last = query.get("last_etag") or etag_of(found[1])
            deadline = time.monotonic() + timeout
            with self._changed:
                while True:
                    current = self._resolve(path, recursive)
                    if current is None:
                        self._send(h, 404, f"{parts.path} not found\n")
                        return
                    found = current
                    left = deadline - time.monotonic()
                    if etag_of(found[1]) != last or left <= 0 or self._closed:
                        break
                    self._changed.wait(timeout=min(left, 1.0))
        self._send(h, 200, found[1], found[0])


def directory_listing(values: dict[str, Any], recursive: bool) -> tuple[str, str]:
    if recursive:
        return "application/json", json.dumps(values)
    return "application/text", "".join(f"{k}\n" for k in values)
