"""Process-group helpers for the local stack.

Every process the stack starts runs in its own session (``start_new_session=True``), so its
process-group id equals its pid and the whole tree under it (the ``gcloud`` wrapper *and* its Java
child, functions-framework and its workers) can be stopped with one ``killpg``. A record of what
was started (:meth:`ManagedProcess.to_record`) is enough to stop it later from another process,
and the record carries when the leader started (``started``: seconds after boot) so a recycled pid is never
killed by mistake.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from spotleash.errors import SpotleashError
from spotleash.log import get_logger
from spotleash.polling import WaitTimeout, wait_until
from spotleash.signal_event import SignalEvent
from spotleash.supervisor.marked import (  # find_marked: the fakes and tests use it from here
    end_marked,
    find_marked,
    wait_gone,
)
from spotleash.supervisor.started import started

log = get_logger("spotleash.local.procs")

LOOPBACK = "127.0.0.1"


class StackError(SpotleashError):
    """The local stack could not be started, reached or stopped; the message says what and why."""


class StopSignal:
    """A fake's main thread waits here for SIGTERM or SIGINT (install it before starting the servers).

    The handler sets a ``SignalEvent``, which takes no lock: with a ``threading.Event`` two signals in a row
    deadlocked the handler on the event's own lock (CI: the compute fake ignored SIGTERM until SIGKILLed, its
    thread dump showed handler → ``Event.set`` → handler → ``Event.set``). The wait is sliced: a signal the kernel
    hands to another thread runs its Python handler only when the main thread next runs bytecode. SIGUSR1
    writes every thread's stack to stderr, the part's log: ``stop_all`` sends it before it SIGKILLs a fake that
    ignored SIGTERM, so the log says where it hung."""

    def __init__(self) -> None:
        self._done = SignalEvent()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._done.set())
        faulthandler.register(signal.SIGUSR1, all_threads=True)

    def wait(self) -> None:
        while not self._done.wait(0.5):
            pass


class MissingDependency(StackError):
    """A program the local stack needs is not installed; the message says what to install."""


LOWEST_FREE_PORT = 20000


def ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux: ``ip_local_port_range``; 32768 elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_cursor: list[int] = []  # the offset in the range ``free_port`` tries next: a random start, then upward
_cursor_lock = threading.Lock()


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free on ``host`` right now, below the kernel's ephemeral range. A port the kernel handed
    out (``bind(0)``) is one it hands out again: between this call and the server's bind, an emulator binding
    port 0 or any outgoing connection could take it, and once did (the Firestore emulator's second port took a
    function's port; the function never bound it, and its readiness check was answered by the emulator).

    Successive calls walk the range upward from a random start, so a process never hands out the same port twice
    before it has gone round the range: a stack picks ~15 ports before it starts anything, and picked at random
    two of them were the same about once in 120 stack starts (CI gave the billing fake and the Firestore emulator
    both 29943). Two processes start far apart and would have to pass the same port within the seconds before
    its bind."""
    low = ephemeral_low()
    span = low - LOWEST_FREE_PORT
    if span <= 1000:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            return int(s.getsockname()[1])
    with _cursor_lock:
        if not _cursor:
            _cursor.append(random.randrange(span))
        for _ in range(span):
            port = LOWEST_FREE_PORT + _cursor[0]
            _cursor[0] = (_cursor[0] + 1) % span
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind((host, port))
                except OSError:
                    continue
                return port
    raise StackError(f"no free TCP port on {host} between {LOWEST_FREE_PORT} and {low}")


