"""The pure rules of a component's health: starting → healthy → failing, deadlines, backoff."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from spotleash.supervisor import health
from spotleash.supervisor.health import FAIL_AFTER, check_deadline, exited, probed, restart_delay, started


def test_starting_until_first_healthy_probe_and_keeps_last_error() -> None:
    h = started(10.0, now=0.0)
    h = probed(h, "connection refused", 1.0)
    assert h.state == "starting" and h.error == "connection refused" and not h.gave_up
    h = probed(h, None, 2.0)
    assert h.state == "healthy" and h.error is None


def test_healthy_turns_failing_only_after_consecutive_failed_probes() -> None:
    h = probed(started(10.0, 0.0), None, 1.0)
    for i in range(FAIL_AFTER - 1):
        h = probed(h, "HTTP 500", 2.0 + i)
        assert h.state == "healthy"
    h = probed(h, "HTTP 500", 9.0)
    assert h.state == "failing" and h.error == "HTTP 500"
    h = probed(h, None, 10.0)
    assert h.state == "healthy" and h.failed_probes == 0


def test_exit_is_failing_with_code_and_output() -> None:
    h = exited(started(10.0, 0.0), 3, "Traceback | ImportError: no module named foo")
    assert h.state == "failing"
    assert h.error == "exited with code 3: Traceback | ImportError: no module named foo"


def test_deadline_counts_from_start_while_never_healthy() -> None:
    h = probed(started(5.0, 0.0), "refused", 1.0)
    assert not check_deadline(h, 4.9).gave_up
    late = check_deadline(h, 5.0)
    assert late.gave_up and late.state == "failing"
    assert late.error == "not healthy within 5 s: refused"
    assert probed(late, None, 6.0) == late  # giving up is final: the report may already have been acted on
    assert exited(late, 1, "x") == late


def test_deadline_counts_from_the_last_healthy_moment() -> None:
    h = probed(started(5.0, 0.0), None, 100.0)  # healthy at 100
    h = exited(h, -9, "")
    assert h.error == "exited with code -9"
    assert not check_deadline(h, 104.0).gave_up
    assert check_deadline(h, 105.0).gave_up
    assert not check_deadline(probed(h, None, 104.0), 200.0).gave_up  # healthy again: no deadline


def test_errors_are_one_short_line() -> None:
    h = probed(started(5.0, 0.0), "a\nb  " + "x" * 1000, 1.0)
    assert h.error is not None and "\n" not in h.error and len(h.error) == health.ERROR_MAX


def test_restart_delay_is_bounded_exponential() -> None:
    assert [restart_delay(n) for n in range(1, 8)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert restart_delay(1, base_s=0.1, cap_s=0.3) == pytest.approx(0.1)
    assert restart_delay(5, base_s=0.1, cap_s=0.3) == pytest.approx(0.3)


class _Answers(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path == "/slow":
            time.sleep(1.0)  # past the probe's timeout
        code, body = {"/ok": (204, b""), "/ok?ready=1": (200, b"yes")}.get(self.path, (503, b"warming up"))
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """Silent: the slow answer's client has gone (the probe timed out), so its broken pipe is expected."""


@pytest.fixture
def server() -> Iterator[str]:
    srv = _Server(("127.0.0.1", 0), _Answers)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_probe_outcomes(server: str) -> None:
    assert health.probe(f"{server}/ok", 1.0) is None
    assert health.probe(f"{server}/ok?ready=1", 1.0) is None
    assert "timed out after 0.2 s" in (health.probe(f"{server}/slow", 0.2) or "")
    down = health.probe(f"http://127.0.0.1:{_closed_port()}/healthz", 1.0) or ""
    assert down.startswith("health check failed: ConnectionRefusedError") and "/healthz" in down
    assert health.probe(f"{server}/x", 1.0) == f"health check answered HTTP 503 ({server}/x): warming up"
