"""One way to inject faults into every fake (Compute Engine, VAST.ai, Cloud Scheduler).

A fake owns one :class:`FaultPlan`. Each request it serves asks the plan for a fault with
``plan.take(operation, method=..., path=...)``; the first rule (in the order they were added) that
matches and has firings left is consumed and returned, and the transport acts on it: sleep
``latency_s``, then answer ``status`` in the fake's own error shape. A rule with an ``effect``
is a fault of the fake's model rather than of its transport (VAST: ``offer_gone``); the model takes
those with ``plan.take(..., effect="offer_gone")``.

The control API is the same for every fake (JSON over HTTP; the gRPC fakes — scheduler, billing —
carry the same JSON in their control service's AddFault, Faults and ClearFaults):

    POST   /_control/faults   one rule                    -> {"rule": {...}}
    GET    /_control/faults   rules with fired counts     -> {"rules": [...], "left": N, "fired": N, "calls": {...}}
    DELETE /_control/faults   forget every rule and count -> {"ok": true}

A rule: ``{"operation": "instances.insert", "method": "PUT", "path": "asks/", "count": 2,
"status": 503, "latency_s": 0.5, "reason": "...", "message": "...", "effect": "offer_gone"}`` —
every field but ``count`` optional; ``operation`` ``"*"`` or absent matches any operation, ``path``
is a regular expression searched in the request path, ``method`` an HTTP verb. A rule must do
something (``status``, ``latency_s`` or ``effect``). Unknown fields are refused.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass
from typing import Any

MAX_LATENCY_S = 600.0
# google.rpc's mapping of HTTP statuses to gRPC codes: how the gRPC fakes answer a rule's ``status``.
GRPC_CODE_NAMES = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 409: "ABORTED",
    429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 501: "UNIMPLEMENTED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
}


def grpc_code_name(status: int) -> str:
    """The gRPC status code name for an HTTP error status (INTERNAL for those without their own)."""
    return GRPC_CODE_NAMES.get(status, "INTERNAL")
_FIELDS = {"operation", "method", "path", "count", "status", "latency_s", "reason", "message", "effect"}


class FaultError(ValueError):
    """A fault rule or control request that makes no sense; the message says why."""


@dataclass
class FaultRule:
    id: int
    count: int
    operation: str | None = None
    method: str | None = None
    path: str | None = None
    status: int | None = None
    latency_s: float = 0.0
    reason: str | None = None
    message: str | None = None
    effect: str | None = None
    fired: int = 0

    @property
    def left(self) -> int:
        return self.count - self.fired

    def matches(self, operation: str, method: str | None, path: str, effect: str | None) -> bool:
        return (
            self.left > 0
            and self.effect == effect
            and self.operation in (None, "*", operation)
            and (self.method is None or method is None or self.method == method.upper())
            and (self.path is None or re.search(self.path, path) is not None)
        )

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "left": self.left}


def parse_rule(body: Any, rule_id: int, effects: Collection[str]) -> FaultRule:
    """A rule from its JSON form; FaultError says what is wrong with it."""
    if not isinstance(body, Mapping):
        raise FaultError("a fault rule is a JSON object")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise FaultError(f"unknown fault field(s) {unknown}; a rule has {sorted(_FIELDS)}")

    def text(key: str) -> str | None:
        v = body.get(key)
        if v is not None and not isinstance(v, str):
            raise FaultError(f"{key} must be a string, got {v!r}")
        return v

    try:
        count = int(body.get("count", 1))
        status = None if body.get("status") is None else int(body["status"])
        latency = float(body.get("latency_s") or 0.0)
    except (TypeError, ValueError) as e:
        raise FaultError(f"count, status and latency_s are numbers: {e}") from e
    if count < 1:
        raise FaultError(f"count must be at least 1, got {count}")
    if status is not None and not 400 <= status <= 599:
        raise FaultError(f"status must be an HTTP error status (400-599), got {status}")
    if not 0.0 <= latency <= MAX_LATENCY_S:
        raise FaultError(f"latency_s must be between 0 and {MAX_LATENCY_S:g}, got {latency}")
    effect = text("effect")
    if effect is not None and effect not in effects:
        raise FaultError(f"effect {effect!r} is not one this fake knows; it knows {sorted(effects)}")
    if status is None and not latency and effect is None:
        raise FaultError("a fault rule must do something: give status, latency_s or effect")
    path = text("path")
    if path is not None:
        try:
            re.compile(path)
        except re.error as e:
            raise FaultError(f"path is not a regular expression: {e}") from e
    method = text("method")
    return FaultRule(
        id=rule_id, count=count, operation=text("operation"), method=method.upper() if method else None,
        path=path, status=status, latency_s=latency, reason=text("reason"), message=text("message"), effect=effect,
    )


class FaultPlan:
    """The rules of one fake, and how many calls of each operation it has seen. Thread-safe."""

    def __init__(self, effects: Collection[str] = ()) -> None:
        self.effects = frozenset(effects)
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._ids = 0
        self.calls: Counter[str] = Counter()

    def add(self, body: Any) -> FaultRule:
        with self._lock:
            self._ids += 1
            rule = parse_rule(body, self._ids, self.effects)
            self._rules.append(rule)
            return rule

    def take(self, operation: str, *, method: str | None = None, path: str = "",
             effect: str | None = None) -> FaultRule | None:
        """Consume and return the first matching rule with firings left (a request counts as a call)."""
        with self._lock:
            if effect is None:
                self.calls[operation] += 1
            for rule in self._rules:
                if rule.matches(operation, method, path, effect):
                    rule.fired += 1
                    return rule
        return None

    def left(self) -> int:
        with self._lock:
            return sum(r.left for r in self._rules)

    def reset(self) -> None:
        with self._lock:
            self._rules.clear()
            self.calls.clear()

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {
                "rules": [r.to_json() for r in self._rules],
                "left": sum(r.left for r in self._rules),
                "fired": sum(r.fired for r in self._rules),
                "calls": dict(self.calls),
            }

    def control(self, verb: str, body: Any) -> dict[str, Any]:
        """The control API, whatever carries it: POST adds a rule, GET shows them, DELETE forgets."""
        if verb == "POST":
            return {"rule": self.add(body).to_json()}
        if verb == "GET":
            return self.to_json()
        if verb == "DELETE":
            self.reset()
            return {"ok": True}
        raise FaultError(f"{verb} is not a fault control verb (POST, GET, DELETE)")
