"""Self-destruct watchdog of a VAST.ai box: past its deadline, the instance deletes itself.

``python -m spotleash.instance_agent.watchdog [--deadline ISO]`` (else the ``deadline`` of
``SPOTLEASH_AGENT_CONFIG``). It sleeps until the deadline, checking every few seconds, then calls
``DELETE $VAST_URL/api/v0/instances/$CONTAINER_ID/`` with ``Authorization: Bearer
$CONTAINER_API_KEY`` (both set by VAST inside every instance), retrying with backoff until the
answer is 200 or ``no_such_instance``. It needs little of spotleash (the config model and the log
format; HTTP with the standard library): it is the last line of defence when every other part is
gone, and the box's onstart falls back to a bash loop when even that cannot be imported.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from spotleash.clock import utcnow
from spotleash.log import configure, get_logger
from spotleash.wire.agent_config import CONFIG_ENV, AgentConfig

log = get_logger(__name__)

DEFAULT_URL = "https://console.vast.ai"


def parse_deadline(text: str) -> datetime:
    d = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if d.tzinfo is None:
        raise ValueError(f"deadline {text!r} has no time zone")
    return d.astimezone(UTC)


def deadline_from(arg: str | None, env: Mapping[str, str]) -> datetime | None:
    if arg:
        return parse_deadline(arg)
    raw = env.get(CONFIG_ENV)
    if not raw:
        return None
    deadline = AgentConfig.parse(raw).deadline
    return deadline.astimezone(UTC) if deadline else None


def destroy_once(url: str, container_id: str, key: str, *, timeout_s: float = 15.0) -> tuple[bool, str]:
    """(done, detail): done when VAST says 200 or that the instance no longer exists."""
    req = urllib.request.Request(
        f"{url.rstrip('/')}/api/v0/instances/{container_id}/", data=b"{}", method="DELETE",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json",
                 "User-Agent": "spotleash-watchdog"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:  # noqa: S310 - URL from VAST_URL / default
            return r.status == 200, f"HTTP {r.status}"
    except urllib.error.HTTPError as e:
        body = e.read(2000).decode("utf-8", errors="replace")
        if "no_such_instance" in body:
            return True, "no_such_instance"
        return False, f"HTTP {e.code} {body[:200]}"
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        return False, f"{type(e).__name__}: {e}"


def run(
    deadline: datetime,
    *,
    url: str,
    container_id: str,
    key: str,
    check_every_s: float = 5.0,
    max_backoff_s: float = 60.0,
    now: Callable[[], datetime] = utcnow,
    sleep: Callable[[float], None] = time.sleep,
    max_attempts: int | None = None,
) -> bool:
    """Wait for ``deadline``, then destroy; True once destroyed (False only if ``max_attempts`` ran out)."""
    log.info("watchdog armed", deadline=deadline.isoformat(), container_id=container_id)
    while (left := (deadline - now()).total_seconds()) > 0:
        sleep(min(check_every_s, left))
    log.warning("deadline passed; destroying this instance", container_id=container_id,
                reason="deadline", deadline=deadline.isoformat())
    pause = 1.0
    attempt = 0
    while True:
        attempt += 1
        done, detail = destroy_once(url, container_id, key)
        if done:
            log.warning("instance destroyed by its watchdog", container_id=container_id, detail=detail,
                        attempts=attempt)
            return True
        log.error("self-destroy failed; retrying", container_id=container_id, detail=detail, attempt=attempt,
                  pause_s=pause)
        if max_attempts is not None and attempt >= max_attempts:
            return False
        sleep(pause)
        pause = min(pause * 2, max_backoff_s)


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    p = argparse.ArgumentParser(prog="python -m spotleash.instance_agent.watchdog", description=__doc__)
    p.add_argument("--deadline", help="ISO 8601 time with zone (default: deadline of $SPOTLEASH_AGENT_CONFIG)")
    p.add_argument("--check-every", type=float, default=5.0, help="seconds between two looks at the clock")
    p.add_argument("--url", default=env.get("VAST_URL") or DEFAULT_URL, help="VAST API base URL ($VAST_URL)")
    args = p.parse_args(argv)
    configure("INFO")
    try:
        deadline = deadline_from(args.deadline, env)
    except ValueError as e:  # pydantic's ValidationError included
        log.error("watchdog cannot read its deadline", reason=str(e))
        return 2
    container_id, key = env.get("CONTAINER_ID", ""), env.get("CONTAINER_API_KEY", "")
    missing = [n for n, v in (("deadline", deadline), ("CONTAINER_ID", container_id),
                              ("CONTAINER_API_KEY", key)) if not v]
    if missing or deadline is None:
        log.error("watchdog cannot run: missing " + ", ".join(missing))
        return 2
    run(deadline, url=args.url, container_id=container_id, key=key, check_every_s=args.check_every)
    return 0


if __name__ == "__main__":
    sys.exit(main())
