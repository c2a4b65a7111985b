"""How long this instance has done nothing: the heartbeat's ``idle_s``, what auto-hibernation reads.

**The rule.** A moment is *busy* when any of these holds, and ``idle_s`` is the seconds since the last
busy moment (since the agent started, when there was none):

- a remote request was admitted by the instance's TLS front (``instance_agent.front``: it carried the
  lease's credential), except the router's probes of a component's own health path — those come every
  few seconds from the user's machine whether the app is used or not, and would keep every box awake;
- the CPU use of the box, averaged over the time since the previous heartbeat, was at or above
  ``AgentConfig.idle_cpu_percent`` (default 10 %; 0: CPU never makes the box busy — a box whose CPU is
  shared with work that is not its own, such as the local fakes' boxes on one machine). "The box" is its
  cgroup when it has one (``CpuMeter``): a VAST box is a container, whose ``/proc/stat`` counts the whole
  host and its other tenants;
- any GPU's utilisation (``nvidia-smi``, when the box has one) was at or above
  ``AgentConfig.idle_gpu_percent`` (default 10 %) at the heartbeat;
- any GPU's used memory moved by ``GPU_MEMORY_STEP_MIB`` or more since the previous heartbeat: weights
  being loaded or a batch allocating show there before (or instead of) in the utilisation. Memory that
  stays put does not keep the box awake: a model resident in VRAM that nobody asks is exactly what
  hibernation is for.

The samples are taken once per heartbeat, so a burst shorter than the interval counts through the CPU
average and the front's clock, not through the GPU's instantaneous reading. A box without a front is
judged on CPU and GPU alone. The heartbeat carries the GPU readings themselves (``Heartbeat.gpus``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil

from spotleash.log import get_logger
from spotleash.wire.events import GpuReport

log = get_logger(__name__)

NVIDIA_SMI = "nvidia-smi"
GPU_FIELDS = "name,memory.total,memory.used,utilization.gpu"
GPU_QUERY = [NVIDIA_SMI, f"--query-gpu={GPU_FIELDS}", "--format=csv,noheader,nounits"]
GPU_TIMEOUT_S = 5.0
GPU_MEMORY_STEP_MIB = 256
NOT_AVAILABLE = ("[N/A]", "[Not Supported]", "N/A")


def _number(text: str, what: str) -> float | None:
    value = text.strip()
    if value in NOT_AVAILABLE:
        return None
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{what} is not a number: {value!r}") from None


def parse_gpu_query(text: str) -> list[GpuReport]:
    """``GPU_QUERY``'s output, one GPU a line (``name, MiB total, MiB used, % utilisation``), in
    ``nvidia-smi``'s order; "[N/A]" figures are None. ValueError on a line of another shape."""
    gpus = []
    for n, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        name, *rest = (part.strip() for part in line.rsplit(",", 3))
        if len(rest) != 3 or not name:
            raise ValueError(f"line {n + 1} is not '{GPU_FIELDS}': {line.strip()[:120]!r}")
        total, used, util = (_number(v, f"line {n + 1}'s {f}") for v, f in zip(rest, GPU_FIELDS.split(",")[1:],
                                                                                  strict=True))
        gpus.append(GpuReport(name=name[:128], memory_total_mib=None if total is None else int(total),
                              memory_used_mib=None if used is None else int(used),
                              utilization_percent=None if util is None else min(max(util, 0.0), 100.0)))
    return gpus


class IdleClock:
    """``observe`` once per heartbeat; it answers ``idle_s``. Times are ``time.monotonic()`` seconds."""

    def __init__(self, started_at: float, *, cpu_threshold: float, gpu_threshold: float) -> None:
        self._busy_at = started_at
        self.cpu_threshold = cpu_threshold
        self.gpu_threshold = gpu_threshold
        self._gpu_memory: list[int | None] = []  # each GPU's used MiB at the previous observation

    def _gpus_busy(self, gpus: Sequence[GpuReport]) -> bool:
        used = [g.memory_used_mib for g in gpus]
        moved = any(now is not None and before is not None and abs(now - before) >= GPU_MEMORY_STEP_MIB
                    for now, before in zip(used, self._gpu_memory, strict=False))
        self._gpu_memory = used
        working = any(g.utilization_percent is not None and g.utilization_percent >= self.gpu_threshold
                      for g in gpus)
        return moved or working

    def observe(self, now: float, *, cpu_percent: float, gpus: Sequence[GpuReport] = (),
                last_request_at: float | None = None) -> float:
        cpu_busy = self.cpu_threshold > 0 and cpu_percent >= self.cpu_threshold
        if self._gpus_busy(gpus) or cpu_busy:
            self._busy_at = now
        if last_request_at is not None and last_request_at > self._busy_at:
            self._busy_at = min(last_request_at, now)
        return round(max(0.0, now - self._busy_at), 3)


