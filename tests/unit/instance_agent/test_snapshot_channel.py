"""The instance's snapshot asks ride on heartbeats: an ask that got no answer (the function restarting,
or killed after it acted) is sent again within a budget; a refusal is not."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from spotleash.instance_agent.snapshot.channel import HeartbeatChannel
from spotleash.instance_agent.snapshot.common import SnapshotError
from spotleash.wire.events import Heartbeat
from spotleash.wire.snapshot import Noted, SnapshotAsk, UploadAsk


def _channel(answers: list[object], sent: list[dict[str, object]], budget_s: float = 60.0) -> HeartbeatChannel:
    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, httpx.Response)
        return answer

    def beat(ask: SnapshotAsk) -> Heartbeat:
        return Heartbeat(lease_id="lease-1", instance_id="inst-1", snapshot=ask)

    http = httpx.Client(transport=httpx.MockTransport(handle))
    return HeartbeatChannel(http, "http://control/hb", "token", beat, retry_budget_s=budget_s, sleep=lambda _s: None)


ASK = UploadAsk(snapshot_id="s-1", parts=1)
NOTED = httpx.Response(200, json={"action": "continue", "snapshot": Noted().model_dump(mode="json")})


def test_an_unanswered_ask_is_sent_again_in_a_fresh_heartbeat() -> None:
    sent: list[dict[str, object]] = []
    channel = _channel([httpx.ConnectError("refused"), httpx.ReadError("reset"), httpx.Response(503), NOTED], sent)
    assert isinstance(channel.ask(ASK), Noted)
    assert len(sent) == 4
    assert len({s["event_id"] for s in sent}) == 4  # each one its own heartbeat
    assert all(s["snapshot"] == sent[0]["snapshot"] for s in sent)  # the same ask


def test_a_refusal_or_a_wrong_token_is_not_retried() -> None:
    sent: list[dict[str, object]] = []
    with pytest.raises(SnapshotError, match="HTTP 401"):
        _channel([httpx.Response(401), NOTED], sent).ask(ASK)
    assert len(sent) == 1


def test_the_channel_gives_up_after_its_budget() -> None:
    sent: list[dict[str, object]] = []
    with pytest.raises(SnapshotError, match="upload: the control plane did not answer"):
        _channel([httpx.ConnectError("refused")], sent, budget_s=0.0).ask(ASK)
    assert len(sent) == 1


def test_a_caller_s_budget_bounds_the_channel_s_own() -> None:
    """A preemption snapshot has 25 s in all: its asks are not repeated for the channel's 60 s."""
    sent: list[dict[str, object]] = []
    with pytest.raises(SnapshotError, match=r"asked for 0 s"):
        _channel([httpx.ConnectError("refused")], sent, budget_s=60.0).ask(ASK, budget_s=0.0)
    assert len(sent) == 1


def test_a_stop_ends_the_retries_of_an_unanswered_ask() -> None:
    # A keeper stopped mid-ask (the instance stopping during a restore) no longer keeps its thread asking for a
    # minute: CI saw such a thread from one test still asking, and logging, during later tests.
    sent: list[dict[str, object]] = []
    stop = threading.Event()
    channel = _channel([httpx.ConnectError("refused")], sent)
    channel._stop = stop
    timer = threading.Timer(0.3, stop.set)
    timer.start()
    t0 = time.monotonic()
    with pytest.raises(SnapshotError, match="stopped while asking"):
        channel.ask(ASK)
    assert time.monotonic() - t0 < 30  # far below the 60 s budget: the stop ended it
    assert len(sent) >= 1
