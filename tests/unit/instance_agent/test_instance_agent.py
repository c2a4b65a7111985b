"""The instance agent's core: what it does with each heartbeat answer, and its config parsing."""

from __future__ import annotations

import threading

import httpx
import pytest

from spotleash.instance_agent.agent import (
    BeatOutcome,
    InstanceAgent,
    env_source,
    interpret_beat_reply,
    parse_config,
)


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (None, None, BeatOutcome.RETRY),
        (200, '{"action": "continue"}', BeatOutcome.CONTINUE),
        (200, '{"action": "stop"}', BeatOutcome.STOP),
        (200, "not json", BeatOutcome.CONTINUE),
        (204, "", BeatOutcome.CONTINUE),
        (401, "", BeatOutcome.STOP),
        (404, "", BeatOutcome.STOP),
        (410, "", BeatOutcome.STOP),
        (429, "", BeatOutcome.RETRY),
        (500, '{"action": "stop"}', BeatOutcome.RETRY),
        (503, "", BeatOutcome.RETRY),
    ],
)
def test_interpret_beat_reply(status: int | None, body: str | None, expected: BeatOutcome) -> None:
    assert interpret_beat_reply(status, body) is expected


def test_parse_config() -> None:
    cfg = parse_config('{"instance_id": "sl-1", "lease_id": "l-1", "heartbeat_url": "http://x/hb", "heartbeat_interval_s": 5, "extra": 1}')
    assert cfg is not None and cfg.heartbeat_interval_s == 5 and cfg.instance_id == "sl-1"
    assert parse_config(None) is None
    assert parse_config('{"heartbeat_interval_s": -1}') is None
    assert parse_config("{broken") is None


def _agent(handler: httpx.MockTransport, config: str) -> InstanceAgent:
    load = env_source({"SPOTLEASH_AGENT_CONFIG": config, "SPOTLEASH_HEARTBEAT_TOKEN": "tok"})
    return InstanceAgent("vast", load, http=httpx.Client(transport=handler), stop=threading.Event())


CFG = '{"instance_id": "sl-1", "lease_id": "l-1", "heartbeat_url": "http://cp/hb", "heartbeat_interval_s": 0.01}'


def test_agent_stops_on_stop_and_sends_bearer_token() -> None:
    seen: list[httpx.Request] = []

    def reply(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, json={"action": "stop" if len(seen) >= 3 else "continue"})

    agent = _agent(httpx.MockTransport(reply), CFG)
    assert agent.run() == 0
    assert len(seen) == 3 and seen[0].headers["Authorization"] == "Bearer tok"
    assert b'"instance_id":"sl-1"' in seen[0].content


def test_agent_survives_connection_errors_and_5xx() -> None:
    calls = {"n": 0}

    def reply(req: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            raise httpx.ConnectError("refused", request=req)
        if calls["n"] == 2:
            return httpx.Response(503)
        return httpx.Response(401)

    agent = _agent(httpx.MockTransport(reply), CFG)
    assert agent.run() == 0 and calls["n"] == 3


def test_a_stop_while_a_beat_waits_for_its_reply_ends_the_agent_without_the_reply() -> None:
    """SIGTERM (``request_stop``) while the control plane has not answered a beat yet: the agent stops now
    and leaves the beat behind (a box being deleted waits for its guest to stop)."""
    asked, answer = threading.Event(), threading.Event()

    def reply(req: httpx.Request) -> httpx.Response:
        asked.set()
        answer.wait(timeout=30)  # the reply comes only once the test is over
        return httpx.Response(200, json={"action": "continue"})

    agent = _agent(httpx.MockTransport(reply), CFG)
    stopper = threading.Thread(target=lambda: asked.wait(timeout=30) and agent.request_stop())
    stopper.start()
    try:
        assert agent.run() == 0
        assert asked.is_set() and not answer.is_set() and agent.beats_sent == 0  # stopped before any reply
    finally:
        answer.set()
        stopper.join(timeout=10)


def test_an_error_in_a_beat_still_reaches_the_loop() -> None:
    def reply(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"action": "continue"})

    agent = _agent(httpx.MockTransport(reply), CFG)

    def broken() -> BeatOutcome:
        raise RuntimeError("a bug in the beat")

    agent.heartbeat = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="a bug in the beat"):
        agent.run()


def test_a_preempted_box_waits_for_the_beat_that_carries_its_notice() -> None:
    asked, answer = threading.Event(), threading.Event()

    def reply(req: httpx.Request) -> httpx.Response:
        asked.set()
        answer.wait(timeout=30)
        return httpx.Response(200, json={"action": "continue"})

    agent = _agent(httpx.MockTransport(reply), CFG)
    agent.preempted = True  # the notice came (watch_preemption), then the SIGTERM

    def stop_then_answer() -> None:
        asked.wait(timeout=30)
        agent.request_stop()
        answer.set()

    helper = threading.Thread(target=stop_then_answer)
    helper.start()
    assert agent.run() == 0
    helper.join(timeout=10)
    assert agent.beats_sent == 1  # the beat was answered before the agent stopped
