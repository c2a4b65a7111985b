"""A real memory-limited cgroup for tests: create, limit, move a pid in, read usage and the OOM-kill counter,
clean up. cgroup v1 (``memory.limit_in_bytes``, these machines) or v2 (``memory.max``, most distributions).

Read from outside, with no spotleash code: a test that proves the agent's figures must not borrow them.
``why_not_writable()`` names why no memory cgroup can be made here (the tests skip with that reason).
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from spotleash.polling import wait_until

V1_ROOT = Path("/sys/fs/cgroup/memory")
V2_ROOT = Path("/sys/fs/cgroup")
MB = 2**20


def _v2_usable() -> bool:
    controllers = V2_ROOT / "cgroup.controllers"
    return controllers.exists() and "memory" in controllers.read_text().split()


def why_not_writable() -> str | None:
    """Why no memory cgroup can be created here, or None."""
    if (V1_ROOT / "memory.limit_in_bytes").exists():
        if not os.access(V1_ROOT, os.W_OK):
            return f"{V1_ROOT} is not writable by uid {os.getuid()}: creating a v1 memory cgroup needs root"
        return None
    if _v2_usable():
        if not os.access(V2_ROOT, os.W_OK):
            return f"{V2_ROOT} is not writable by uid {os.getuid()}: creating a v2 cgroup needs root or delegation"
        return None
    return (f"neither a cgroup v1 memory controller at {V1_ROOT} nor cgroup v2 with the memory controller at "
            f"{V2_ROOT} (this process: {Path('/proc/self/cgroup').read_text()!r})")


def _int(path: Path) -> int:
    return int(path.read_text().strip())


def _keyed(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


@dataclass(frozen=True)
class MemoryCgroup:
    dir: Path
    version: int  # 1 or 2

    @property
    def procs_file(self) -> Path:
        return self.dir / "cgroup.procs"

    def set_limit(self, limit_bytes: int) -> None:
        name = "memory.limit_in_bytes" if self.version == 1 else "memory.max"
        (self.dir / name).write_text(str(limit_bytes))
        if self.version == 2:  # no swap may hide the pressure (v1 here has no swap at all)
            swap = self.dir / "memory.swap.max"
            if swap.exists():
                swap.write_text("0")

    def limit(self) -> int:
        return _int(self.dir / ("memory.limit_in_bytes" if self.version == 1 else "memory.max"))

    def add(self, pid: int) -> None:
        self.procs_file.write_text(str(pid))

    def pids(self) -> list[int]:
        return [int(p) for p in self.procs_file.read_text().split()]

    def usage(self) -> int:
        """What the kernel charges the cgroup now (page cache included: what the limit counts)."""
        return _int(self.dir / ("memory.usage_in_bytes" if self.version == 1 else "memory.current"))

    def working_set(self) -> int:
        """Usage minus the inactive file cache the kernel would reclaim before an OOM kill."""
        stat = _keyed(self.dir / "memory.stat")
        inactive = stat.get("total_inactive_file", stat.get("inactive_file", 0))
        return max(self.usage() - inactive, 0)

    def oom_kills(self) -> int:
        """Processes of this cgroup the kernel OOM-killed (v1 ``memory.oom_control``, v2 ``memory.events``)."""
        f = self.dir / ("memory.oom_control" if self.version == 1 else "memory.events")
        return _keyed(f).get("oom_kill", 0)

    def argv_inside(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run so that it is in this cgroup before it runs at all (a shell moves itself, then execs)."""
        return ["sh", "-c", f'echo $$ > {self.procs_file} && exec "$@"', "sh", *argv]

    def kill_all(self, timeout_s: float = 15.0) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_until(lambda: not self.pids(), timeout_s=timeout_s, interval_s=0.1,
                   what=f"{self.dir} to have no processes")


def create(limit_bytes: int, prefix: str = "spotleash-test") -> MemoryCgroup:
    why = why_not_writable()
    if why:
        raise RuntimeError(why)
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    if (V1_ROOT / "memory.limit_in_bytes").exists():
        cg = MemoryCgroup(V1_ROOT / name, 1)
    else:
        subtree = V2_ROOT / "cgroup.subtree_control"
        if "memory" not in subtree.read_text().split():
            subtree.write_text("+memory")
        cg = MemoryCgroup(V2_ROOT / name, 2)
    cg.dir.mkdir()
    cg.set_limit(limit_bytes)
    return cg


def remove(cg: MemoryCgroup) -> None:
    """Every process in it killed, then the cgroup removed."""
    if cg.dir.exists():
        cg.kill_all()
        cg.dir.rmdir()


@contextmanager
def memory_cgroup(limit_bytes: int, prefix: str = "spotleash-test") -> Iterator[MemoryCgroup]:
    cg = create(limit_bytes, prefix)
    try:
        yield cg
    finally:
        remove(cg)
