"""Faults inside a function of the local stack: a WSGI layer around functions-framework's app.

Same control API as every fake (``local_emulator.faults``): ``POST/GET/DELETE /_control/faults`` on the
function's own port (loopback only, like the whole stack). A request's *operation* is
``snapshot.<op>`` when it is a heartbeat carrying a snapshot ask (``spotleash.wire.snapshot``: upload,
uploaded, abandoned, restore, restored), else ``call``.

What a rule does here:
- ``status`` (with or without ``latency_s``): after the latency the request is answered with that status
  and the function never runs;
- ``latency_s`` alone: the function runs and does all its work, then its answer is held ``latency_s``
  before it is sent — the window in which a process killed after acting never replies (what a chaos
  test kills on_heartbeat in, once the work it waits for is recorded).
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterable
from typing import Any

from local_emulator.faults import FaultError, FaultPlan

CONTROL_PATH = "/_control/faults"
MAX_BODY = 8 << 20  # a heartbeat is a few KB; only bodies this small are inspected for their operation

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def operation_of(body: bytes) -> str:
    try:
        data = json.loads(body)
        op = data["snapshot"]["op"]
    except (ValueError, KeyError, TypeError):
        return "call"
    return f"snapshot.{op}" if isinstance(op, str) else "call"


def _json(start_response: StartResponse, status: str, payload: Any) -> list[bytes]:
    body = json.dumps(payload).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


class FaultHook:
    def __init__(self, app: WsgiApp) -> None:
        self.app = app
        self.plan = FaultPlan()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = str(environ.get("REQUEST_METHOD", "GET"))
        path = str(environ.get("PATH_INFO", ""))
        if path == CONTROL_PATH:
            return self._control(environ, method, start_response)
        if self.plan.left() == 0:
            return self.app(environ, start_response)
        size = int(environ.get("CONTENT_LENGTH") or 0)
        if size > MAX_BODY:
            return self.app(environ, start_response)
        body = environ["wsgi.input"].read(size)
        environ["wsgi.input"] = io.BytesIO(body)
        rule = self.plan.take(operation_of(body), method=method, path=path)
        if rule is None:
            return self.app(environ, start_response)
        if rule.status is not None:
            time.sleep(rule.latency_s)
            return _json(start_response, f"{rule.status} Injected", {"error": rule.message or f"fault {rule.id}"})
        return self._held(environ, start_response, rule.latency_s)

    def _held(self, environ: dict[str, Any], start_response: StartResponse, latency_s: float) -> list[bytes]:
        """Run the function to the end, then hold its answer ``latency_s``."""
        answer: list[Any] = []
        written: list[bytes] = []

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], Any]:
            answer[:] = [status, headers, exc_info]
            return written.append

        result = self.app(environ, capture)
        try:
            written.extend(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        time.sleep(latency_s)
        start_response(*answer)
        return [b"".join(written)]

    def _control(self, environ: dict[str, Any], method: str, start_response: StartResponse) -> list[bytes]:
        raw = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        try:
            out = self.plan.control(method, json.loads(raw) if raw else None)
        except (FaultError, ValueError) as e:
            return _json(start_response, "400 Bad Request", {"error": str(e)})
        return _json(start_response, "200 OK", out)
