"""``spotleash dashboard``: the dashboard on this machine, for this user only.

The server listens on the loopback address only and wants a random token as the first segment of every
path (``http://127.0.0.1:PORT/TOKEN/``); the page's own links are relative, so they carry it. A request
without it, or with another, gets 401 and learns nothing; the token is compared in constant time. A Host
header naming anything but the loopback address is refused too (a DNS-rebinding page cannot reach in).
Each request is written to an access log (the token replaced by ``<token>``).
"""

from __future__ import annotations

import hmac
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from spotleash.dashboard.web import Response, respond, text
from spotleash.log import get_logger

log = get_logger(__name__)
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Access:
    method: str
    path: str  # token redacted
    host: str
    status: int


@dataclass
class AccessLog:
    entries: list[Access] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, entry: Access) -> None:
        with self.lock:
            self.entries.append(entry)
            del self.entries[:-10_000]

    def snapshot(self) -> list[Access]:
        with self.lock:
            return list(self.entries)


def check_token(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode(), token.encode())


def route(path: str, host: str, token: str, port: int, state: Callable[[], dict[str, Any]]) -> Response:
    """The local server's answer: the Host and token checks, then the shared routes."""
    if host not in (f"{LOOPBACK}:{port}", f"localhost:{port}"):
        return text(421, "this dashboard answers on the loopback address only")
    parts = urlsplit(path).path.split("/", 2)  # "", TOKEN, rest
    given = parts[1] if len(parts) > 1 else ""
    if not check_token(given, token):
        return Response(401, b"a valid dashboard token is needed: use the URL `spotleash dashboard` printed\n",
                        headers={"WWW-Authenticate": 'Bearer realm="spotleash dashboard"'})
    if len(parts) == 2:  # /TOKEN without the slash: the page's relative links need it
        return Response(308, b"", headers={"Location": f"/{token}/"})
    return respond(parts[2], state)


class DashboardServer:
    """A threaded HTTP server on 127.0.0.1. ``start`` serves in a thread; ``url`` carries the token."""

    def __init__(self, state: Callable[[], dict[str, Any]], *, port: int = 0, token: str | None = None) -> None:
        self.token = token or secrets.token_urlsafe(24)
        self.access = AccessLog()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "spotleash-dashboard"
            sys_version = ""

            def _answer(self, head_only: bool) -> None:
                resp = route(self.path, self.headers.get("Host", ""), server.token, server.port, state)
                server.access.add(Access(self.command, self.path.replace(server.token, "<token>"),
                                         self.headers.get("Host", ""), resp.status))
                self.send_response(resp.status)
                for k, v in resp.all_headers().items():
                    self.send_header(k, v)
                self.end_headers()
                if not head_only:
                    self.wfile.write(resp.body)

            def do_GET(self) -> None:
                self._answer(head_only=False)

            def do_HEAD(self) -> None:
                self._answer(head_only=True)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("dashboard request", line=(format % args).replace(server.token, "<token>"))

        self.httpd = ThreadingHTTPServer((LOOPBACK, port), Handler)
        self.httpd.daemon_threads = True
        self.port: int = self.httpd.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/{self.token}/"

    def start(self) -> DashboardServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="spotleash-dashboard", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
