"""Health of one supervised component: the pure state rules, the HTTP probe, the restart backoff.

A component is ``starting`` until its health path first answers 2xx, then ``healthy``; it is
``failing`` once its process exits or (after it was healthy) ``FAIL_AFTER`` probes in a row fail.
A component that stays unhealthy for its ``timeout_s`` — from its start, or from the moment it
stopped being healthy — *gives up*: the instance reports it and the control plane deletes the box.
Giving up is final; a late recovery does not undo a report the control plane may already have
acted on.

The rules are pure functions of (health, observation, now); ``now`` is a monotonic clock.
"""

from __future__ import annotations

import dataclasses
import http.client
from dataclasses import dataclass
from urllib.parse import urlsplit

from spotleash.wire.events import ComponentState

FAIL_AFTER = 3  # failed probes in a row that turn a healthy component failing
ERROR_MAX = 300  # characters of an error kept (and sent in a heartbeat)
BODY_MAX = 4096  # bytes of a failed probe's answer read (its first 100 characters are kept)
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 30.0


@dataclass(frozen=True)
class Health:
    timeout_s: float
    unhealthy_since: float  # start, or the last moment it was seen healthy
    state: ComponentState = "starting"
    error: str | None = None
    failed_probes: int = 0
    gave_up: bool = False


def short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= ERROR_MAX else text[: ERROR_MAX - 1] + "…"


def started(timeout_s: float, now: float) -> Health:
    return Health(timeout_s=timeout_s, unhealthy_since=now)


def probed(h: Health, error: str | None, now: float) -> Health:
    """One probe's outcome: ``error`` None means the health path answered 2xx."""
    if h.gave_up:
        return h
    if error is None:
        return dataclasses.replace(h, state="healthy", error=None, failed_probes=0,
                                   unhealthy_since=now)
    if h.state == "healthy":
        failed = h.failed_probes + 1
        if failed < FAIL_AFTER:
            return dataclasses.replace(h, failed_probes=failed)
        return dataclasses.replace(h, state="failing", error=short(error), failed_probes=failed)
    # starting or failing: keep the state, remember what went wrong last
    return dataclasses.replace(h, error=short(error), failed_probes=h.failed_probes + 1)


def exited(h: Health, returncode: int, output_tail: str) -> Health:
    """The component's process ended (any exit is a failure: components are long-running servers)."""
    if h.gave_up:
        return h
    tail = f": {output_tail}" if output_tail.strip() else ""
    return dataclasses.replace(h, state="failing", error=short(f"exited with code {returncode}{tail}"))


def check_deadline(h: Health, now: float) -> Health:
    """Give up on a component unhealthy for longer than its timeout."""
    if h.gave_up or h.state == "healthy" or now - h.unhealthy_since < h.timeout_s:
        return h
    last = h.error or "no answer from its health path"
    return dataclasses.replace(h, state="failing", gave_up=True,
                               error=short(f"not healthy within {h.timeout_s:g} s: {last}"))


def restart_delay(restarts: int, base_s: float = BACKOFF_BASE_S, cap_s: float = BACKOFF_CAP_S) -> float:
    """Pause before restart number ``restarts`` (1, 2, 3 …): base, 2·base, 4·base … capped."""
    return float(min(base_s * 2 ** max(restarts - 1, 0), cap_s))


def probe(url: str, timeout_s: float) -> str | None:
    """GET ``url`` (``http://host:port/path``): None when it answers 2xx, else what went wrong (one line).

    The standard library's client, a connection per probe (one loopback GET every few seconds): httpx here
    cost the laptop agent ~9 MB of resident memory (it and what it imports), a tenth of its budget."""
    parts = urlsplit(url)
    path = parts.path or "/"
    if parts.query:
        path += f"?{parts.query}"
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout_s)
    try:
        conn.request("GET", path, headers={"User-Agent": "spotleash-supervisor"})
        r = conn.getresponse()
        status, body = r.status, r.read(BODY_MAX)
    except TimeoutError:
        return f"health check timed out after {timeout_s:g} s ({url})"
    except (OSError, http.client.HTTPException) as e:
        return f"health check failed: {type(e).__name__}: {e} ({url})"
    finally:
        conn.close()
    if 200 <= status < 300:
        return None
    return f"health check answered HTTP {status} ({url}): {body.decode('utf-8', errors='replace')[:100]}"
