"""Talking to the control plane: each snapshot step is an ask carried by a heartbeat (``HeartbeatChannel``),
retried while the control plane does not answer; its reply parsed and checked."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import httpx
from pydantic import TypeAdapter, ValidationError

from spotleash.instance_agent.snapshot.common import (
    RETRY_STATUSES,
    SnapshotError,
)
from spotleash.log import get_logger
from spotleash.wire.events import Heartbeat
from spotleash.wire.snapshot import (
    Refused,
    SnapshotAsk,
    SnapshotReply,
)

log = get_logger(__name__)


CHANNEL_RETRY_S = 60.0  # a snapshot ask is repeated this long while the control plane does not answer

_reply_adapter: TypeAdapter[SnapshotReply] = TypeAdapter(SnapshotReply)


class Channel(Protocol):
    def ask(self, ask: SnapshotAsk, budget_s: float | None = None) -> SnapshotReply:
        """Send one ask to the control plane and return its answer; ``SnapshotError`` if none came (within
        ``budget_s`` when given: a preemption snapshot has 25 s in all)."""
        ...


class HeartbeatChannel:
    """Asks ride on a heartbeat (``beat(ask)`` builds it); the answer is the reply's ``snapshot``.

    An ask whose heartbeat got no answer (connection refused or cut, a 429/5xx: the function restarting,
    or killed after it acted and before it replied) is sent again, in a fresh heartbeat, for up to
    ``retry_budget_s``. Every ask is safe to repeat: an upload ask for a snapshot already recorded gets
    that snapshot's URLs again, a repeated "uploaded" gets the verdict already given. Without this, a
    control plane restart during the grant lost the whole packed snapshot. ``stop`` (the keeper's) ends the
    retries: a keeper stopped mid-ask otherwise kept its thread asking for the rest of the minute."""

    def __init__(self, http: httpx.Client, url: str, token: str, beat: Callable[[SnapshotAsk], Heartbeat], *,
                 retry_budget_s: float = CHANNEL_RETRY_S, sleep: Callable[[float], None] = time.sleep,
                 stop: threading.Event | None = None) -> None:
        self._http, self._url, self._token, self._beat = http, url, token, beat
        self._retry_budget_s, self._sleep, self._stop = retry_budget_s, sleep, stop

    def ask(self, ask: SnapshotAsk, budget_s: float | None = None) -> SnapshotReply:
        budget = self._retry_budget_s if budget_s is None else min(budget_s, self._retry_budget_s)
        give_up_at = time.monotonic() + budget
        pause = 0.5
        while True:
            try:
                return self._ask_once(ask)
            except _NoAnswer as e:
                if time.monotonic() + pause > give_up_at:
                    raise SnapshotError(f"{ask.op}: {e} (asked for {budget:.0f} s)") from e
                if self._stop is not None and self._stop.is_set():
                    raise SnapshotError(f"{ask.op}: {e} (stopped while asking)") from e
                log.warning("snapshot ask not answered; asking again", op=ask.op, reason=str(e), pause_s=pause)
            if self._stop is None:
                self._sleep(pause)
            elif self._stop.wait(pause):
                raise SnapshotError(f"{ask.op}: stopped while asking")
            pause = min(pause * 2, 8.0)

    def _ask_once(self, ask: SnapshotAsk) -> SnapshotReply:
        body = self._beat(ask).wire_json()
        try:
            r = self._http.post(self._url, content=body, headers={
                "Authorization": f"Bearer {self._token}", "Content-Type": "application/json"})
        except httpx.HTTPError as e:
            raise _NoAnswer(f"the control plane did not answer ({type(e).__name__})") from e
        if r.status_code in RETRY_STATUSES:
            raise _NoAnswer(f"the control plane answered HTTP {r.status_code}")
        if r.status_code != 200:
            raise SnapshotError(f"{ask.op}: the control plane answered HTTP {r.status_code}")
        return parse_reply(r.text, ask.op)


class _NoAnswer(Exception):
    """A heartbeat that got no usable answer and may be sent again."""


def parse_reply(text: str, op: str) -> SnapshotReply:
    """The ``snapshot`` member of a heartbeat reply body."""
    try:
        data = json.loads(text)
        return _reply_adapter.validate_python(data["snapshot"])
    except (ValueError, KeyError, TypeError, ValidationError) as e:
        raise SnapshotError(f"{op}: the heartbeat reply carries no snapshot answer") from e


def expect(reply: SnapshotReply, kind: type[Any], op: str) -> Any:
    if isinstance(reply, Refused):
        raise SnapshotError(f"{op}: refused by the control plane: {reply.detail}")
    if not isinstance(reply, kind):
        raise SnapshotError(f"{op}: unexpected answer {reply.kind!r}")
    return reply


def tell(channel: Channel, ask: SnapshotAsk) -> None:
    try:
        channel.ask(ask)
    except SnapshotError as e:  # only the audit misses it
        log.warning("could not report to the control plane", op=ask.op, reason=str(e))
