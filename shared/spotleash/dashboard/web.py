"""The dashboard's routes, independent of the server that carries them.

``respond(path, state)`` answers a GET for ``path`` relative to the page's base (``""`` or ``index.html``:
the page; ``assets/NAME``: one of the files shipped in ``spotleash/dashboard/static`` (not ``static/``: Flask,
under functions-framework, keeps that prefix for itself); ``api/state``: the
view as JSON). Every answer carries headers that keep the page to itself: a Content-Security-Policy that
allows nothing but this origin (no CDN, no inline script, no frames), no referrer (the local server's
token is in the URL), no caching, no MIME sniffing. Who may ask is decided by the server in front.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from spotleash.log import get_logger

log = get_logger(__name__)

STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Cross-Origin-Resource-Policy": "same-origin",
}
STATE_PATH = "api/state"
ASSETS = "assets/"


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)

    def all_headers(self) -> dict[str, str]:
        return {"Content-Type": self.content_type, "Content-Length": str(len(self.body)), **SECURITY_HEADERS,
                **self.headers}


@cache
def static_files() -> dict[str, tuple[bytes, str]]:
    """name -> (content, content type) of every file shipped in spotleash/dashboard/static."""
    root = resources.files("spotleash.dashboard").joinpath("static")
    out: dict[str, tuple[bytes, str]] = {}
    for entry in root.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
        if entry.is_file() and suffix in STATIC_TYPES:
            out[entry.name] = (entry.read_bytes(), STATIC_TYPES[suffix])
    if "index.html" not in out:
        raise RuntimeError("spotleash/dashboard/static/index.html is missing from the installed package")
    return out


def text(status: int, message: str) -> Response:
    return Response(status, (message + "\n").encode())


def respond(path: str, state: Callable[[], dict[str, Any]]) -> Response:
    """Answer a GET for ``path`` (relative to the page's base, no leading slash, no query)."""
    files = static_files()
    if path in ("", "index.html"):
        body, ctype = files["index.html"]
        return Response(200, body, ctype)
    if path.startswith(ASSETS):
        found = files.get(path[len(ASSETS):])
        if found is None:
            return text(404, "no such file")
        return Response(200, found[0], found[1])
    if path == STATE_PATH:
        started = time.perf_counter()
        try:
            view = state()
        except Exception as e:  # noqa: BLE001 - the page shows one sentence; the log keeps the rest
            log.error("dashboard state failed", error=str(e), error_type=type(e).__name__)
            body = json.dumps({"error": f"the store could not be read: {type(e).__name__}"}).encode()
            return Response(503, body, "application/json", {"Retry-After": "5"})
        body = json.dumps(view, separators=(",", ":")).encode()
        ms = (time.perf_counter() - started) * 1000
        return Response(200, body, "application/json", {"Server-Timing": f"state;dur={ms:.1f}"})
    return text(404, "not found")