def port_open(port: int, host: str = LOOPBACK, timeout: float = 0.2) -> bool:
    """True if something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port_closed(port: int, *, timeout: float = 10.0, host: str = LOOPBACK) -> bool:
    """True once nothing accepts on ``host:port``; False if something still does after ``timeout``."""
    try:
        return wait_until(lambda: not port_open(port, host), timeout_s=timeout, interval_s=0.1,
                          what=f"port {port} to close")
    except WaitTimeout:
        return False


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-limit:].decode("utf-8", errors="replace")


@dataclass
class ManagedProcess:
    """A process (and its whole process group) started by the local stack."""

    name: str
    pid: int
    pgid: int
    started: float  # seconds after boot (``started()``)
    port: int | None
    log_path: Path
    argv: list[str] = field(default_factory=list)
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    # ---------------------------------------------------------------- records
    def to_record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pid": self.pid,
            "pgid": self.pgid,
            "started": self.started,
            "port": self.port,
            "log_path": str(self.log_path),
            "argv": self.argv,
        }

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> ManagedProcess:
        return cls(
            name=str(rec["name"]),
            pid=int(rec["pid"]),
            pgid=int(rec["pgid"]),
            started=float(rec.get("started", -1.0)),  # a record of an older stack has none: its pid is trusted
            port=None if rec.get("port") is None else int(rec["port"]),
            log_path=Path(rec.get("log_path", "")),
            argv=list(rec.get("argv", [])),
        )

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT`` (what ``*_EMULATOR_HOST`` variables want)."""
        if self.port is None:
            raise StackError(f"{self.name} has no port")
        return f"{LOOPBACK}:{self.port}"

    # ---------------------------------------------------------------- state
    def _leader(self) -> psutil.Process | None:
        """The leader process if it is still the one we started (same pid *and* start)."""
        try:
            p = psutil.Process(self.pid)
            if not self._same_start(self.pid) or p.status() == psutil.STATUS_ZOMBIE:
                return None
            return p
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None

    def _same_start(self, pid: int) -> bool:
        return self.started < 0 or abs(started(pid) - self.started) <= 0.05

    def members(self) -> list[psutil.Process]:
        """Every live process of our group (plus the leader's descendants, wherever they moved).

        A group whose id is held by a *different* leader (pid reused since) is not ours: empty list.
        """
        found: dict[int, psutil.Process] = {}
        leader = self._leader()
        if leader is None:
            try:
                other = psutil.Process(self.pgid)
                if other.status() != psutil.STATUS_ZOMBIE and not self._same_start(self.pgid):
                    return []  # the id now belongs to someone else
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        else:
            found[leader.pid] = leader
            with contextlib.suppress(psutil.Error):
                for c in leader.children(recursive=True):
                    found[c.pid] = c
        for p in psutil.process_iter():
            try:
                if p.pid in found or os.getpgid(p.pid) != self.pgid:
                    continue
                # members of our group were born after the leader
                if started(p.pid) + 0.05 >= self.started and p.status() != psutil.STATUS_ZOMBIE:
                    found[p.pid] = p
            except (psutil.Error, ProcessLookupError, PermissionError):
                continue
        return list(found.values())

    def alive(self) -> bool:
        return bool(self.members())

    def exited_early(self) -> int | None:
        """The leader's exit code if it already exited (only known for processes we spawned)."""
        if self.popen is not None:
            return self.popen.poll()
        return None if self._leader() is not None else -1

    # ---------------------------------------------------------------- stop
    def stop(self, *, timeout: float = 10.0) -> bool:
        """SIGTERM the whole group, then SIGKILL what is left; wait for the port to close.

        Returns True if anything of ours was running.
        """
        return bool(stop_all([self], timeout=timeout))

    def _signal(self, procs: Sequence[psutil.Process], sig: signal.Signals) -> None:
        if self._leader() is not None or any(_pgid(p) == self.pgid for p in procs):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pgid, sig)
        for p in procs:  # descendants that left the group, and belt and braces
            with contextlib.suppress(psutil.Error):
                p.send_signal(sig)


def _commands(procs: Sequence[psutil.Process]) -> list[str]:
    """What each process runs (its command line, cut short): which one lingered past its grace."""
    out = []
    for p in procs:
        try:
            out.append(" ".join(p.cmdline())[:200])
        except psutil.Error:
            out.append(f"pid {p.pid} (gone)")
    return out


def stop_all(procs: Sequence[ManagedProcess], *, timeout: float = 10.0, term_grace: float = 5.0) -> list[str]:
    """Stop several process groups at once: SIGTERM all, wait up to ``term_grace``, SIGKILL the rest,
    wait for their ports to close.

    Returns the names of those that were running. StackError if something survives SIGKILL or
    keeps its port open.
    """
    members = {mp.name: (mp, mp.members()) for mp in procs}
    running = [name for name, (_, ms) in members.items() if ms]
    for mp, ms in members.values():
        if ms:
            mp._signal(ms, signal.SIGTERM)
    everyone = [p for _, ms in members.values() for p in ms]
    still = wait_gone(everyone, term_grace)  # exited = gone, reaped or not (a VM's service is init's orphan)
    late = {mp.name: (mp, mp.members()) for mp in procs}  # children born during shutdown
    if still or any(ms for _, ms in late.values()):
        for mp, ms in late.values():
            survivors = list({p.pid: p for p in [*ms, *(p for p in still if p in members[mp.name][1])]}.values())
            if survivors:
                log.warning("process did not stop on SIGTERM; killing", process=mp.name,
                            pids=[p.pid for p in survivors], grace_s=term_grace, commands=_commands(survivors))
                _dump_stacks(survivors)
                mp._signal(survivors, signal.SIGKILL)
        everyone = [p for _, ms in late.values() for p in ms] + list(still)
        still = wait_gone(everyone, timeout)
        if still:
            raise StackError(f"could not stop pids {[p.pid for p in still]}: they survive SIGKILL")
    for mp in procs:
        if mp.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                mp.popen.wait(timeout=1.0)
    deadline = time.monotonic() + timeout
    for mp in procs:
        if mp.port is not None and not wait_port_closed(mp.port, timeout=max(0.5, deadline - time.monotonic())):
            raise StackError(f"{mp.name} stopped but port {mp.port} is still open")
    return running


