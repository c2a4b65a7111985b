"""Run an app's components: start, log, probe, restart with backoff, stop — on an instance and on the laptop.

The one supervisor of both sides: the instance agent runs the remote copies with it
(``instance_agent.workload``), the laptop agent the local copies (``agent.local_copies``).

Each component is one process in its own process group (so stopping it stops everything it
started), with the ``cwd`` and base environment its caller gives, its declared environment and ``PORT``;
when the package declares which components need a GPU (``gpu = true``), the others run with
``CUDA_VISIBLE_DEVICES`` empty (they cannot take the memory of the ones that do; ``package.launches`` decides).
Its output goes to a rotating file ``<log_dir>/<name>.log``; the last lines are kept in memory to explain
a crash. The rules of its state are in ``health``; this module only observes and acts.

The declared port is used when it is free; when it is taken, an instance (two fake VMs on one machine)
chooses a free one and its endpoint says so (``port_fallback``); a local copy must listen where its
``local_url`` says, so for it a taken port is a failed start, retried with backoff.

One component can be stopped and started again while the others run (``stop_component`` /
``start_component``): what the hand-off of a local copy to a remote one needs.
"""

from __future__ import annotations

import collections
import logging
import logging.handlers
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from spotleash.log import get_logger
from spotleash.supervisor import health
from spotleash.supervisor.footprint import only_zombies, tree_rss
from spotleash.supervisor.health import Health
from spotleash.wire.events import ComponentReport

log = get_logger(__name__)

TICK_S = 0.25
PROBE_EVERY_STARTING_S = 0.5
PROBE_EVERY_HEALTHY_S = 5.0
PROBE_TIMEOUT_S = 2.0
STOP_GRACE_S = 2.0  # the Compute fake SIGKILLs a VM's group 3 s after its SIGTERM
LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 3
TAIL_LINES = 20
AT_ONCE_S = 2.0  # a process that exits this soon after its start "exits at once": its command is wrong
CUDA_DEVICES_ENV = "CUDA_VISIBLE_DEVICES"


@dataclass(frozen=True)
class Launch:
    """What to run for one component, resolved against an extracted package."""

    name: str
    argv: tuple[str, ...]
    port: int
    health_path: str
    timeout_s: float
    env: Mapping[str, str] = field(default_factory=dict)
    sees_gpus: bool = True  # False: runs with CUDA_VISIBLE_DEVICES="" (``package.launches`` says when)

    def process_env(self, base: Mapping[str, str], port: int) -> dict[str, str]:
        """The component's environment: ``base``, its own ``env``, PORT, its GPUs."""
        env = {**base, **self.env, "PORT": str(port)}
        if not self.sees_gpus:
            env[CUDA_DEVICES_ENV] = ""
        return env


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no obstacle
        try:
            s.bind(("0.0.0.0", port))  # noqa: S104 - the same address a component binds to
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _output_logger(path: Path) -> logging.Logger:
    """A logger of its own (not the agent's JSON log) writing one component's raw output, rotating."""
    logger = logging.Logger(f"component:{path.stem}", logging.INFO)
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS,
                                                   encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger.addHandler(handler)
    return logger


