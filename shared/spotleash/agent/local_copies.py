"""The local copies: the agent runs each component of ``spotleash.toml`` on this machine, with the supervisor
an instance uses (``spotleash.supervisor``), and never lets one outlive it.

What runs: every component named in the settings whose ``local_url`` names this machine and whose
``local_copy`` is ``"agent"`` (the default) — its ``command`` and ``env`` as an instance runs them, with ``cwd``
the app tree, ``PORT`` the ``local_url``'s port and ``HOST`` its host (a local copy must answer where the router
looks for it, so a taken port is a failed start, retried with backoff, never another port). ``local_copy =
"user"``: the user runs it, the agent only routes to it. No ``local_url``: no local copy.

Each copy's output: ``<state_dir>/local/<lease>/<component>.log`` (rotated, 10 MB × 3), what ``spotleash logs``
shows. Every copy's processes carry ``SPOTLEASH_LOCAL_COPY_OF=<lease>@<state_dir>`` in their environment: after a
``kill -9`` of the agent, the next start finds its leftovers by that marker (a reused pid never carries it, and
the lease lock means no other live agent of this lease and state dir does) and ends them before starting its
own. Ended, not adopted: their output went to a pipe of the dead agent (their next write fails), their exit
cannot be waited for, and the configuration may have changed since.

For the hand-off: ``LocalCopies.stop(component)`` returns the bytes its process tree held just before the stop
(the router drains it first), ``LocalCopies.start(component)`` waits until it answers its health path again.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import psutil

from spotleash.errors import ConfigError, SpotleashError
from spotleash.instance_agent.environment import MARKER_ENV, SECRET_ENV
from spotleash.log import get_logger
from spotleash.polling import WaitTimeout, wait_until
from spotleash.supervisor import Launch, Supervisor
from spotleash.supervisor.footprint import Footprint, footprint
from spotleash.supervisor.health import BACKOFF_BASE_S
from spotleash.supervisor.marked import end_marked, find_marked
from spotleash.wire.events import ComponentReport
from spotleash.wire.package import AppSpec

if TYPE_CHECKING:
    from spotleash.agent.memory.reading import MemoryReading
    from spotleash.config import Settings
    from spotleash.packaging.appspec import LoadedApp

log = get_logger(__name__)

LOCAL_MARKER_ENV = "SPOTLEASH_LOCAL_COPY_OF"  # <lease>@<state dir>: every process of a local copy carries it
COMPONENT_ENV = "SPOTLEASH_LOCAL_COMPONENT"  # which component a marked process belongs to (for the log)
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
DEFAULT_RAM_GB = 4.0  # a component without a declared ram_gb (agent.runner's default too)


class LocalCopyError(SpotleashError):
    """A local copy that cannot be started or stopped as asked (unknown, not run by the agent, never healthy)."""


# ------------------------------------------------------------------ what runs (pure)


@dataclass(frozen=True)
class LocalPlan:
    launches: tuple[Launch, ...]  # the copies the agent runs
    by_user: tuple[str, ...] = ()  # local_copy = "user": the user runs them at local_url
    none: Mapping[str, str] = field(default_factory=dict)  # component → why it has no local copy here


def local_plan(app: AppSpec, names: Sequence[str], artifact_env: Mapping[str, str] | None = None) -> LocalPlan:
    """Which of ``names`` (the agent's components) the agent runs locally, and how. ``artifact_env``: each
    artifact's ``SPOTLEASH_ARTIFACT_<NAME>`` → the user's own path (``LoadedApp.artifact_env``): a local copy
    reads the weights where they are, an instance's copy where it fetched them."""
    launches: list[Launch] = []
    by_user: list[str] = []
    none: dict[str, str] = {}
    for name in names:
        spec = next((c for c in app.components if c.name == name), None)
        if spec is None:
            none[name] = "not a component of [app]"
            continue
        if spec.local_url is None or spec.local_port is None:
            none[name] = "no local_url"
            continue
        if spec.local_copy == "user":
            by_user.append(name)
            continue
        host = urlsplit(spec.local_url).hostname or ""
        if host not in LOOPBACK:
            none[name] = f"local_url names another machine ({host}); set local_copy = \"user\" if you run it there"
            continue
        launches.append(Launch(name=name, argv=tuple(spec.command), port=spec.local_port, health_path=spec.health_path,
                               timeout_s=spec.start_timeout_s,
                               env={"HOST": "127.0.0.1" if host == "localhost" else host.strip("[]"),
                                    **(artifact_env or {}), **spec.env, COMPONENT_ENV: name}))
    return LocalPlan(tuple(launches), tuple(by_user), none)


def local_env(base: Mapping[str, str], marker: str, secrets: frozenset[str]) -> dict[str, str]:
    """The environment every local copy starts from: the agent's, minus spotleash's secrets and an instance's
    marker (a local copy is no instance's component), plus its own marker."""
    env = {k: v for k, v in base.items() if k not in secrets and k not in SECRET_ENV and k != MARKER_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    env[LOCAL_MARKER_ENV] = marker
    return env


def marker_of(lease_id: str, state_dir: Path) -> str:
    return f"{lease_id}@{state_dir.resolve()}"


def log_dir_of(state_dir: Path, lease_id: str) -> Path:
    """Where the local copies of ``lease_id`` write their output (one ``<component>.log`` each)."""
    return Path(state_dir) / "local" / lease_id


# ------------------------------------------------------------------ running them


@dataclass(frozen=True)
class Leftover:
    pid: int
    component: str | None


def end_leftovers(marker: str, grace_s: float = 2.0) -> list[Leftover]:
    """End every process a previous agent of this lease and state dir left running; what was found."""
    names = {p.pid: _component_of(p) for p in find_marked(LOCAL_MARKER_ENV, marker)}
    return [Leftover(p.pid, names.get(p.pid)) for p in end_marked(LOCAL_MARKER_ENV, marker, grace_s=grace_s)]


def _component_of(p: psutil.Process) -> str | None:
    try:
        return p.environ().get(COMPONENT_ENV)
    except psutil.Error:
        return None  # ended meanwhile: the name is only for the log


class LocalCopies:
    """The agent's local copies: ``start_all()`` once (after ending a previous agent's leftovers), ``close()`` at
    exit; ``stop(name)`` / ``start(name)`` for the hand-off in between. Safe from any thread."""

    def __init__(self, plan: LocalPlan, *, app_root: Path, lease_id: str, state_dir: Path,
                 env: Mapping[str, str] | None = None, secrets: frozenset[str] = frozenset(),
                 backoff_base_s: float = BACKOFF_BASE_S, on_change: Callable[[], None] = lambda: None) -> None:
        if plan.launches and not app_root.is_dir():
            raise ConfigError(f"app.dir: {app_root} is not a directory, so the local copies of "
                              f"{', '.join(launch.name for launch in plan.launches)} cannot start there")
        self.plan = plan
        self.lease_id = lease_id
        self.marker = marker_of(lease_id, state_dir)
        self.log_dir = log_dir_of(state_dir, lease_id)
        self.supervisor = Supervisor(
            list(plan.launches), cwd=app_root, log_dir=self.log_dir, port_fallback=False, on_change=on_change,
            env=local_env(os.environ if env is None else env, self.marker, secrets), backoff_base_s=backoff_base_s)
        self.leftovers: list[Leftover] = []
        self.withheld: tuple[str, ...] = ()  # not started: memory was past the limit at start (start_local_copies)

    @property
    def names(self) -> list[str]:
        return [launch.name for launch in self.plan.launches]

    def start_all(self, skip: Sequence[str] = ()) -> None:
        """End what a killed agent left behind, then start every copy but those in ``skip`` (memory past the
        limit at start: they wait for their remote copies) — a copy that cannot start is logged with its name
        and retried with backoff; the others run."""
        self.leftovers = end_leftovers(self.marker)
        if self.leftovers:
            log.warning("ended local copies a previous agent left running", lease_id=self.lease_id,
                        pids=[lf.pid for lf in self.leftovers],
                        components=sorted({lf.component for lf in self.leftovers if lf.component}))
        for name, why in self.plan.none.items():
            log.info("no local copy", component=name, reason=why)
        if self.plan.by_user:
            log.info("local copies run by the user (local_copy = \"user\")", components=list(self.plan.by_user))
        if not self.plan.launches:
            return
        self.supervisor.start(skip=skip)
        log.info("local copies starting", lease_id=self.lease_id, components=[n for n in self.names if n not in skip],
                 withheld=list(skip), logs=str(self.log_dir))

    def reports(self) -> dict[str, ComponentReport]:
        return self.supervisor.reports()

    def _check(self, name: str) -> None:
        if name not in self.names:
            raise LocalCopyError(f"the agent runs no local copy of {name!r} (it runs: {', '.join(self.names) or 'none'})")

    def pid(self, name: str) -> int | None:
        """The pid of ``name``'s running local copy (the leader of its process group); None when it runs none."""
        self._check(name)
        runner = self.supervisor.runner(name)
        return runner.pid if runner.active else None

    def footprint(self, name: str) -> Footprint | None:
        """What ``name``'s local copy holds now (its process tree); None when it runs none."""
        pid = self.pid(name)
        return footprint(pid) if pid is not None else None

    def footprints(self) -> dict[str, int]:
        """Bytes each running local copy would free if stopped (``Footprint.freeable_bytes``): placement's input."""
        out: dict[str, int] = {}
        for name in self.names:
            fp = self.footprint(name)
            if fp is not None:
                out[name] = fp.freeable_bytes
        return out

    def stop(self, name: str) -> int:
        """Stop one local copy (its process group: SIGTERM, SIGKILL after a grace); the bytes its process tree
        held just before (RSS). Draining its requests first is the router's job."""
        self._check(name)
        return self.supervisor.stop_component(name)

    def start(self, name: str, timeout_s: float | None = None) -> ComponentReport:
        """Start one stopped local copy and wait until it answers its health path (its ``start_timeout_s`` by
        default); LocalCopyError naming why when it does not."""
        self._check(name)
        runner = self.supervisor.runner(name)
        self.supervisor.start_component(name)
        limit = runner.launch.timeout_s if timeout_s is None else timeout_s

        def healthy() -> ComponentReport | None:
            r = runner.report()
            if r.gave_up:
                raise LocalCopyError(f"the local copy of {name} did not get healthy: {r.error}")
            return r if r.state == "healthy" else None

        try:
            return wait_until(healthy, timeout_s=limit, interval_s=0.1, what=f"the local copy of {name}")
        except WaitTimeout as e:
            raise LocalCopyError(f"the local copy of {name} is not healthy after {limit:g} s: "
                                 f"{runner.report().error or 'no answer from its health path'}") from e

    def close(self) -> None:
        """Stop every local copy (the agent's exit: after the router stopped sending them requests)."""
        self.supervisor.stop()


def start_local_copies(settings: Settings, lease_id: str, app: LoadedApp | None,
                       reading: MemoryReading | None = None) -> LocalCopies | None:
    """Start the local copies the app asks the agent to run (None when there is no ``[app]``). With a memory
    ``reading``, only those that fit (``decide.handoff.fits_at_start``, by their declared ``ram_gb``): the others
    are ``withheld`` and wait for their remote copies (memory already past the limit at start: move first)."""
    if app is None:
        return None
    from spotleash.config import secret_env_vars
    from spotleash.decide.handoff import fits_at_start

    copies = LocalCopies(local_plan(app.spec, list(settings.components), app.artifact_env()), app_root=app.root, lease_id=lease_id,
                         state_dir=settings.state_dir, secrets=secret_env_vars())
    if reading is not None:
        names = copies.names
        sizes = [round(settings.component_ram_gb.get(n, DEFAULT_RAM_GB) * 2**30) for n in names]
        _, withheld = fits_at_start(names, sizes, available=reading.available_bytes, limit=reading.limit_bytes,
                                    threshold=settings.ram_threshold)
        copies.withheld = tuple(withheld)
        if withheld:
            log.warning("memory is past the limit at start: these local copies are not started and wait for their "
                        "remote copies", components=withheld, available_mb=round(reading.available_bytes / 2**20),
                        limit_mb=round(reading.limit_bytes / 2**20), threshold=settings.ram_threshold)
    copies.start_all(skip=copies.withheld)
    return copies
