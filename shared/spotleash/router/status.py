"""What ``spotleash status`` shows of the router: its ``/routes`` on the agent's loopback admin port.

``read_routes`` returns, per component, where new requests go (``target``: local / remote / none),
the instance serving it remotely, why, and ``remote_share`` (the share of its requests served remotely
since the agent started); None when no router answers (the agent is not running, or routes nothing).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def read_routes(admin_port: int | None, host: str = "127.0.0.1", timeout_s: float = 1.0) -> dict[str, Any] | None:
    if admin_port is None:
        return None
    try:
        with _NO_PROXY.open(f"http://{host}:{admin_port}/routes", timeout=timeout_s) as r:
            data = json.loads(r.read())
    except (OSError, urllib.error.URLError, ValueError):
        return None
    routes = data.get("routes") if isinstance(data, dict) else None
    return routes if isinstance(routes, dict) else None
