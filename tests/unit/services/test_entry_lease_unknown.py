"""A demand for a lease that was never created: each redelivery is one WARNING line (no traceback,
HTTP 503 so Pub/Sub redelivers); the last allowed delivery is recorded in ``rejected`` as
``lease_unknown``, dead-lettered and acknowledged.

In-process, the way functions-framework tests its own functions: a raw Pub/Sub push (as the
subscription sends it, with ``deliveryAttempt``) goes to ``create_app(...).test_client()``, whose
function calls ``entry.handle_message`` with the real launch service on the in-memory store and fake
providers (tests/support); the dead-letter publish (the Pub/Sub boundary) is recorded.
"""

from __future__ import annotations

import base64
import logging
import uuid
from pathlib import Path
from typing import Any

import pytest
from functions_framework import create_app
from tests.support.builders import demand, open_lease
from tests.support.memory_store import MemoryStore

from spotleash.model import State
from spotleash.services import entry
from spotleash.services.context import Context
from spotleash.services.launch import handle_demand
from spotleash.wire.events import DemandEvent

LIMIT = entry.max_delivery_attempts("demand")

FUNCTION_SOURCE = '''
from spotleash.wire.events import DemandEvent
from spotleash.model import State
from spotleash.services.entry import handle_message
from spotleash.services.launch import handle_demand
import functions_framework

@functions_framework.cloud_event
def on_demand(event):
    handle_message("demand", event.data, DemandEvent, handle_demand, dedup=True)
'''


@pytest.fixture()
def entry_ctx(ctx: Context, monkeypatch: pytest.MonkeyPatch) -> Context:
    """The services' Context (conftest: memory store, fake providers, fake clock) as the functions' own."""
    monkeypatch.setattr(entry, "context", lambda: ctx)
    return ctx


@pytest.fixture()
def dead_letters(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, bytes]]:
    sent: list[tuple[str, str, bytes]] = []
    monkeypatch.setattr(entry, "dead_letter", lambda _ctx, source, reason, raw: sent.append((source, reason, raw)))
    return sent


@pytest.fixture()
def client(tmp_path: Path) -> Any:
    source = tmp_path / "main.py"
    source.write_text(FUNCTION_SOURCE)
    return create_app(target="on_demand", source=str(source), signature_type="cloudevent").test_client()


def push(event: DemandEvent, message_id: str, attempt: int | None) -> dict[str, Any]:
    """The body a Pub/Sub push subscription POSTs (``deliveryAttempt`` only with a dead-letter policy)."""
    body: dict[str, Any] = {
        "message": {"data": base64.b64encode(event.to_bytes()).decode(), "messageId": message_id,
                    "publishTime": "2026-11-29T12:00:00Z", "attributes": {}},
        "subscription": "projects/spotleash-local/subscriptions/spotleash-demand-push",
    }
    if attempt is not None:
        body["deliveryAttempt"] = attempt
    return body


def entry_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("spotleash")]


def test_the_limit_comes_from_the_demand_subscription() -> None:
    assert LIMIT == 5


DeadLetters = list[tuple[str, str, bytes]]


def test_each_wait_is_one_warning_and_the_last_delivery_is_rejected_as_lease_unknown(
    entry_ctx: Context, store: MemoryStore, dead_letters: DeadLetters, client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    assert LIMIT is not None
    event = demand("never-created", event_id=uuid.uuid4().hex)
    message_id = uuid.uuid4().hex
    caplog.set_level(logging.INFO)
    for attempt in range(1, LIMIT):
        caplog.clear()
        resp = client.post("/projects/spotleash-local/topics/spotleash-demand", json=push(event, message_id, attempt))
        assert resp.status_code == 503, resp.data  # not acked: Pub/Sub redelivers
        warnings = [r for r in entry_logs(caplog) if r.levelno >= logging.WARNING]
        assert len(warnings) == 1 and "waits for its lease" in warnings[0].getMessage()
        assert warnings[0].levelno == logging.WARNING and not warnings[0].exc_info
        assert warnings[0].fields["attempt"] == attempt and warnings[0].fields["max_attempts"] == LIMIT  # type: ignore[attr-defined]
        assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
        assert store.rejected() == [] and dead_letters == []

    caplog.clear()
    resp = client.post("/projects/spotleash-local/topics/spotleash-demand", json=push(event, message_id, LIMIT))
    assert resp.status_code == 200  # acked: Pub/Sub will not dead-letter it a second time
    [rejected] = store.rejected()
    assert rejected["reason"] == "lease_unknown" and rejected["source"] == "demand"
    assert rejected["message_id"] == message_id and "never-created" in rejected["detail"]
    assert f"delivery {LIMIT} of {LIMIT}" in rejected["detail"]
    assert dead_letters == [("demand", "lease_unknown", event.to_bytes())]
    assert not [r for r in caplog.records if r.exc_info]


def test_without_delivery_attempt_the_deliveries_are_counted(
    entry_ctx: Context, store: MemoryStore, dead_letters: DeadLetters, client: Any
) -> None:
    """The Pub/Sub emulator sends no deliveryAttempt: the n-th wait of a message counts as delivery n."""
    assert LIMIT is not None
    event = demand("never-created-2", event_id=uuid.uuid4().hex)
    message_id = uuid.uuid4().hex
    codes = [client.post("/projects/p/topics/spotleash-demand", json=push(event, message_id, None)).status_code
             for _ in range(LIMIT)]
    assert codes == [503] * (LIMIT - 1) + [200]
    assert [r["reason"] for r in store.rejected()] == ["lease_unknown"]
    assert len(dead_letters) == 1
    # another message for the same unknown lease has its own count
    other = push(demand("never-created-2", event_id="ev-2"), "m2", None)
    assert client.post("/projects/p/topics/spotleash-demand", json=other).status_code == 503


def test_called_directly_the_wait_is_an_http_503_and_a_later_lease_lets_it_launch(
    entry_ctx: Context, store: MemoryStore, dead_letters: DeadLetters
) -> None:
    from werkzeug.exceptions import ServiceUnavailable

    with pytest.raises(ServiceUnavailable, match="lease late-lease is not known yet"):
        entry.handle_message("demand", push(demand("late-lease"), "m3", 1), DemandEvent, handle_demand, dedup=True)
    assert dead_letters == [] and store.rejected() == []
    # the lease's first renewal arrives: the next delivery launches
    open_lease(entry_ctx, "late-lease")
    assert entry.handle_message("demand", push(demand("late-lease"), "m3", 2), DemandEvent, handle_demand) == "ok"
    assert [r.state for r in store.instances_of_lease("late-lease")] == [State.RUNNING]


@pytest.mark.parametrize(("envelope", "attempt"), [
    ({"deliveryAttempt": 3}, 3),
    ({"delivery_attempt": 4}, 4),
    ({"message": {}}, None),
    ({"deliveryAttempt": True}, None),
    ({"deliveryAttempt": 0}, None),
    ({"deliveryAttempt": "5"}, None),
    ("not a dict", None),
])
def test_delivery_attempt_is_read_only_from_a_sane_envelope(envelope: Any, attempt: int | None) -> None:
    assert entry.delivery_attempt(envelope) == attempt
