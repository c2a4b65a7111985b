"""Memory sources over recorded trees: the cgroup contract, cache is not pressure, PSI, v2, macOS, the registry."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from tests.support.memory_contract import MB, MemorySourceContract, MemoryWorld

from spotleash.agent.memory import SOURCE_NAMES, SOURCES, AutoMemory, build_source
from spotleash.agent.memory.cgroup import CgroupV1, CgroupV2, parse_mountinfo, parse_proc_cgroup
from spotleash.agent.memory.linux import HostMemory, PsiPressure, parse_meminfo, parse_psi
from spotleash.agent.memory.macos import MacosMemory, parse_pressure_level, parse_vm_stat, used_bytes
from spotleash.agent.memory.reading import MemoryReading, MemorySourceError

TREES = Path(__file__).resolve().parents[2] / "support" / "memory_trees"
V1 = TREES / "cgroup_v1"
V1_DIR = V1 / "sys/fs/cgroup/memory/spotleash-contract"


class TestRecordedCgroupV1(MemorySourceContract):
    @pytest.fixture
    def world(self) -> MemoryWorld:
        expect = json.loads((V1 / "expect.json").read_text())
        return MemoryWorld(source=CgroupV1(V1, path=V1_DIR), cgroup_dir=V1_DIR, limit_bytes=expect["limit_bytes"],
                           tree_rss_bytes=expect["tree_rss_bytes"], auto_reading=AutoMemory(V1).read,
                           psutil_total_bytes=parse_meminfo((V1 / "proc/meminfo").read_text())["MemTotal"])


def _copy_v1(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    shutil.copytree(V1, root)
    return root


def _edit_stat(stat: Path, **values: int) -> None:
    lines = [ln for ln in stat.read_text().splitlines() if ln.split(" ")[0] not in values]
    stat.write_text("\n".join([*lines, *(f"{k} {v}" for k, v in values.items())]) + "\n")


def test_reclaimable_file_cache_in_the_cgroup_is_not_pressure(tmp_path: Path) -> None:
    root = _copy_v1(tmp_path)
    d = root / "sys/fs/cgroup/memory/spotleash-contract"
    before = CgroupV1(root).read()
    usage = int((d / "memory.usage_in_bytes").read_text())
    (d / "memory.usage_in_bytes").write_text(str(usage + 150 * MB))  # 150 MB more charged ...
    _edit_stat(d / "memory.stat", total_inactive_file=150 * MB)  # ... all of it inactive file cache
    after = CgroupV1(root).read()
    assert after.used_bytes == before.used_bytes and after.available_bytes == before.available_bytes


def test_the_cgroup_is_found_from_proc_self(tmp_path: Path) -> None:
    assert CgroupV1(V1).dir == V1_DIR
    assert parse_proc_cgroup((V1 / "proc/self/cgroup").read_text(), 1) == "/spotleash-contract"
    assert parse_proc_cgroup((V1 / "proc/self/cgroup").read_text(), 2) == "/"


def test_a_namespaced_mount_shows_the_cgroup_at_its_root() -> None:
    # a container: /proc/self/cgroup names the host-side path, the mount's root is that same path
    info = "40 31 0:32 /docker/abc /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup rw,memory\n"
    m = parse_mountinfo(info, 1)
    assert m is not None and m.root == "/docker/abc" and m.mountpoint == "/sys/fs/cgroup/memory"
    assert parse_mountinfo(r"41 31 0:38 / /sys/fs/cgroup\040x rw - cgroup2 cgroup2 rw" + "\n", 2).mountpoint == \
        "/sys/fs/cgroup x"  # type: ignore[union-attr]
    assert parse_mountinfo(info, 2) is None


def test_an_unlimited_cgroup_leaves_the_choice_to_the_host(tmp_path: Path) -> None:
    root = _copy_v1(tmp_path)
    d = root / "sys/fs/cgroup/memory/spotleash-contract"
    (d / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    _edit_stat(d / "memory.stat", hierarchical_memory_limit=9223372036854771712)
    assert CgroupV1(root).limit() is None
    r = AutoMemory(root).read()
    assert r.source.startswith("host ") and "proc/pressure/memory" in r.source
    assert r.psi_some_avg10 is not None


def test_the_effective_v1_limit_is_the_hierarchical_one(tmp_path: Path) -> None:
    root = _copy_v1(tmp_path)
    d = root / "sys/fs/cgroup/memory/spotleash-contract"
    (d / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # its own: none; a parent's: 400 MB
    _edit_stat(d / "memory.stat", hierarchical_memory_limit=400 * MB)
    assert CgroupV1(root).read().limit_bytes == 400 * MB


def test_host_reads_memavailable_not_free() -> None:
    info = parse_meminfo((V1 / "proc/meminfo").read_text())
    r = HostMemory(V1).read()
    assert r.limit_bytes == info["MemTotal"] and r.available_bytes == info["MemAvailable"]
    assert info["MemAvailable"] > info["MemFree"]  # the cache counts as headroom
    assert PsiPressure(V1).read().psi_some_avg10 == parse_psi((V1 / "proc/pressure/memory").read_text()).some_avg10


def test_psi_lines() -> None:
    p = parse_psi("some avg10=12.50 avg60=3.00 avg300=0.10 total=123\nfull avg10=1.25 avg60=0 avg300=0 total=9\n")
    assert (p.some_avg10, p.full_avg10) == (12.5, 1.25)
    assert parse_psi("some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n").full_avg10 is None
    with pytest.raises(ValueError, match="some avg10"):
        parse_psi("")


def test_missing_files_name_themselves(tmp_path: Path) -> None:
    with pytest.raises(MemorySourceError, match="proc/meminfo"):
        HostMemory(tmp_path).read()
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/cgroup").write_text("0::/\n")
    (tmp_path / "proc/self/mountinfo").write_text("")
    with pytest.raises(MemorySourceError, match="no cgroup v1 memory hierarchy"):
        CgroupV1(tmp_path)


# ------------------------------------------------------------------ cgroup v2 (a tree as the kernel docs lay it out)
def _v2_tree(tmp_path: Path, *, leaf_max: str = "max", parent_max: str = "1073741824", pressure: bool = True) -> Path:
    root = tmp_path / "v2"
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/pressure").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text("0::/user.slice/app.scope\n")
    (root / "proc/self/mountinfo").write_text("30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n")
    (root / "proc/meminfo").write_text((V1 / "proc/meminfo").read_text())
    (root / "proc/pressure/memory").write_text("some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    top = root / "sys/fs/cgroup"
    leaf = top / "user.slice/app.scope"
    leaf.mkdir(parents=True)
    (top / "cgroup.controllers").write_text("cpu io memory pids\n")
    (top / "user.slice/memory.max").write_text(parent_max + "\n")
    (leaf / "memory.max").write_text(leaf_max + "\n")
    (leaf / "memory.current").write_text(str(700 * MB) + "\n")
    (leaf / "memory.stat").write_text(f"anon {500 * MB}\nfile {200 * MB}\nactive_file {50 * MB}\n"
                                      f"inactive_file {150 * MB}\n")
    if pressure:
        (leaf / "memory.pressure").write_text("some avg10=42.00 avg60=10.00 avg300=2.00 total=99\n"
                                              "full avg10=7.50 avg60=1.00 avg300=0.20 total=11\n")
    return root


def test_v2_limit_is_the_smallest_on_the_way_up_and_cache_is_subtracted(tmp_path: Path) -> None:
    r = CgroupV2(_v2_tree(tmp_path)).read()
    assert r.limit_bytes == 1024 * MB and r.used_bytes == 550 * MB and r.available_bytes == 474 * MB
    assert (r.psi_some_avg10, r.psi_full_avg10) == (42.0, 7.5)  # the cgroup's own PSI
    assert CgroupV2(_v2_tree(tmp_path / "b", leaf_max=str(800 * MB))).read().limit_bytes == 800 * MB


def test_auto_takes_a_limited_v2_cgroup_with_its_own_pressure(tmp_path: Path) -> None:
    r = AutoMemory(_v2_tree(tmp_path)).read()
    assert r.source.startswith("cgroup v2") and r.psi_some_avg10 == 42.0
    assert "proc/pressure" not in r.source  # the host's PSI is not mixed in when the cgroup has its own
    host = AutoMemory(_v2_tree(tmp_path / "b", parent_max="max")).read()
    assert host.source.startswith("host ")


def test_v2_without_the_memory_controller_is_refused(tmp_path: Path) -> None:
    root = _v2_tree(tmp_path)
    (root / "sys/fs/cgroup/user.slice/app.scope/memory.current").unlink()
    with pytest.raises(MemorySourceError, match="memory controller is not enabled"):
        CgroupV2(root).read()


# ------------------------------------------------------------------ macOS (recordings only)
MAC_VM_STAT = (TREES / "macos/vm_stat.txt").read_text()
MAC_RAM = 17179869184


def _mac(level: str, vm_stats: list[str], times: list[float]) -> MacosMemory:
    it_vm, it_t = iter(vm_stats), iter(times)

    answers = {"hw.memsize": f"{MAC_RAM}\n", "kern.memorystatus_vm_pressure_level": level}

    def run(argv: list[str]) -> str:
        return answers[argv[-1]] if argv[-1] in answers else next(it_vm)

    return MacosMemory(run=run, clock=lambda: next(it_t))


def test_macos_headroom_is_what_activity_monitor_calls_free() -> None:
    vm = parse_vm_stat(MAC_VM_STAT)
    assert vm["page_size"] == 16384 and vm["Swapouts"] == 929703 and vm["Translation faults"] == 574921966
    # app memory (anonymous - purgeable) + wired + compressed
    assert used_bytes(vm) == (247311 - 630 + 159117 + 454496) * 16384
    r = _mac("1\n", [MAC_VM_STAT], [0.0]).read()
    assert r.limit_bytes == MAC_RAM and r.available_bytes == MAC_RAM - used_bytes(vm)
    assert r.level == "normal" and r.swapping is None  # one reading cannot tell a rate


@pytest.mark.parametrize(("text", "level"), [("1", "normal"), ("2\n", "warn"), ("kern.memorystatus_vm_pressure_level: 4",
                                                                                 "critical")])
def test_macos_pressure_levels(text: str, level: str) -> None:
    assert parse_pressure_level(text) == level


def test_macos_an_unknown_level_is_an_error_not_normal() -> None:
    with pytest.raises(ValueError, match="none of 1"):
        parse_pressure_level("3")
    with pytest.raises(MemorySourceError, match="unreadable"):
        _mac("", [MAC_VM_STAT], [0.0]).read()


def test_macos_swapping_is_a_swap_out_rate() -> None:
    more = re.sub(r"Swapouts:(\s+)929703\.", r"Swapouts:\g<1>930903.", MAC_VM_STAT)  # +1200 pages
    assert more != MAC_VM_STAT
    src = _mac("2", [MAC_VM_STAT, more, more], [0.0, 10.0, 20.0])
    assert src.read().swapping is None
    assert src.read().swapping is True  # 120 pages/s
    assert src.read().swapping is False  # none since


# ------------------------------------------------------------------ the registry
def test_registry_names_and_lazy_implementations() -> None:
    assert SOURCE_NAMES[0] == "auto" and set(SOURCES) == {"host", "psi", "cgroup-v1", "cgroup-v2", "macos"}
    for info in SOURCES.values():
        module, _, cls = info.implementation.partition(":")
        assert cls and module.startswith("spotleash.agent.memory.")
    assert isinstance(build_source("host", V1).read(), MemoryReading)
    assert build_source("auto", V1, platform="linux").read().source.startswith("cgroup v1")
    with pytest.raises(ValueError, match="unknown memory source 'swap'"):
        build_source("swap", V1)
