"""The cgroup the agent runs in: its own limit and usage, which ``/proc/meminfo`` cannot see.

A container or a memory-limited session gets OOM-killed at its cgroup's limit however much the
machine has free (platform facts: inside a 1 GB cgroup at 81 %, psutil said 16.8 %).

Usage minus the reclaimable file cache is what counts — the kernel reclaims inactive file pages
before it OOM-kills, and ``docker stats`` / the kubelet's working set subtract the same figure:
v1 ``memory.usage_in_bytes`` − ``total_inactive_file``, v2 ``memory.current`` − ``inactive_file``.
The limit is the effective one: v1's ``hierarchical_memory_limit`` (the smallest on the way up),
v2's smallest ``memory.max`` from the cgroup to the mount's root, never more than the machine's RAM.

Which cgroup: ``/proc/self/cgroup`` names it, ``/proc/self/mountinfo`` says where its hierarchy is
mounted (and which part of it, inside a container's cgroup namespace). All paths are read under
``root``, so tests point the readers at recorded trees.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from spotleash.agent.memory.linux import HostMemory, Psi, read_psi, read_text
from spotleash.agent.memory.reading import MemoryReading, MemorySourceError

UNLIMITED_V1 = 1 << 62  # v1 writes PAGE_COUNTER_MAX (9223372036854771712 with 4 KiB pages) for "no limit"


@dataclass(frozen=True)
class Mount:
    mountpoint: str  # where the hierarchy is mounted, e.g. /sys/fs/cgroup/memory
    root: str  # which cgroup of the hierarchy sits at the mountpoint ("/" unless namespaced)


def parse_mountinfo(text: str, version: int) -> Mount | None:
    """The memory controller's v1 mount (``version`` 1) or the unified v2 mount (2)."""
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3:
            continue
        fstype, superopts = tail[0], tail[2].split(",")
        if (version == 1 and fstype == "cgroup" and "memory" in superopts) or (version == 2 and fstype == "cgroup2"):
            return Mount(mountpoint=_unescape(fields[4]), root=_unescape(fields[3]))
    return None


def _unescape(path: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (\\040 ...)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def parse_proc_cgroup(text: str, version: int) -> str | None:
    """This process's cgroup path in the v1 memory hierarchy (1) or the unified one (2)."""
    for line in text.splitlines():
        hier, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if version == 2 and hier == "0" and controllers == "":
            return path
        if version == 1 and "memory" in controllers.split(","):
            return path
    return None


def own_cgroup_dir(root: Path, version: int) -> Path | None:
    """The directory of this process's cgroup (under ``root``), or None when it is not in one of that kind."""
    cg_path = parse_proc_cgroup(read_text(root / "proc/self/cgroup"), version)
    mount = parse_mountinfo(read_text(root / "proc/self/mountinfo"), version)
    if cg_path is None or mount is None:
        return None
    rel = PurePosixPath(cg_path)
    try:
        rel = rel.relative_to(mount.root)
    except ValueError:  # a cgroup namespace shows the process at the mount's own root
        rel = PurePosixPath("/")
    d = root / mount.mountpoint.lstrip("/") / str(rel).lstrip("/")
    return d if d.is_dir() else None


def parse_stat(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            out[key] = int(value)
    return out


def _int_file(path: Path) -> int:
    text = read_text(path).strip()
    try:
        return int(text)
    except ValueError:
        raise MemorySourceError(f"{path}: expected a number, got {text[:40]!r}") from None


class _Cgroup(ABC):
    """What v1 and v2 share; each says where its limit and usage are."""

    version = 0
    name = ""

    def __init__(self, root: Path = Path("/"), path: Path | None = None) -> None:
        """``path``: the cgroup's directory; None: the one this process runs in (found under ``root``)."""
        self.root = root
        self.dir = path if path is not None else own_cgroup_dir(root, self.version)
        if self.dir is None:
            raise MemorySourceError(f"this process is in no cgroup v{self.version} memory hierarchy "
                                    f"(read {root / 'proc/self/cgroup'} and {root / 'proc/self/mountinfo'})")
        self.host = HostMemory(root)

    @abstractmethod
    def limit(self) -> int | None:
        """The cgroup's effective limit in bytes; None when it has none."""

    @abstractmethod
    def _usage(self) -> tuple[int, int]:
        """(usage, reclaimable inactive file cache) in bytes."""

    def _psi(self) -> Psi | None:
        """The cgroup's own pressure stall figures, where the kernel keeps them (v2)."""
        return None

    def read(self) -> MemoryReading:
        ram = self.host.read().limit_bytes
        own = self.limit()
        limit = ram if own is None else min(own, ram)
        usage, inactive_file = self._usage()
        used = max(usage - inactive_file, 0)
        psi = self._psi()
        return MemoryReading(limit_bytes=limit, available_bytes=max(limit - used, 0), used_bytes=used,
                             source=f"cgroup v{self.version} {self.dir}",
                             psi_some_avg10=psi.some_avg10 if psi else None,
                             psi_full_avg10=psi.full_avg10 if psi else None)


class CgroupV1(_Cgroup):
    version = 1
    name = "cgroup-v1"

    def limit(self) -> int | None:
        assert self.dir is not None
        stat = parse_stat(read_text(self.dir / "memory.stat"))
        value = stat.get("hierarchical_memory_limit")
        if value is None:
            value = _int_file(self.dir / "memory.limit_in_bytes")
        return None if value >= UNLIMITED_V1 else value

    def _usage(self) -> tuple[int, int]:
        assert self.dir is not None
        stat = parse_stat(read_text(self.dir / "memory.stat"))
        inactive = stat.get("total_inactive_file", stat.get("inactive_file", 0))
        return _int_file(self.dir / "memory.usage_in_bytes"), inactive


class CgroupV2(_Cgroup):
    version = 2
    name = "cgroup-v2"

    def _mount_top(self) -> Path:
        assert self.dir is not None
        mount = parse_mountinfo(read_text(self.root / "proc/self/mountinfo"), 2)
        return self.root / mount.mountpoint.lstrip("/") if mount is not None else self.dir

    def limit(self) -> int | None:
        assert self.dir is not None
        top, d, limits = self._mount_top(), self.dir, []
        while True:
            f = d / "memory.max"
            if f.exists():
                text = read_text(f).strip()
                if text != "max":
                    limits.append(_int_file(f))
            if d == top or d.parent == d:
                break
            d = d.parent
        if not (self.dir / "memory.current").exists():
            raise MemorySourceError(f"{self.dir} has no memory.current: the memory controller is not enabled there")
        return min(limits) if limits else None

    def _usage(self) -> tuple[int, int]:
        assert self.dir is not None
        stat = parse_stat(read_text(self.dir / "memory.stat"))
        return _int_file(self.dir / "memory.current"), stat.get("inactive_file", 0)

    def _psi(self) -> Psi | None:
        assert self.dir is not None
        f = self.dir / "memory.pressure"
        return read_psi(f) if f.exists() else None


