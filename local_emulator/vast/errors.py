"""Errors in VAST.ai's JSON shape: ``{"success": false, "error": <code>, "msg": <text>}``.

The codes are the ones the real service answers with (``no_such_instance``, ``no_such_ask``,
``invalid_args``, ``auth_error``...). A failed bid can carry ``new_contract`` (the id of the stopped
instance the real service leaves behind).
"""

from __future__ import annotations

from typing import Any


class VastApiError(Exception):
    def __init__(self, status: int, error: str, msg: str, **extra: Any) -> None:
        super().__init__(msg)
        self.status = status
        self.error = error
        self.msg = msg
        self.extra = extra
        self.headers: dict[str, str] = {}

    def to_json(self) -> dict[str, Any]:
        return {"success": False, "error": self.error, "msg": self.msg, **self.extra}


def unauthorized() -> VastApiError:
    return VastApiError(401, "auth_error", "Invalid user key")


def no_such_instance(instance_id: int) -> VastApiError:
    return VastApiError(404, "no_such_instance", f"Instance {instance_id} not found.")


def no_such_ask(offer_id: int) -> VastApiError:
    return VastApiError(404, "no_such_ask", f"Instance type by id {offer_id} is not available.")


def invalid(msg: str) -> VastApiError:
    return VastApiError(400, "invalid_args", msg)


def not_found(path: str) -> VastApiError:
    return VastApiError(404, "not_found", f"no such API path: {path}")


def rate_limited(retry_after: float = 0.2) -> VastApiError:
    e = VastApiError(429, "rate_limited", "API requests too frequent: slow down")
    e.headers["Retry-After"] = f"{retry_after:g}"
    return e