class ComponentRunner:
    """One component: its process, its output, its health. Driven by ``tick`` from one thread; ``halt`` and
    ``resume`` may come from another (the process is only replaced under ``_proc_lock``)."""

    def __init__(
        self,
        launch: Launch,
        *,
        cwd: Path,
        env: Mapping[str, str],
        log_dir: Path,
        endpoint: Callable[[int], str],
        clock: Callable[[], float] = time.monotonic,
        backoff_base_s: float = health.BACKOFF_BASE_S,
        port_fallback: bool = True,
    ) -> None:
        self.launch = launch
        self._backoff_base_s = backoff_base_s
        self._port_fallback = port_fallback
        self._cwd = cwd
        self._base_env = dict(env)
        self._endpoint = endpoint
        self._clock = clock
        self.log_path = log_dir / f"{launch.name}.log"
        self._out = _output_logger(self.log_path)
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._spawned_at = 0.0
        self.port = launch.port
        self.health: Health | None = None
        self.restarts = 0
        self._restart_at: float | None = None
        self._next_probe = 0.0
        self._lock = threading.Lock()  # guards ``health``
        self._proc_lock = threading.Lock()  # guards the process and ``active``: tick vs halt / resume
        self.active = False  # supervised now (started and not halted)

    # ------------------------------------------------------------------ process
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def _cannot_start(self, why: str) -> None:
        self._proc = None
        self._tail.append(why)
        self._out.info("%s", why)
        log.error("component cannot start", component=self.launch.name, reason=why)

    def _spawn(self) -> None:
        self._spawned_at = self._clock()
        if not port_free(self.port):
            if not self._port_fallback:
                self._cannot_start(f"port {self.port} is in use by another process")
                return
            taken, self.port = self.port, free_port()
            log.warning("component port in use; using another", component=self.launch.name, port=taken,
                        chosen=self.port)
        env = self.launch.process_env(self._base_env, self.port)
        self._tail.clear()  # a crash is explained by its own run's output
        self._out.info("--- starting %s (port %d, restart %d)", list(self.launch.argv), self.port, self.restarts)
        try:
            self._proc = subprocess.Popen(  # noqa: S603 - the argv the app declares
                list(self.launch.argv), cwd=self._cwd, env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, process_group=0,
            )
        except OSError as e:  # not found, not executable: a crash at start, as far as anyone can tell
            self._cannot_start(f"command {self.launch.argv[0]!r} cannot run: {e.strerror or e}")
            return
        assert self._proc.stdout is not None
        self._reader = threading.Thread(target=self._pump, args=(self._proc.stdout,),
                                        name=f"out-{self.launch.name}", daemon=True)
        self._reader.start()
        log.info("component started", component=self.launch.name, pid=self._proc.pid, port=self.port,
                 restarts=self.restarts)

    def _pump(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            self._tail.append(line)
            self._out.info("%s", line)
        stream.close()

    def output_tail(self, lines: int = 3) -> str:
        return " | ".join(list(self._tail)[-lines:])

    # ------------------------------------------------------------------ the loop step
    def start(self) -> None:
        now = self._clock()
        with self._proc_lock:
            with self._lock:
                self.health = health.started(self.launch.timeout_s, now)
                self._next_probe = now
            self.restarts = 0
            self._restart_at = None
            self.active = True
            self._spawn()

    def tick(self) -> bool:
        """Observe and act once; True if the reported state changed."""
        if not self.active:
            return False
        assert self.health is not None
        before = self.report()
        now = self._clock()
        h = self.health
        with self._proc_lock:
            if not self.active:  # halted meanwhile: its exit is no crash
                return False
            proc = self._proc
            exited = self._restart_at is None and (proc is None or proc.poll() is not None)
            if exited:
                if self._reader is not None:
                    self._reader.join(timeout=1.0)  # the last lines explain the exit
                code = proc.returncode if proc is not None else 127
                h = health.exited(h, code, self.output_tail())
                self.restarts += 1
                delay = health.restart_delay(self.restarts, base_s=self._backoff_base_s)
                self._restart_at = now + delay
                if proc is None:  # "cannot start" said why, at error level
                    log.info("component to be started again", component=self.launch.name, restarts=self.restarts,
                             pause_s=delay)
                else:
                    at_once = now - self._spawned_at < AT_ONCE_S
                    (log.error if at_once else log.warning)(
                        "component exited at once; restarting" if at_once else "component exited; restarting",
                        component=self.launch.name, command=list(self.launch.argv), returncode=code,
                        restarts=self.restarts, pause_s=delay, reason=h.error)
            elif self._restart_at is not None and now >= self._restart_at:
                self._restart_at = None
                self._spawn()
                self._next_probe = now + PROBE_EVERY_STARTING_S
        if not exited and self._restart_at is None and now >= self._next_probe:
            error = health.probe(self.url, PROBE_TIMEOUT_S)
            now = self._clock()
            h = health.probed(h, error, now)
            if h.state == "healthy" and self.restarts and error is None:
                self.restarts = 0  # a healthy answer resets the backoff
            self._next_probe = now + (PROBE_EVERY_HEALTHY_S if h.state == "healthy"
                                      else PROBE_EVERY_STARTING_S)
        h = health.check_deadline(h, now)
        with self._lock:
            if not self.active:
                return False
            self.health = h
        after = self.report()
        if after != before:
            log.info("component state", component=self.launch.name, state=after.state, endpoint=after.endpoint,
                     gave_up=after.gave_up, reason=after.error)
            return True
        return False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.launch.health_path}"

    def report(self) -> ComponentReport:
        with self._lock:
            h = self.health
        if h is None:
            return ComponentReport(state="starting")
        return ComponentReport(state=h.state, error=h.error, endpoint=self._endpoint(self.port),
                               gave_up=h.gave_up)

    # ------------------------------------------------------------------ stop
    def signal(self, sig: int) -> None:
        proc = self._proc
        if proc is None:
            return
        try:
            os.killpg(proc.pid, sig)  # process_group=0: the leader's pid is the group id
        except (ProcessLookupError, PermissionError):
            pass

    def group_gone(self, timeout_s: float) -> bool:
        """Wait until no process is left in the component's group (zombies reparented to init included)."""
        proc = self._proc
        if proc is None:
            return True
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                os.killpg(proc.pid, 0)
            except (ProcessLookupError, PermissionError):
                return True
            if only_zombies(proc.pid):  # dead, waiting for an init that does not reap (some containers)
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    def reap(self, timeout_s: float) -> bool:
        """Wait for the leader to exit; True if it did."""
        proc = self._proc
        if proc is None:
            return True
        try:
            proc.wait(timeout=max(timeout_s, 0.0))
        except subprocess.TimeoutExpired:
            return False
        return True

    def rss(self) -> int:
        """Bytes resident in the component's process tree now (0 when it runs no process)."""
        proc = self._proc
        return tree_rss(proc.pid) if proc is not None and proc.poll() is None else 0

    def halt(self) -> int:
        """Stop supervising (no restart, no probe) and SIGTERM the group; its RSS just before the signal.
        The caller waits for the group (``finish_stop``)."""
        with self._proc_lock:
            self.active = False
            self._restart_at = None
            freed = self.rss()
            self.signal(signal.SIGTERM)
        return freed

    def finish_stop(self, deadline: float, grace_s: float) -> None:
        """After ``halt``: wait for the leader until ``deadline``, then SIGKILL whatever is left in the group."""
        if not self.reap(deadline - time.monotonic()):
            log.warning("component did not stop in time; killing it", component=self.launch.name, grace_s=grace_s)
        self.signal(signal.SIGKILL)  # whatever else is left in its group
        self.reap(1.0)
        if not self.group_gone(1.0):
            log.warning("component processes outlived SIGKILL", component=self.launch.name)
        if self._reader is not None:
            self._reader.join(timeout=1.0)

    def close(self) -> None:
        for h in self._out.handlers:
            h.close()


