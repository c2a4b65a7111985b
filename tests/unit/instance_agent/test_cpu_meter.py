"""The instance's CPU use for idleness: its cgroup's own counter, not the host's /proc/stat.

Real files laid out as the kernel does under a temporary "cgroup root" (v2: cpu.stat, cpu.max; v1:
cpuacct/cpuacct.usage, cpu/cpu.cfs_quota_us), a clock under test control.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from spotleash.instance_agent.idle import CpuMeter, cgroup_cores, cgroup_cpu_seconds


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def v2(root: Path, usage_usec: int, cpu_max: str = "max 100000") -> None:
    (root / "cpu.stat").write_text(f"usage_usec {usage_usec}\nuser_usec 1\nsystem_usec 1\n")
    (root / "cpu.max").write_text(cpu_max + "\n")


def v1(root: Path, usage_ns: int, quota_us: int = -1) -> None:
    (root / "cpuacct").mkdir(exist_ok=True)
    (root / "cpu").mkdir(exist_ok=True)
    (root / "cpuacct" / "cpuacct.usage").write_text(f"{usage_ns}\n")
    (root / "cpu" / "cpu.cfs_quota_us").write_text(f"{quota_us}\n")
    (root / "cpu" / "cpu.cfs_period_us").write_text("100000\n")


def test_v2_use_is_the_cgroup_s_over_its_quota(tmp_path: Path) -> None:
    clock = Clock()
    v2(tmp_path, 0, "200000 100000")  # a quota of 2 CPUs on a host of 64
    meter = CpuMeter(tmp_path, clock=clock, cpus=64, fallback=lambda: pytest.fail("the host's figure was read"))
    assert (meter.source, meter.cores) == ("cgroup", 2.0)
    assert meter.sample() == 0.0  # no interval yet
    clock.t += 10
    v2(tmp_path, 5_000_000, "200000 100000")  # 5 CPU-seconds in 10 s on 2 CPUs
    assert meter.sample() == 25.0
    clock.t += 10
    assert meter.sample() == 0.0  # nothing used since


def test_v1_without_a_quota_counts_the_cpus_it_may_run_on(tmp_path: Path) -> None:
    clock = Clock()
    v1(tmp_path, 0)
    meter = CpuMeter(tmp_path, clock=clock, cpus=4)
    assert (meter.source, meter.cores) == ("cgroup", 4)
    meter.sample()
    clock.t += 2
    v1(tmp_path, 4 * 10**9)  # 4 CPU-seconds in 2 s on 4 CPUs
    assert meter.sample() == 50.0


def test_no_cgroup_falls_back_to_the_host_figure(tmp_path: Path) -> None:
    meter = CpuMeter(tmp_path, cpus=2, fallback=lambda: 37.5)
    assert meter.source == "psutil" and meter.sample() == 37.5


def test_a_cgroup_that_goes_away_falls_back_rather_than_reporting_idle(tmp_path: Path) -> None:
    v2(tmp_path, 0)
    meter = CpuMeter(tmp_path, cpus=2, fallback=lambda: 80.0)
    meter.sample()
    (tmp_path / "cpu.stat").unlink()
    assert meter.sample() == 80.0 and meter.source == "psutil"


@pytest.mark.parametrize(("files", "cores"), [
    ({"cpu.max": "max 100000"}, 8),
    ({"cpu.max": "50000 100000"}, 0.5),
    ({"cpu.max": "1600000 100000"}, 8),  # a quota above the CPUs there are: the CPUs
    ({"cpu.max": "garbage"}, 8),
])
def test_cores(tmp_path: Path, files: dict[str, str], cores: float) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert cgroup_cores(tmp_path, 8) == cores


def test_cpu_seconds_reads_v2_before_v1_and_none_without_either(tmp_path: Path) -> None:
    assert cgroup_cpu_seconds(tmp_path) is None
    v1(tmp_path, 3 * 10**9)
    assert cgroup_cpu_seconds(tmp_path) == 3.0
    v2(tmp_path, 1_500_000)
    assert cgroup_cpu_seconds(tmp_path) == 1.5
