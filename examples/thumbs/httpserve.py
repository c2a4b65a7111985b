"""JSON-over-HTTP for the example's components, served by waitress (a production WSGI server).

A user's app runs on a real server, so the example does too: waitress is pure Python, installs offline
from one wheel on an instance, keeps a listen backlog of 1024 (the standard library's ``http.server``
keeps 5 and drops connections under an outside load generator) and closes a connection its client
dropped without a traceback (``http.server`` logs ``BrokenPipeError``).

Every response says which copy answered in ``X-Served-By``: the instance id on a spotleash instance
(its agent sets ``SPOTLEASH_COMPONENT_OF`` for every component), ``local`` elsewhere. A handler may
return an iterator of byte chunks instead of bytes: waitress sends each chunk as it comes (HTTP/1.1
chunked; server-sent events).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs

import waitress

# (method, path) -> handler(query, body) -> (status, content_type, payload bytes or a stream of chunks)
Handler = Callable[[dict[str, list[str]], bytes], tuple[int, str, "bytes | Iterator[bytes]"]]
MAX_BODY = 32 * 1024 * 1024
SERVED_BY = os.environ.get("SPOTLEASH_COMPONENT_OF") or "local"
HEALTH_PATH = "/healthz"  # probed every second: not logged
THREADS = 8  # requests served at once; more wait in waitress's queue, none is refused
BACKLOG = 1024
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 413: "Content Too Large", 500: "Internal Server Error"}


def json_reply(status: int, obj: Any) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(obj).encode()


def app_for(routes: dict[tuple[str, str], Handler]) -> Callable[..., Iterable[bytes]]:
    """The WSGI application serving ``routes`` (a ``ValueError`` from a handler is the client's fault: 400)."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO") or "/"
        fn = routes.get((method, path))
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if fn is None:
            status, ctype, body = json_reply(404, {"error": f"no route {method} {path}"})
        elif length > MAX_BODY:
            status, ctype, body = json_reply(413, {"error": f"body over {MAX_BODY} bytes"})
        else:
            try:
                status, ctype, body = fn(parse_qs(environ.get("QUERY_STRING", "")), environ["wsgi.input"].read(length))
            except ValueError as e:  # bad input from the client
                status, ctype, body = json_reply(400, {"error": str(e)})
        if path != HEALTH_PATH:  # an access line per request, as a user's server keeps; not the router's probes
            query = environ.get("QUERY_STRING", "")
            print(f"{method} {path}{'?' + query if query else ''} {status}", flush=True)
        headers = [("Content-Type", ctype), ("X-Served-By", SERVED_BY)]
        if isinstance(body, bytes):
            start_response(f"{status} {REASONS.get(status, 'Unknown')}", [*headers, ("Content-Length", str(len(body)))])
            return [body]
        start_response(f"{status} {REASONS.get(status, 'Unknown')}", [*headers, ("Cache-Control", "no-cache")])
        return body

    return app


def serve(name: str, routes: dict[tuple[str, str], Handler]) -> None:
    """Serve ``routes`` on 127.0.0.1 (or $HOST) at $PORT until SIGTERM."""
    port = int(os.environ.get("PORT", "0") or 0)
    if not port:
        sys.exit(f"{name}: set PORT")
    host = os.environ.get("HOST", "127.0.0.1")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"{name}: listening on {host}:{port} (waitress, {THREADS} threads)", flush=True)
    waitress.serve(app_for(routes), host=host, port=port, threads=THREADS, backlog=BACKLOG,
                   connection_limit=1000)
