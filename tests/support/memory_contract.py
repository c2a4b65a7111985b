"""What every cgroup memory source must report, as one test body run against two worlds.

    class TestRecordedCgroup(MemorySourceContract):   # tests/unit/test_memory_sources.py
        @pytest.fixture
        def world(self) -> MemoryWorld: ...           # a tree recorded from a real 512 MB cgroup

    class TestRealCgroup(MemorySourceContract):       # tests/host/test_memory_cgroup.py
        @pytest.fixture
        def world(self) -> MemoryWorld: ...           # a cgroup made now, a child allocating in it

The recorded tree is a copy of the real one's files at one moment, so the unit tier proves the
parsing and the arithmetic without root; the host tier proves the same figures on the live kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from spotleash.agent.memory.reading import MemoryReading, MemorySource

MB = 2**20


@dataclass(frozen=True)
class MemoryWorld:
    source: MemorySource  # the cgroup source, pointed at the world's cgroup directory
    cgroup_dir: Path
    limit_bytes: int  # the limit written into the cgroup
    tree_rss_bytes: int  # what the process in the cgroup measured of itself (its footprint) at that moment
    auto_reading: Callable[[], MemoryReading]  # the automatic choice, as seen from inside the cgroup
    psutil_total_bytes: int  # psutil.virtual_memory().total as seen from inside the cgroup
    tolerance_bytes: int = 96 * MB  # the interpreter's file cache and kernel memory charged to the cgroup


class MemorySourceContract:
    def test_reports_the_cgroups_own_limit(self, world: MemoryWorld) -> None:
        r = world.source.read()
        assert r.limit_bytes == world.limit_bytes
        assert str(world.cgroup_dir) in r.source

    def test_usage_is_what_the_process_in_it_holds(self, world: MemoryWorld) -> None:
        r = world.source.read()
        assert abs(r.used_bytes - world.tree_rss_bytes) <= world.tolerance_bytes, (r, world.tree_rss_bytes)

    def test_headroom_is_the_limit_minus_the_usage(self, world: MemoryWorld) -> None:
        r = world.source.read()
        assert r.available_bytes == r.limit_bytes - r.used_bytes
        assert 0 < r.used_fraction < 1

    def test_the_automatic_choice_inside_is_the_cgroup(self, world: MemoryWorld) -> None:
        r = world.auto_reading()
        assert r.source.startswith("cgroup v") and r.limit_bytes == world.limit_bytes
        assert abs(r.used_bytes - world.tree_rss_bytes) <= world.tolerance_bytes

    def test_psutil_does_not_see_the_limit(self, world: MemoryWorld) -> None:
        assert world.psutil_total_bytes > 2 * world.limit_bytes
