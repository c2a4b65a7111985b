"""A demand for a lease that was never created: each redelivery is one WARNING line (no traceback,
HTTP 503 so Pub/Sub redelivers); the last allowed delivery is recorded in ``rejected`` as
``lease_unknown``, dead-lettered and acknowledged.

In-process, the way functions-framework tests its own functions: a raw Pub/Sub push (as the
subscription sends it, with ``deliveryAttempt``) goes to ``create_app(...).test_client()``, whose
function calls ``entry.handle_message`` with the real launch service. The store is an in-memory
double of the calls this path makes; the dead-letter publish (the Pub/Sub boundary) is recorded.
"""

from __future__ import annotations

import base64
import logging
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from functions_framework import create_app

from spotleash.config import load_settings
from spotleash.events import Component, DemandEvent
from spotleash.model import InstanceRecord, Lease
from spotleash.services import entry
from spotleash.services.context import Context
from spotleash.services.launch import handle_demand

LIMIT = entry.max_delivery_attempts("demand")
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)

FUNCTION_SOURCE = '''
from spotleash.events import DemandEvent
from spotleash.services.entry import handle_message
from spotleash.services.launch import handle_demand
import functions_framework

@functions_framework.cloud_event
def on_demand(event):
    handle_message("demand", event.data, DemandEvent, handle_demand, dedup=True)
'''


class StoreDouble:
    """The store calls of a demand that finds no lease, kept in memory."""

    def __init__(self) -> None:
        self.events: set[str] = set()
        self.rejects: list[dict[str, Any]] = []
        self.leases: dict[str, Lease] = {}

    def mark_event(self, event_id: str, kind: str, now: datetime) -> bool:  # noqa: ARG002
        if event_id in self.events:
            return False
        self.events.add(event_id)
        return True

    def get(self, instance_id: str) -> InstanceRecord | None:  # noqa: ARG002
        return None

    def live_instances(self) -> list[InstanceRecord]:
        return []

    def instances_since(self, since: datetime) -> list[InstanceRecord]:  # noqa: ARG002
        return []

    def get_lease(self, lease_id: str) -> Lease | None:
        return self.leases.get(lease_id)

    def reject(self, **fields: Any) -> None:
        self.rejects.append(fields)


@pytest.fixture()
def ctx(monkeypatch: pytest.MonkeyPatch) -> Context:
    settings = load_settings(heartbeat_signing_key="test-key", heartbeat_url="http://127.0.0.1:1/hb")
    context = Context(settings=settings, store=StoreDouble(), clock=lambda: NOW)  # type: ignore[arg-type]
    monkeypatch.setattr(entry, "context", lambda: context)
    return context


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


def demand(lease_id: str) -> DemandEvent:
    return DemandEvent(lease_id=lease_id, trigger="threshold", ram_percent=92.0,
                       components=[Component(name="vision", ram_gb=4.0)], created_at=NOW)


def push(event: DemandEvent, message_id: str, attempt: int | None) -> dict[str, Any]:
    """The body a Pub/Sub push subscription POSTs (``deliveryAttempt`` only with a dead-letter policy)."""
    body: dict[str, Any] = {
        "message": {"data": base64.b64encode(event.to_bytes()).decode(), "messageId": message_id,
                    "publishTime": NOW.isoformat().replace("+00:00", "Z"), "attributes": {}},
        "subscription": "projects/spotleash-local/subscriptions/spotleash-demand-push",
    }
    if attempt is not None:
        body["deliveryAttempt"] = attempt
    return body


def entry_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("spotleash")]


def test_the_limit_comes_from_the_demand_subscription() -> None:
    assert LIMIT == 5


def test_each_wait_is_one_warning_and_the_last_delivery_is_rejected_as_lease_unknown(
    ctx: Context, dead_letters: list[tuple[str, str, bytes]], client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    assert LIMIT is not None
    event = demand("never-created")
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
        assert ctx.store.rejects == [] and dead_letters == []  # type: ignore[attr-defined]

    caplog.clear()
    resp = client.post("/projects/spotleash-local/topics/spotleash-demand", json=push(event, message_id, LIMIT))
    assert resp.status_code == 200  # acked: Pub/Sub will not dead-letter it a second time
    [rejected] = ctx.store.rejects  # type: ignore[attr-defined]
    assert rejected["reason"] == "lease_unknown" and rejected["source"] == "demand"
    assert rejected["message_id"] == message_id and "never-created" in rejected["detail"]
    assert f"delivery {LIMIT} of {LIMIT}" in rejected["detail"]
    assert dead_letters == [("demand", "lease_unknown", event.to_bytes())]
    assert not [r for r in caplog.records if r.exc_info]


def test_without_delivery_attempt_the_deliveries_are_counted(
    ctx: Context, dead_letters: list[tuple[str, str, bytes]], client: Any
) -> None:
    """The Pub/Sub emulator sends no deliveryAttempt: the n-th wait of a message counts as delivery n."""
    assert LIMIT is not None
    event = demand("never-created-2")
    message_id = uuid.uuid4().hex
    codes = [client.post("/projects/p/topics/spotleash-demand", json=push(event, message_id, None)).status_code
             for _ in range(LIMIT)]
    assert codes == [503] * (LIMIT - 1) + [200]
    assert [r["reason"] for r in ctx.store.rejects] == ["lease_unknown"]  # type: ignore[attr-defined]
    assert len(dead_letters) == 1
    # another message for the same unknown lease has its own count
    other = client.post("/projects/p/topics/spotleash-demand", json=push(demand("never-created-2"), "m2", None))
    assert other.status_code == 503


def test_called_directly_the_wait_is_an_http_503(ctx: Context, dead_letters: list[tuple[str, str, bytes]]) -> None:
    from werkzeug.exceptions import ServiceUnavailable

    with pytest.raises(ServiceUnavailable, match="lease late-lease is not known yet"):
        entry.handle_message("demand", push(demand("late-lease"), "m3", 1), DemandEvent, handle_demand, dedup=True)
    assert dead_letters == [] and ctx.store.rejects == []  # type: ignore[attr-defined]


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
