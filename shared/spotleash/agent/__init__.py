"""The local agent: watches memory, moves components off the machine, renews its lease, releases on any exit.

``agent_main(settings, lease_id, trace, trace_speed)`` is what ``spotleash agent`` and
``python -m spotleash.agent`` run. Parts: :mod:`.memory` (where memory is read: the cgroup, the host,
PSI, macOS), :mod:`.trigger` and ``decide.placement`` (pure decisions: when, and which components),
``supervisor.footprint`` (a local copy's measured size), :mod:`.ram` (a recorded trace instead of the machine),
``adapters.pubsub`` (Pub/Sub), :mod:`.lock` (one agent per lease), :mod:`.runner` (the loop),
:mod:`.shutdown` (the release that always happens), :mod:`.local_copies` (the components run on this machine,
stopped after the router at exit), :mod:`.handoff` (stops a local copy once its remote copy serves, brings the
work home when memory allows; its state is what ``status``, ``/metrics`` and the dashboard show).
"""

from __future__ import annotations

import getpass
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
               *, run_for_s: float | None = None, trace_limit_gb: float | None = None) -> int:
    """Run the agent in this process (installs signal handlers); the exit code.

    0: stopped and the release was confirmed; 1: the release was not confirmed (lease expiry
    will clean up); 2: bad configuration or the lease is held by another live agent.
    """
    from spotleash import log as slog
    from spotleash.adapters.grpc_waits import slower_idle_waits
    from spotleash.adapters.pubsub import Publisher
    from spotleash.agent.handoff import HandOff
    from spotleash.agent.local_copies import LocalCopies, start_local_copies
    from spotleash.agent.lock import LeaseLock, LockHeld
    from spotleash.agent.memory import SOURCE_NAMES, MemorySource, MemorySourceError, build_source
    from spotleash.agent.ram import TRACE_LIMIT_GB, TraceRam
    from spotleash.agent.routing import AgentRouter, app_of_settings, start_router
    from spotleash.agent.runner import configured_components, run_agent
    from spotleash.agent.shutdown import DRAIN_SHARE
    from spotleash.decide.handoff import HomeRule

    slog.configure(settings.log_level)
    slower_idle_waits()  # the router's Firestore listeners: 1 idle wake-up a second each, not 10
    log = slog.get_logger(__name__)
    lease = lease_id or default_lease_id()
    try:
        if not re.fullmatch(ID_PATTERN.strip("^$"), lease):
            raise ConfigError(f"lease id {lease!r} must match {ID_PATTERN} (lowercase letters, digits, - and _)")
        memory: MemorySource
        if trace:
            memory = TraceRam.from_csv(trace, speed=trace_speed, limit_gb=trace_limit_gb or TRACE_LIMIT_GB)
        else:
            try:
                memory = build_source(settings.memory_source)
            except MemorySourceError as e:
                raise ConfigError(f"SPOTLEASH_MEMORY_SOURCE={settings.memory_source}: {e}; choose another of "
                                  f"{', '.join(SOURCE_NAMES)} or replay a trace (--trace)") from e
        lock = LeaseLock(settings.state_dir, lease).acquire()
    except (ConfigError, LockHeld) as e:
        log.error(str(e), lease_id=lease)
        return ExitCode.USAGE
    router: AgentRouter | None = None
    local: LocalCopies | None = None
    handoff: HandOff | None = None
    publisher = Publisher(settings)
    try:
        app = app_of_settings()
        local = start_local_copies(settings, lease, app, memory.read())  # before the router: it routes to them
        router = start_router(settings, lease, app.spec if app is not None else None, publisher=publisher)
        handoff = HandOff(local, router, components=configured_components(settings),
                          offload=settings.component_offload, threshold=settings.ram_threshold,
                          home=HomeRule(settings.ram_release_below, settings.release_hold_s),
                          drain_s=max(settings.shutdown_budget_s * DRAIN_SHARE, 0.5),
                          withheld=local.withheld if local is not None else ())
        if router is not None:
            router.service.set_component_status(handoff.snapshot)
        handoff.start()
    except ConfigError as e:
        log.error(str(e), lease_id=lease)
        if local is not None:
            local.close()
        lock.release()
        return ExitCode.USAGE
    try:
        log.info("agent starting", lease_id=lease, pid=os.getpid(), project=settings.project,
                 memory_source=f"trace {trace} x{trace_speed}" if trace else memory.read().source,
                 pubsub_emulator=os.environ.get("PUBSUB_EMULATOR_HOST"))
        return run_agent(settings, lease_id=lease, memory=memory, publisher=publisher,
                         holder=f"{socket.gethostname()} pid {os.getpid()}", run_for_s=run_for_s,
                         router=router, footprints=handoff.footprints if local is not None else None,
                         handoff=handoff, withheld=local.withheld if local is not None else ())
    finally:
        if handoff is not None:
            handoff.close()  # run_agent closed it already; a crash before the loop did not
        if router is not None:
            router.stop()  # the shutdown stopped it already; a crash before the loop did not
        if local is not None:
            local.close()  # after the router: no request is sent to them any more
        lock.release()
