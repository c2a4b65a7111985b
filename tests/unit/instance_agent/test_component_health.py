"""The pure rules of a component's health: starting → healthy → failing, deadlines, backoff."""

from __future__ import annotations

import httpx
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


def test_probe_outcomes() -> None:
    def reply(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/ok":
            return httpx.Response(204)
        if req.url.path == "/slow":
            raise httpx.ReadTimeout("slow", request=req)
        if req.url.path == "/down":
            raise httpx.ConnectError("refused", request=req)
        return httpx.Response(503, text="warming up")

    c = httpx.Client(transport=httpx.MockTransport(reply))
    assert health.probe(c, "http://h/ok", 1.0) is None
    assert "timed out after 1 s" in (health.probe(c, "http://h/slow", 1.0) or "")
    assert "ConnectError" in (health.probe(c, "http://h/down", 1.0) or "")
    assert health.probe(c, "http://h/x", 1.0) == "health check answered HTTP 503 (http://h/x): warming up"