Runner = Callable[[list[str]], "subprocess.CompletedProcess[str]"]


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=GPU_TIMEOUT_S, check=False)  # noqa: S603


class GpuProbe:
    """Each GPU's name, memory and utilisation from ``nvidia-smi``; empty when the box has none (or it fails)."""

    def __init__(self, run: Runner = _run, which: Callable[[str], str | None] = shutil.which) -> None:
        self._run = run
        self.present = which(NVIDIA_SMI) is not None
        self._warned = False

    def sample(self) -> list[GpuReport]:
        if not self.present:
            return []
        try:
            out = self._run(GPU_QUERY)
            if out.returncode != 0:
                raise ValueError(f"exit {out.returncode}: {out.stderr.strip()[:200]}")
            return parse_gpu_query(out.stdout)
        except (OSError, subprocess.TimeoutExpired, ValueError) as e:
            if not self._warned:  # once: a broken driver would otherwise log at every beat
                log.warning("nvidia-smi gave no readings; GPUs count as idle", reason=str(e)[:200])
                self._warned = True
            return []


CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_seconds(root: Path) -> float | None:
    """CPU seconds used by the cgroup mounted at ``root`` (v2 ``cpu.stat``, v1 ``cpuacct``); None: neither."""
    try:
        for line in (root / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) / 1e6
    except (OSError, ValueError):
        pass
    try:
        return int((root / "cpuacct" / "cpuacct.usage").read_text()) / 1e9
    except (OSError, ValueError):
        return None


def cgroup_cores(root: Path, cpus: int) -> float:
    """The CPUs the cgroup may use: its quota (v2 ``cpu.max``, v1 ``cfs_quota_us``) when set, else ``cpus``."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return cpus if quota == "max" else min(int(quota) / int(period), cpus)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return min(quota_us / period_us, cpus) if quota_us > 0 and period_us > 0 else cpus
    except (OSError, ValueError):
        return cpus


class CpuMeter:
    """The box's CPU use since the previous ``sample``, in percent of the CPUs it may use.

    Its cgroup's counter when there is one (in a container that is the container's own use; on a VM, the
    root cgroup's is the machine's), else ``psutil.cpu_percent`` (``/proc/stat``: the whole host). The first
    sample is 0 (no interval yet), as psutil's is."""

    def __init__(self, root: Path = CGROUP_ROOT, clock: Callable[[], float] = time.monotonic,
                 cpus: int | None = None, fallback: Callable[[], float] = lambda: psutil.cpu_percent(interval=None),
                 ) -> None:
        self.root = root
        self.clock = clock
        self.fallback = fallback
        self.cores = cgroup_cores(root, cpus or len(os.sched_getaffinity(0)))
        self.source = "cgroup" if cgroup_cpu_seconds(root) is not None else "psutil"
        self._last: tuple[float, float] | None = None  # (clock, cpu seconds)
        log.info("CPU use measured", source=self.source, cores=round(self.cores, 2))

    def sample(self) -> float:
        if self.source == "psutil":
            return float(self.fallback())
        used = cgroup_cpu_seconds(self.root)
        if used is None:  # the cgroup went away under us: the host's figure beats none
            self.source = "psutil"
            return float(self.fallback())
        now, last = self.clock(), self._last
        self._last = (now, used)
        if last is None or now <= last[0] or self.cores <= 0:
            return 0.0
        return round(min(max((used - last[1]) / ((now - last[0]) * self.cores) * 100, 0.0), 100.0), 2)
