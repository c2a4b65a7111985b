"""Cloud Functions entry points. Decode, call one spotleash service, log. No logic here."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from typing import Any

import functions_framework
from cloudevents.http.event import CloudEvent
from flask import Request, Response

from spotleash.dashboard.command import cloud_state
from spotleash.dashboard.web import respond
from spotleash.services.entry import context, handle_message, settings, warm_up
from spotleash.services.heartbeat import handle_heartbeat
from spotleash.services.launch import handle_demand
from spotleash.services.lifecycle import handle_budget, handle_lease, handle_release
from spotleash.services.reap import run_reap
from spotleash.wire.events import (
    BudgetAlert,
    DemandEvent,
    Heartbeat,
    LeaseEvent,
    ReapTick,
    Rejected,
    ReleaseEvent,
    parse_event,
)
from spotleash.wire.snapshot import SNAPSHOT_REQUEST_FIELD

settings()  # wrong configuration fails here, at start, with a message that says what to fix
warm_up()


@functions_framework.cloud_event
def on_demand(event: CloudEvent) -> None:
    handle_message("demand", event.data, DemandEvent, handle_demand, dedup=True)


@functions_framework.cloud_event
def on_release(event: CloudEvent) -> None:
    handle_message("release", event.data, ReleaseEvent, handle_release)


@functions_framework.cloud_event
def on_lease(event: CloudEvent) -> None:
    handle_message("lease", event.data, LeaseEvent, handle_lease)


@functions_framework.cloud_event
def on_reap(event: CloudEvent) -> None:
    handle_message("reap", event.data, ReapTick, run_reap)


@functions_framework.cloud_event
def on_budget(event: CloudEvent) -> None:
    handle_message("budget", event.data, BudgetAlert, handle_budget)


@functions_framework.http
def on_heartbeat(request: Request) -> tuple[str, int, dict[str, str]]:
    headers = {"Content-Type": "application/json"}
    auth = request.headers.get("Authorization", "")
    token = auth[len("Bearer "):] if auth.startswith("Bearer ") else ""
    parsed = parse_event(request.get_data(cache=False), Heartbeat)
    if isinstance(parsed, Rejected):
        return json.dumps({"error": parsed.reason, "detail": parsed.detail}), 400, headers
    if not token:
        return json.dumps({"error": "missing bearer token"}), 401, headers
    reply = handle_heartbeat(context(), parsed, token)
    body: dict[str, Any] = {"action": reply.action, "detail": reply.detail}
    if reply.snapshot is not None:
        body["snapshot"] = reply.snapshot
    if reply.snapshot_request is not None:
        body[SNAPSHOT_REQUEST_FIELD] = reply.snapshot_request.model_dump(mode="json")
    return json.dumps(body), reply.status, headers


@functions_framework.http
def on_dashboard(request: Request) -> Response:
    """The read-only dashboard. Cloud Run's invoker check (terraform: dashboard_viewers) decides who may ask."""
    if request.method not in ("GET", "HEAD"):
        return Response("read-only\n", 405, {"Allow": "GET, HEAD"})
    resp = respond(request.path.lstrip("/"), _dashboard_state())
    return Response(resp.body, resp.status, resp.all_headers())


@cache
def _dashboard_state() -> Callable[[], dict[str, Any]]:
    from spotleash.adapters.firestore import FirestoreStore

    return cloud_state(settings(), FirestoreStore.from_settings(settings()))