def _dump_stacks(procs: Sequence[psutil.Process]) -> None:
    """Ask our own fakes among ``procs`` to write their threads' stacks to their logs (``StopSignal``)."""
    fakes = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            if any(arg.startswith("local_emulator.") for arg in p.cmdline()):
                p.send_signal(signal.SIGUSR1)
                fakes.append(p)
    if fakes:
        time.sleep(0.3)


def kill_marked(var: str, value: str, *, term_grace: float = 5.0, rounds: int = 20) -> list[psutil.Process]:
    """SIGTERM, then SIGKILL, every process marked ``var=value``; returns those that were running.

    Looked for again until none is left: a process may fork between one search and its signal (pip
    starting a build step, say), and its child carries the marker too. Used for the instant between a
    process starting and its record reaching disk, and for whatever left a fake instance's process group.
    """
    ended = end_marked(var, value, grace_s=term_grace, rounds=rounds)
    left = find_marked(var, value)
    if left:
        raise StackError(f"could not stop pids {[p.pid for p in left]}: they survive SIGKILL")
    return ended


def _pgid(p: psutil.Process) -> int | None:
    try:
        return os.getpgid(p.pid)
    except (ProcessLookupError, PermissionError):
        return None


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    log_path: Path,
    port: int | None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    on_start: Callable[[ManagedProcess], None] | None = None,
) -> ManagedProcess:
    """Start ``argv`` in its own session with stdout+stderr appended to ``log_path``.

    ``on_start`` is called with the process right after it starts (the stack records it there,
    before waiting for readiness, so an interrupted start can still be cleaned up).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        try:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=str(cwd) if cwd else None,
                start_new_session=True,
            )
        except FileNotFoundError as e:
            raise MissingDependency(f"cannot start {name}: program {argv[0]!r} not found") from e
    try:
        start = started(popen.pid)
    except psutil.NoSuchProcess:
        start = -1.0  # gone already: nothing of it to stop
    proc = ManagedProcess(name, popen.pid, popen.pid, start, port, log_path, list(argv), popen)
    log.info("process started", process=name, pid=popen.pid, port=port, log=str(log_path))
    if on_start is not None:
        on_start(proc)
    return proc


def wait_ready(
    proc: ManagedProcess,
    *,
    timeout: float,
    line: str | None = None,
    check: Callable[[], bool] | None = None,
    explain_exit: Callable[[str], str | None] | None = None,
) -> None:
    """Wait until ``line`` appears in the process's log and/or ``check()`` is true.

    Raises StackError (or MissingDependency, via ``explain_exit``) if the process exits first or
    the deadline passes; the message carries the end of the log.
    """
    offset = 0
    seen_line = line is None

    def still_running() -> None:
        code = proc.exited_early()
        if code is None:
            return
        tail = _tail(proc.log_path)
        if explain_exit is not None:
            why = explain_exit(tail)
            if why:
                raise MissingDependency(why)
        raise StackError(f"{proc.name} exited (code {code}) before it was ready; end of {proc.log_path}:\n{tail}")

    def ready() -> bool:
        nonlocal offset, seen_line
        if not seen_line and line is not None:
            try:
                with proc.log_path.open("rb") as f:
                    f.seek(max(0, offset - len(line)))
                    chunk = f.read()
                    offset = f.tell()
                seen_line = line.encode() in chunk
            except OSError:
                pass
        # Alive before and after the check: a process that could not bind its port exits, and another stack's part
        # of the same kind listening there (CI runs two lanes) would answer the check for it.
        still_running()
        if seen_line and (check is None or check()):
            still_running()
            return True
        return False

    try:
        wait_until(ready, timeout_s=timeout, interval_s=0.1, what=f"{proc.name} to be ready")
    except WaitTimeout as e:
        tail = _tail(proc.log_path)
        raise StackError(f"{proc.name} was not ready within {timeout:.0f}s; end of {proc.log_path}:\n{tail}") from e
