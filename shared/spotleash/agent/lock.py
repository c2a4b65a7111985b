"""One agent per lease: ``state_dir/agent-<lease>.lock``, held with ``fcntl.flock``.

The file holds the holder's pid and when it started (JSON; seconds after boot, ``supervisor.started``,
which a step of the wall clock does not move). Taking the lock:

* the flock is free → any holder named in the file is dead; if it names a pid that is gone, or a
  pid now used by another process (it started at another time), the stale lock is recovered with a
  log line;
* the flock is held by a live agent → :class:`LockHeld`, naming the pid.

The kernel drops a flock when its holder dies (even on kill -9), so a crashed agent never blocks
the next one; the pid + start time guard covers filesystems where flock is not honoured.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import psutil

from spotleash.errors import SpotleashError
from spotleash.log import get_logger
from spotleash.supervisor.started import started

log = get_logger(__name__)


class LockHeld(SpotleashError):
    """Another live agent already holds this lease."""


@dataclass(frozen=True)
class Holder:
    pid: int
    started: float  # seconds after boot (``supervisor.started``)


def process_started(pid: int) -> float | None:
    """When ``pid`` started, or None if no such process exists."""
    try:
        return started(pid)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        return float("nan")  # it exists but is not ours to inspect


def holder_alive(h: Holder) -> tuple[bool, str]:
    """(alive, why): a holder is alive if its pid exists and started when it did."""
    ct = process_started(h.pid)
    if ct is None:
        return False, f"pid {h.pid} is gone"
    if ct != ct:  # NaN: exists, cannot inspect; be safe
        return True, f"pid {h.pid} exists (not inspectable)"
    if abs(ct - h.started) > 0.05:  # clock ticks: 10 ms
        return False, f"pid {h.pid} was reused by another process"
    return True, f"pid {h.pid} is running"


def _read_holder(fd: int) -> Holder | None:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096)
    if not raw.strip():
        return None
    try:
        data = json.loads(raw)
        return Holder(int(data["pid"]), float(data["started"]))
    except (ValueError, KeyError, TypeError):
        return None


def lock_path(state_dir: Path, lease_id: str) -> Path:
    return Path(state_dir) / f"agent-{lease_id}.lock"


class LeaseLock:
    """``with LeaseLock(state_dir, lease_id): ...`` or ``acquire()`` / ``release()``."""

    def __init__(self, state_dir: Path, lease_id: str) -> None:
        self.path = lock_path(state_dir, lease_id)
        self.lease_id = lease_id
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> LeaseLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):  # retried only if the file was replaced between open and flock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = _read_holder(fd)
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                who = f"pid {holder.pid}" if holder else "another process"
                raise LockHeld(
                    f"another spotleash agent ({who}) already holds lease {self.lease_id!r} "
                    f"(lock file {self.path}); stop it first or pick another --lease-id"
                ) from e
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the previous holder unlinked it after we opened it: start over
                os.close(fd)
                continue
            try:
                self._check_previous(fd)
                body = json.dumps({"pid": os.getpid(), "started": started(os.getpid()), "lease_id": self.lease_id})
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                os.write(fd, body.encode())
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            log.info("lease lock taken", lease_id=self.lease_id, path=str(self.path), pid=os.getpid())
            return self
        raise LockHeld(f"lock file {self.path} keeps being replaced; is another agent starting for {self.lease_id!r}?")

    def _check_previous(self, fd: int) -> None:
        prev = _read_holder(fd)
        if prev is None:
            return
        alive, why = holder_alive(prev)
        if alive:
            # We hold the flock, yet the recorded holder lives: flock is not honoured here (or a
            # lock of this very process was never released). Refuse rather than run twice.
            raise LockHeld(
                f"lease {self.lease_id!r} is recorded as held by live {why} (lock file {self.path}); "
                "stop that agent first"
            )
        log.warning("recovered a stale lease lock", lease_id=self.lease_id, path=str(self.path),
                    stale_pid=prev.pid, reason=why)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(fd)  # closing drops the flock
        log.info("lease lock released", lease_id=self.lease_id, path=str(self.path))

    def __enter__(self) -> LeaseLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
