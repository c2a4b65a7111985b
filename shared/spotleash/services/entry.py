"""What every entry point does around its service: decode, dedup, dispatch, ack or nack, log.

The ack/nack policy in one place: bad input is acknowledged, recorded in ``rejected`` with its
reason and copied to the dead-letter topic (never redelivered); transient failures raise, so
Pub/Sub redelivers with backoff and, past max attempts, dead-letters the message. A demand whose
lease is not known yet answers 503 with one warning line (no traceback) and is redelivered; at its
last allowed delivery it is refused as ``lease_unknown`` (recorded, dead-lettered, acked).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from typing import Any, TypeVar

from pydantic import BaseModel

from spotleash import log as slog
from spotleash.config import Settings, load_settings
from spotleash.errors import BadInput, ConfigError, LeaseUnknown
from spotleash.providers import build_provider, enabled_providers
from spotleash.providers.base import Provider
from spotleash.services.context import Context
from spotleash.topology import load_topology
from spotleash.wire.events import Rejected, parse_event

log = slog.get_logger(__name__)
M = TypeVar("M", bound=BaseModel)


@cache
def settings() -> Settings:
    """The functions' settings, checked at start: a function with a wrong configuration must not serve."""
    s = load_settings()
    slog.configure(s.log_level)
    if s.heartbeat_signing_key is None:
        raise ConfigError("SPOTLEASH_HEARTBEAT_SIGNING_KEY is not set: the functions need it to issue and check "
                          "instance heartbeat tokens (Terraform passes it from Secret Manager)")
    if not s.heartbeat_url:
        raise ConfigError("SPOTLEASH_HEARTBEAT_URL is not set: instances need the on_heartbeat URL to report")
    return s


_warm: dict[str, Provider] = {}


@cache
def context() -> Context:
    ctx = Context.from_settings(settings())
    ctx.providers.update(_warm)
    return ctx


def warm_up() -> None:
    """Build the providers' REST clients at start, so the first event does not pay for them.

    Only fork-safe clients: functions-framework imports us in gunicorn's master and forks the
    worker afterwards, and a gRPC channel (Firestore) made before a fork hangs the worker's exit.
    """
    s = settings()
    for name in enabled_providers(s):
        _warm[name] = build_provider(name, s)


def unwrap_pubsub(data: Any) -> tuple[bytes, str]:
    """(message bytes, message id) from a messagePublished CloudEvent's data."""
    from google.events.cloud.pubsub_v1 import MessagePublishedData

    payload = data if isinstance(data, (str, bytes)) else json.dumps(data)
    parsed = MessagePublishedData.from_json(payload, ignore_unknown_fields=True)
    return bytes(parsed.message.data), str(parsed.message.message_id)


def dead_letter(ctx: Context, source: str, reason: str, raw: bytes) -> None:
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

    topic = f"projects/{ctx.settings.project}/topics/{load_topology().dead_letter_topic}"
    pubsub_v1.PublisherClient().publish(topic, raw, source=source, reason=reason).result(timeout=10)


def reject(ctx: Context, source: str, reason: str, detail: str, raw: bytes, message_id: str) -> None:
    log.warning("event rejected", source=source, reason=reason, detail=detail, message_id=message_id)
    ctx.store.reject(source=source, reason=reason, detail=detail, raw=raw, message_id=message_id, now=ctx.now())
    dead_letter(ctx, source, reason, raw)


def max_delivery_attempts(source: str) -> int | None:
    """The dead-letter policy's limit of the subscription that pushes ``source`` events (topology.json)."""
    function = f"on_{source}"
    limits = [s.max_delivery_attempts for s in load_topology().subscriptions.values() if s.function == function]
    return limits[0] if limits else None


def delivery_attempt(data: Any) -> int | None:
    """Pub/Sub's ``deliveryAttempt`` of this push (set on subscriptions with a dead-letter policy).

    functions-framework drops it when it turns a raw push into a CloudEvent, so the raw push body of
    the current request is read as well.
    """
    from flask import has_request_context, request

    envelopes = [data, request.get_json(silent=True) if has_request_context() else None]
    for env in envelopes:
        if isinstance(env, dict):
            value = env.get("deliveryAttempt", env.get("delivery_attempt"))
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def counted_attempt(ctx: Context, source: str, key: str, limit: int) -> int:
    """This delivery's number when the push does not say (the Pub/Sub emulator never does): each wait
    claims the next free marker in the ``events`` collection, so the n-th delivery gets n."""
    for n in range(1, limit + 1):
        if ctx.store.mark_event(f"{source}-{key}-wait-{n}", f"{source}_wait", ctx.now()):
            return n
    return limit


def wait_or_give_up(ctx: Context, source: str, data: Any, error: LeaseUnknown, raw: bytes, message_id: str,
                    event_id: str) -> str:
    """A demand for a lease not known yet: redeliver (503, one warning line), or at the last allowed
    delivery record it in ``rejected`` as ``lease_unknown``, dead-letter it and acknowledge it."""
    from flask import abort

    limit = max_delivery_attempts(source)
    attempt = delivery_attempt(data)
    if attempt is None and limit is not None:
        attempt = counted_attempt(ctx, source, message_id or event_id, limit)
    if limit is not None and attempt is not None and attempt >= limit:
        reject(ctx, source, "lease_unknown", f"{error} (delivery {attempt} of {limit}: giving up)", raw, message_id)
        return "rejected"
    log.warning("demand waits for its lease; Pub/Sub redelivers it", source=source, lease_id=error.lease_id,
                event_id=event_id, message_id=message_id, attempt=attempt, max_attempts=limit)
    abort(503, description=str(error))  # an HTTP error: flask answers it without logging a crash


def handle_message(source: str, data: Any, model: type[M], service: Callable[[Context, M], Any],
                   *, dedup: bool = False) -> str:
    """Run ``service`` on one Pub/Sub message. Returns a short outcome; raises only to get a redelivery."""
    ctx = context()
    try:
        raw, message_id = unwrap_pubsub(data)
    except (ValueError, TypeError, KeyError) as e:
        reject(ctx, source, "bad_envelope", str(e), json.dumps(data, default=str).encode()[:4096], "")
        return "rejected"
    parsed = parse_event(raw, model)
    if isinstance(parsed, Rejected):
        reject(ctx, source, parsed.reason, parsed.detail, raw, message_id)
        return "rejected"
    event_id = getattr(parsed, "event_id", message_id)
    if dedup and not ctx.store.mark_event(f"{source}-{event_id}", source, ctx.now()):
        log.info("duplicate delivery", source=source, event_id=event_id, message_id=message_id)
    try:
        result = service(ctx, parsed)
    except LeaseUnknown as e:
        return wait_or_give_up(ctx, source, data, e, raw, message_id, event_id)
    except BadInput as e:
        reject(ctx, source, "refused", str(e), raw, message_id)
        return "rejected"
    log.info("handled", source=source, event_id=event_id, lease_id=getattr(parsed, "lease_id", None),
             message_id=message_id, outcome=str(result)[:300])
    return "ok"
