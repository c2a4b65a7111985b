"""A tiny JSON-over-HTTP server on the standard library, shared by the two components.

Every response says which copy answered in ``X-Served-By``: the instance id on a spotleash instance
(its agent sets ``SPOTLEASH_COMPONENT_OF`` for every component), ``local`` elsewhere. A handler may
return an iterator of byte chunks instead of bytes: each chunk is written and flushed as it comes
(server-sent events), and the connection closes at the end.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

# (method, path) -> handler(query, body) -> (status, content_type, payload bytes or a stream of chunks)
Handler = Callable[[dict[str, list[str]], bytes], tuple[int, str, "bytes | Iterator[bytes]"]]
MAX_BODY = 32 * 1024 * 1024
SERVED_BY = os.environ.get("SPOTLEASH_COMPONENT_OF") or "local"


def json_reply(status: int, obj: Any) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(obj).encode()


def serve(name: str, routes: dict[tuple[str, str], Handler]) -> None:
    """Serve ``routes`` on 127.0.0.1 (or $HOST) at $PORT until SIGTERM."""

    class H(BaseHTTPRequestHandler):
        def _handle(self, method: str) -> None:
            url = urlparse(self.path)
            fn = routes.get((method, url.path))
            if fn is None:
                status, ctype, body = json_reply(404, {"error": f"no route {method} {url.path}"})
            else:
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY:
                    status, ctype, body = json_reply(413, {"error": f"body over {MAX_BODY} bytes"})
                else:
                    try:
                        status, ctype, body = fn(parse_qs(url.query), self.rfile.read(length))
                    except ValueError as e:  # bad input from the client
                        status, ctype, body = json_reply(400, {"error": str(e)})
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("X-Served-By", SERVED_BY)
            if isinstance(body, bytes):
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()  # HTTP/1.0: the body ends when the connection closes
            for chunk in body:
                self.wfile.write(chunk)
                self.wfile.flush()
            self.close_connection = True

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._handle("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._handle("POST")

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
            sys.stderr.write(f"{name}: {format % args}\n")

    port = int(os.environ.get("PORT", "0") or 0)
    if not port:
        sys.exit(f"{name}: set PORT")
    server = ThreadingHTTPServer((os.environ.get("HOST", "127.0.0.1"), port), H)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"{name}: listening on {server.server_address[0]}:{port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
