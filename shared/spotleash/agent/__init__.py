"""The local agent: watches RAM, asks for capacity, renews its lease, and releases on any exit.

``agent_main(settings, lease_id, trace, trace_speed)`` is what ``spotleash agent`` and
``python -m spotleash.agent`` run. Parts: :mod:`.trigger` (pure decisions), :mod:`.ram` (sources),
:mod:`.publisher` (Pub/Sub), :mod:`.lock` (one agent per lease), :mod:`.runner` (the loop),
:mod:`.shutdown` (the release that always happens), :mod:`.local_copies` (the components run on this machine,
stopped after the router at exit).
"""

from __future__ import annotations

import getpass
import logging
import os
import re
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from spotleash.errors import ConfigError, ExitCode
from spotleash.wire.ids import ID_PATTERN

if TYPE_CHECKING:
    from spotleash.config import Settings

__all__ = ["agent_main", "default_lease_id", "label_safe"]


def label_safe(text: str, fallback: str = "agent") -> str:
    """``text`` turned into ``[a-z0-9][a-z0-9_-]{0,62}`` (a GCE label value and an event id)."""
    s = re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-_")
    s = re.sub(r"-{2,}", "-", s)[:63].rstrip("-_")
    return s or fallback


def default_lease_id() -> str:
    """This machine's lease: ``<user>-<host>``, label-safe."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    host = socket.gethostname().split(".")[0]
    return label_safe(f"{user}-{host}")


def agent_main(settings: Settings, lease_id: str | None, trace: Path | None, trace_speed: float = 1.0,
               *, run_for_s: float | None = None) -> int:
    """Run the agent in this process (installs signal handlers); the exit code.

    0: stopped and the release was confirmed; 1: the release was not confirmed (lease expiry
    will clean up); 2: bad configuration or the lease is held by another live agent.
    """
    from spotleash import log as slog
    from spotleash.adapters.pubsub import Publisher
    from spotleash.agent.local_copies import LocalCopies, start_local_copies
    from spotleash.agent.lock import LeaseLock, LockHeld
    from spotleash.agent.ram import PsutilRam, RamSource, TraceRam
    from spotleash.agent.routing import AgentRouter, app_of_settings, start_router
    from spotleash.agent.runner import run_agent

    slog.configure(settings.log_level)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per health probe of each local copy is noise
    log = slog.get_logger(__name__)
    lease = lease_id or default_lease_id()
    try:
        if not re.fullmatch(ID_PATTERN.strip("^$"), lease):
            raise ConfigError(f"lease id {lease!r} must match {ID_PATTERN} (lowercase letters, digits, - and _)")
        ram: RamSource = TraceRam.from_csv(trace, speed=trace_speed) if trace else PsutilRam()
        lock = LeaseLock(settings.state_dir, lease).acquire()
    except (ConfigError, LockHeld) as e:
        log.error(str(e), lease_id=lease)
        return ExitCode.USAGE
    router: AgentRouter | None = None
    local: LocalCopies | None = None
    publisher = Publisher(settings)
    try:
        app = app_of_settings()
        local = start_local_copies(settings, lease, app)  # before the router: it routes to them
        router = start_router(settings, lease, app.spec if app is not None else None, publisher=publisher)
    except ConfigError as e:
        log.error(str(e), lease_id=lease)
        if local is not None:
            local.close()
        lock.release()
        return ExitCode.USAGE
    try:
        log.info("agent starting", lease_id=lease, pid=os.getpid(), project=settings.project,
                 ram_source=f"trace {trace} x{trace_speed}" if trace else "psutil",
                 pubsub_emulator=os.environ.get("PUBSUB_EMULATOR_HOST"))
        return run_agent(settings, lease_id=lease, ram_source=ram, publisher=publisher,
                         holder=f"{socket.gethostname()} pid {os.getpid()}", run_for_s=run_for_s,
                         router=router)
    finally:
        if router is not None:
            router.stop()  # the shutdown stopped it already; a crash before the loop did not
        if local is not None:
            local.close()  # after the router: no request is sent to them any more
        lock.release()