class Supervisor:
    """All components of one side, driven by one thread; ``reports()`` is safe from any thread."""

    def __init__(
        self,
        launches: list[Launch],
        *,
        cwd: Path,
        env: Mapping[str, str],
        log_dir: Path,
        endpoint: Callable[[int], str] = lambda port: f"127.0.0.1:{port}",
        on_change: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        backoff_base_s: float = health.BACKOFF_BASE_S,
        port_fallback: bool = True,
    ) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.runners = [ComponentRunner(launch, cwd=cwd, env=env, log_dir=log_dir, endpoint=endpoint,
                                        clock=clock, backoff_base_s=backoff_base_s,
                                        port_fallback=port_fallback)
                        for launch in launches]
        self._on_change = on_change
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def reports(self) -> dict[str, ComponentReport]:
        return {r.launch.name: r.report() for r in self.runners}

    def runner(self, name: str) -> ComponentRunner:
        for r in self.runners:
            if r.launch.name == name:
                return r
        raise KeyError(name)

    def start(self, skip: Collection[str] = ()) -> None:
        """Start every component but those in ``skip`` (``start_component`` starts them later), and the loop."""
        for r in self.runners:
            if r.launch.name not in skip:
                r.start()
        self._thread = threading.Thread(target=self._loop, name="supervisor", daemon=True)
        self._thread.start()
        self._on_change()

    def _loop(self) -> None:
        while not self._stop.is_set():
            changed = False
            for r in self.runners:
                if self._stop.is_set():
                    break
                changed = r.tick() or changed
            if changed:
                self._on_change()
            self._stop.wait(TICK_S)

    # ------------------------------------------------------------------ one component
    def stop_component(self, name: str, grace_s: float = STOP_GRACE_S) -> int:
        """Stop one component (the others keep running): SIGTERM its group, SIGKILL after ``grace_s``. Returns
        the RSS of its process tree just before the stop (bytes; 0 when it ran no process)."""
        r = self.runner(name)
        freed = r.halt()
        r.finish_stop(time.monotonic() + grace_s, grace_s)
        log.info("component stopped", component=name, rss_bytes=freed)
        self._on_change()
        return freed

    def start_component(self, name: str) -> None:
        """Start (again) one component stopped by ``stop_component``; supervised from then on."""
        r = self.runner(name)
        if r.active:
            return
        r.start()
        self._on_change()

    # ------------------------------------------------------------------ all
    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop the loop, then every component: SIGTERM each group, wait, SIGKILL what is left."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=PROBE_TIMEOUT_S + 1.0)
        for r in self.runners:
            r.halt()
        deadline = time.monotonic() + grace_s
        for r in self.runners:
            r.finish_stop(deadline, grace_s)
            r.close()
        log.info("components stopped", components=[r.launch.name for r in self.runners])
