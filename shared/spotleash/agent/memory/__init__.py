"""Memory sources: one protocol (``reading.MemorySource``), one registry, and the automatic choice.

``SOURCES`` maps each source's name to where it lives (``"module:Class"``, imported when built) and
the platform it reads — the shape of ``spotleash.providers``. Adding a source is one module plus one
line in ``_REGISTERED``. ``SPOTLEASH_MEMORY_SOURCE`` names one, or ``auto``:

* macOS: the kernel's pressure level and swap activity (``macos``);
* Linux: the cgroup this process runs in when it has a memory limit (v2 ``memory.max``, v1
  ``memory.limit_in_bytes``), else the host's MemAvailable; with PSI — the cgroup's own
  ``memory.pressure`` where v2 keeps one, else the host's ``/proc/pressure/memory`` where it exists.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator

from spotleash.agent.memory.reading import MemoryReading, MemorySource, MemorySourceError

Platform = Literal["linux", "darwin"]


@dataclass(frozen=True)
class MemorySourceInfo:
    name: str
    implementation: str  # "module:Class"; Linux classes take the root their files are read under
    platform: Platform
    reads: str  # what it reads, for the configuration reference and error messages

    def build(self, root: Path = Path("/")) -> MemorySource:
        module, _, cls = self.implementation.partition(":")
        factory = getattr(importlib.import_module(module), cls)
        source: MemorySource = factory(root) if self.platform == "linux" else factory()
        return source


_REGISTERED = (
    MemorySourceInfo("host", "spotleash.agent.memory.linux:HostMemory", "linux", "/proc/meminfo MemAvailable"),
    MemorySourceInfo("psi", "spotleash.agent.memory.linux:PsiPressure", "linux",
                     "/proc/meminfo MemAvailable + /proc/pressure/memory"),
    MemorySourceInfo("cgroup-v1", "spotleash.agent.memory.cgroup:CgroupV1", "linux",
                     "this process's v1 memory cgroup: memory.limit_in_bytes, usage_in_bytes, memory.stat"),
    MemorySourceInfo("cgroup-v2", "spotleash.agent.memory.cgroup:CgroupV2", "linux",
                     "this process's v2 cgroup: memory.max, memory.current, memory.stat, memory.pressure"),
    MemorySourceInfo("macos", "spotleash.agent.memory.macos:MacosMemory", "darwin",
                     "sysctl kern.memorystatus_vm_pressure_level, hw.memsize and vm_stat"),
)
SOURCES: dict[str, MemorySourceInfo] = {s.name: s for s in _REGISTERED}
AUTO = "auto"
SOURCE_NAMES = (AUTO, *SOURCES)


def _known(name: str) -> str:
    if name not in SOURCE_NAMES:
        raise ValueError(f"unknown memory source {name!r}; known: {', '.join(SOURCE_NAMES)}")
    return name


MemorySourceName = Annotated[str, AfterValidator(_known)]  # pydantic refuses a name that is not registered


class AutoMemory:
    """The cgroup when it limits this process, else the host; PSI added where the primary has none."""

    name = AUTO

    def __init__(self, root: Path = Path("/")) -> None:
        host = SOURCES["host"].build(root)
        self.host = host
        self.primary: MemorySource = host
        ram = host.read().limit_bytes
        for kind in ("cgroup-v2", "cgroup-v1"):
            try:
                cg = SOURCES[kind].build(root)
                if cg.read().limit_bytes < ram:  # capped at the RAM: below it means the cgroup has a limit
                    self.primary = cg
                    break
            except MemorySourceError:
                continue  # not in such a cgroup, or its controller is off: the next kind, then the host
        psi = root / "proc/pressure/memory"
        self.psi_path = psi if psi.exists() else None

    def read(self) -> MemoryReading:
        from spotleash.agent.memory.linux import read_psi

        r = self.primary.read()
        if self.primary is not self.host:  # a cgroup cannot have more than the machine can give
            r = replace(r, available_bytes=min(r.available_bytes, self.host.read().available_bytes))
        if r.psi_some_avg10 is None and self.psi_path is not None:
            psi = read_psi(self.psi_path)
            r = replace(r, source=f"{r.source} + {self.psi_path}", psi_some_avg10=psi.some_avg10,
                        psi_full_avg10=psi.full_avg10)
        return r


def build_source(name: str, root: Path = Path("/"), platform: str = sys.platform) -> MemorySource:
    """The source named (``auto``: chosen as above). Raises ``MemorySourceError`` naming what it could not
    read — so a wrong choice fails at the agent's start, not at its first sample."""
    _known(name)
    if name == AUTO:
        source: MemorySource = SOURCES["macos"].build() if platform == "darwin" else AutoMemory(root)
    else:
        source = SOURCES[name].build(root)
    source.read()
    return source


__all__ = ["AUTO", "SOURCES", "SOURCE_NAMES", "MemoryReading", "MemorySource", "MemorySourceError",
           "MemorySourceInfo", "MemorySourceName", "build_source"]
