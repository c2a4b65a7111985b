"""Stand-ins around the local agent's router, in-process with real sockets: component copies that answer their
own name (``/slow`` after a while), a watch that hands the test the router's callbacks, a publisher that notes
where the router sent traffic when the release went out.

Shared by tests/unit/router/test_agent_router_wiring.py and tests/unit/agent/test_agent_wake.py.
"""

from __future__ import annotations

import http.server
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from local_emulator.procs import free_port
from spotleash.agent.routing import AgentRouter
from spotleash.polling import wait_until
from spotleash.wire.events import Event
from spotleash.wire.package import AppSpec, ComponentSpec

__all__ = ["SLOW_ANSWERED", "SLOW_STARTED", "FakeWatch", "Publisher", "app_with", "free_port", "get", "serve",
           "wait_for"]


SLOW_STARTED: dict[str, threading.Event] = {}  # per copy: a ``/slow`` request has reached it


SLOW_ANSWERED: dict[str, threading.Event] = {}  # per copy: it has written its ``/slow`` answer


def serve(name: str, slow_s: float = 2.0) -> tuple[http.server.ThreadingHTTPServer, int]:
    """A component copy answering its own name; ``/slow`` answers after ``slow_s``."""
    SLOW_STARTED[name], SLOW_ANSWERED[name] = threading.Event(), threading.Event()

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/slow":
                SLOW_STARTED[name].set()
                time.sleep(slow_s)
            body = name.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            if self.path == "/slow":
                SLOW_ANSWERED[name].set()

        def log_message(self, *_a: Any) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, int(srv.server_address[1])


def app_with(local_port: int, route_port: int | None, **extra: Any) -> AppSpec:
    return AppSpec(name="t", components=[ComponentSpec(
        name="web", command=["x"], port=local_port + 1 if local_port < 65535 else 1024,
        local_url=f"http://127.0.0.1:{local_port}", route_port=route_port, **extra)])


def get(port: int, path: str = "/who", timeout: float = 10.0) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:  # noqa: S310 - loopback
        return str(r.read().decode())


@dataclass
class FakeWatch:
    """Stands in for the Firestore listener: hands the test the router's callbacks."""

    on_records: Callable[[list[dict[str, Any]]], None]
    on_lease: Callable[[dict[str, Any] | None], None]
    started: bool = False

    @staticmethod
    def factory(made: list[FakeWatch]) -> Any:
        def make(on_records: Any, on_lease: Any) -> FakeWatch:
            made.append(FakeWatch(on_records, on_lease))
            return made[-1]

        return make

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.started = False

    def ensure(self) -> bool:
        return False


@dataclass
class Publisher:
    """Fake Pub/Sub; at the moment the release is published it notes where the router sends traffic."""

    router: AgentRouter | None = None
    sent: list[Event] = field(default_factory=list)
    target_at_release: str | None = None
    # Whether the remote copy had answered the request in flight when the release was published. Read on the
    # server's side: the client thread that receives the answer may run later on a loaded machine.
    remote_answered: threading.Event | None = None
    answered_before_release: bool | None = None

    def publish(self, event: Event) -> Future[str]:
        self.sent.append(event)
        f: Future[str] = Future()
        f.set_result(f"m{len(self.sent)}")
        return f

    def publish_and_wait(self, event: Event, timeout_s: float) -> str:  # noqa: ARG002
        if self.router is not None:
            self.target_at_release = self.router.routes()["web"]["target"]
        if self.remote_answered is not None:
            self.answered_before_release = self.remote_answered.is_set()
        self.sent.append(event)
        return "released"


def wait_for(cond: Callable[[], Any], timeout_s: float = 10.0, what: str = "") -> Any:
    """``cond()``'s first truthy value, polled every 20 ms (in-process sockets answer fast)."""
    return wait_until(cond, timeout_s=timeout_s, interval_s=0.02, what=what or "condition")
