"""What ``spotleash status`` and the dashboard show of the agent: its router's ``/routes`` on the loopback admin port.

``read_routes`` returns, per component, where new requests go (``target``: local / remote / none),
the instance serving it remotely, why, and ``remote_share`` (the share of its requests served remotely
since the agent started); ``read_components`` the agent's hand-off state per component (``agent.handoff``:
where it runs, its local footprint, the memory freed, why). Each None when no router answers (the agent is
not running, or routes nothing).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _read(admin_port: int | None, key: str, host: str, timeout_s: float) -> dict[str, Any] | None:
    if admin_port is None:
        return None
    try:
        with _NO_PROXY.open(f"http://{host}:{admin_port}/routes", timeout=timeout_s) as r:
            data = json.loads(r.read())
    except (OSError, urllib.error.URLError, ValueError):
        return None
    got = data.get(key) if isinstance(data, dict) else None
    return got if isinstance(got, dict) else None


def read_routes(admin_port: int | None, host: str = "127.0.0.1", timeout_s: float = 1.0) -> dict[str, Any] | None:
    return _read(admin_port, "routes", host, timeout_s)


def read_components(admin_port: int | None, host: str = "127.0.0.1", timeout_s: float = 1.0) -> dict[str, Any] | None:
    return _read(admin_port, "components", host, timeout_s)
