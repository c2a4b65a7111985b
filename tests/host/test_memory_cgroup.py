"""The memory sources on this machine's kernel: a real memory-limited cgroup, a real process filling it.

Root can create cgroup v1 memory cgroups here (platform facts, "cgroup"): the fixture makes one of
512 MB, starts a child that puts itself in it before it runs Python, allocates and touches ~300 MB,
and reports — from inside — its own footprint, the automatic source's reading and psutil's total.
The contract (tests/support/memory_contract.py) then holds the cgroup source to those figures. Where
no cgroup can be written the tests skip, saying why. The cgroup is removed afterwards, always.

``SPOTLEASH_RECORD_MEMORY_TREE=DIR`` copies the files the sources read into DIR (how
tests/support/memory_trees/cgroup_v1 was made).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.memory_contract import MB, MemorySourceContract, MemoryWorld

from spotleash.agent.memory.cgroup import CgroupV1
from spotleash.agent.memory.reading import MemoryReading
from spotleash.polling import wait_until

V1_ROOT = Path("/sys/fs/cgroup/memory")
LIMIT = 512 * MB
HOLD = 300 * MB

CHILD = textwrap.dedent("""
    import dataclasses, json, os, sys
    import psutil
    from spotleash.supervisor.footprint import footprint
    from spotleash.agent.memory import build_source
    buf = bytearray(int(sys.argv[1]))
    for i in range(0, len(buf), 4096):  # touch every page: resident, charged to the cgroup
        buf[i] = 1
    reading = build_source("auto").read()
    print(json.dumps({"auto": dataclasses.asdict(reading), "rss": footprint(os.getpid()).rss_bytes,
                      "psutil_total": psutil.virtual_memory().total}), flush=True)
    sys.stdin.read()  # hold the memory until the test closes stdin
""")


def _writable_v1() -> str | None:
    """Why no cgroup can be made here, or None."""
    if not (V1_ROOT / "memory.limit_in_bytes").exists():
        return f"no cgroup v1 memory controller mounted at {V1_ROOT} (this machine: {Path('/proc/self/cgroup').read_text()!r})"
    if not os.access(V1_ROOT, os.W_OK):
        return f"{V1_ROOT} is not writable by uid {os.getuid()}: creating a memory cgroup needs root"
    return None


def _record(dest: Path, pid: int, cgroup: Path) -> None:
    """Copy what the sources read (as the child sees it) into ``dest``, the cgroup renamed to a fixed name."""
    name = "spotleash-contract"
    for src, rel in ((f"/proc/{pid}/cgroup", "proc/self/cgroup"), (f"/proc/{pid}/mountinfo", "proc/self/mountinfo"),
                     ("/proc/meminfo", "proc/meminfo"), ("/proc/pressure/memory", "proc/pressure/memory")):
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(Path(src).read_text().replace(cgroup.name, name))
    cg = dest / "sys/fs/cgroup/memory" / name
    cg.mkdir(parents=True, exist_ok=True)
    for f in ("memory.limit_in_bytes", "memory.usage_in_bytes", "memory.stat"):
        shutil.copyfile(cgroup / f, cg / f)
    unified = dest / "sys/fs/cgroup/unified"
    unified.mkdir(parents=True, exist_ok=True)
    shutil.copyfile("/sys/fs/cgroup/unified/cgroup.controllers", unified / "cgroup.controllers")


@pytest.fixture
def v1_cgroup() -> Iterator[Path]:
    why = _writable_v1()
    if why:
        pytest.skip(why)
    d = V1_ROOT / f"spotleash-test-{uuid.uuid4().hex[:8]}"
    d.mkdir()
    try:
        (d / "memory.limit_in_bytes").write_text(str(LIMIT))
        yield d
    finally:
        def empty() -> bool:
            return not (d / "cgroup.procs").read_text().split()
        wait_until(empty, timeout_s=10, interval_s=0.1, what=f"{d} to have no processes")
        d.rmdir()


class TestRealCgroupV1(MemorySourceContract):
    @pytest.fixture
    def world(self, v1_cgroup: Path) -> Iterator[MemoryWorld]:
        procs = v1_cgroup / "cgroup.procs"
        # the shell puts itself in the cgroup, then becomes Python: everything the child does is charged there
        child = subprocess.Popen(
            ["sh", "-c", f'echo $$ > {procs} && exec "$0" -c "$1" "$2"', sys.executable, CHILD, str(HOLD)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            assert child.stdout is not None and child.stdin is not None
            line = child.stdout.readline()
            assert line, f"the child died before reporting (exit {child.wait(timeout=10)})"
            report = json.loads(line)
            assert str(child.pid) in procs.read_text().split()
            record = os.environ.get("SPOTLEASH_RECORD_MEMORY_TREE")
            if record:
                _record(Path(record), child.pid, v1_cgroup)
                (Path(record) / "expect.json").write_text(json.dumps(
                    {"limit_bytes": LIMIT, "tree_rss_bytes": report["rss"], "psutil_total_bytes": report["psutil_total"]},
                    indent=1) + "\n")
            reading = MemoryReading(**report["auto"])
            yield MemoryWorld(source=CgroupV1(path=v1_cgroup), cgroup_dir=v1_cgroup, limit_bytes=LIMIT,
                              tree_rss_bytes=report["rss"], auto_reading=lambda: reading,
                              psutil_total_bytes=report["psutil_total"])
        finally:
            if child.stdin is not None:
                child.stdin.close()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(timeout=10)

    def test_the_figures_measured(self, world: MemoryWorld) -> None:
        """Not a contract rule: prints what this machine measured (the report quotes it)."""
        r = world.source.read()
        t = time.strftime("%H:%M:%S")
        print(f"\n[{t}] cgroup {world.cgroup_dir.name}: limit {r.limit_bytes / MB:.0f} MB, used {r.used_bytes / MB:.1f} MB "
              f"(child RSS {world.tree_rss_bytes / MB:.1f} MB), available {r.available_bytes / MB:.1f} MB; "
              f"auto: {world.auto_reading().source}; psutil total {world.psutil_total_bytes / MB:.0f} MB")
        assert r.used_bytes >= HOLD
