"""The demo's memory line from recorded agent log lines and recorded kernel files (no I/O but tmp files)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from spotleash.demo.memory import MB, MemoryTally, freed_line, freed_of, memory_line, oom_counter

TREES = Path(__file__).resolve().parents[2] / "support" / "memory_trees"


def test_peak_is_the_highest_reading_and_freed_sums_each_components_stops() -> None:
    tally = MemoryTally()
    tally.feed_lines([
        json.dumps({"message": "demand: moving components off this machine", "ram_percent": 91.4,
                    "freed_mb": 600, "components": ["ballast"]}),  # placement's plan frees nothing yet
        json.dumps({"message": "component stopped", "component": "ballast", "rss_bytes": 612 * MB}),  # the same stop
        json.dumps({"message": "local copy stopped: its remote copy serves", "component": "ballast",
                    "freed_bytes": 612 * MB}),
        json.dumps({"message": "local copy stopped: its remote copy serves", "component": "vectors",
                    "freed_bytes": 300 * MB, "ram_percent": 62.0}),
        json.dumps({"message": "local copy stopped: its remote copy serves", "component": "ballast",
                    "freed_bytes": 600 * MB}),
        "not json at all",
        json.dumps(["a", "list"]),
    ])
    assert tally.peak_percent == 91.4
    assert tally.freed == {"ballast": 1212 * MB, "vectors": 300 * MB} and tally.stops == 3
    assert memory_line(tally, 0) == "memory: 91.4 % peak, 1512 MB freed, 0 OOM kills"


def test_a_stop_report_needs_a_component_and_a_byte_count() -> None:
    assert freed_of({"message": "local copy stopped", "component": "x", "freed_bytes": 5}) == ("x", 5)
    assert freed_of({"message": "local copy stopped", "freed_bytes": 5}) is None
    assert freed_of({"message": "component stopped", "component": "x", "rss_bytes": 5}) is None  # the supervisor's
    assert freed_of({"message": "local copy stopped", "component": "x", "freed_bytes": True}) is None
    assert freed_of({"message": "anything", "component": "x", "freed_bytes": -1}) is None
    assert freed_line("x", 612 * MB) == "freed: x stopped locally, 612 MB given back"


def test_nothing_read_says_so_and_nothing_stopped_frees_zero() -> None:
    assert memory_line(MemoryTally(), None) == "memory: ? % peak, 0 MB freed, ? OOM kills"


def test_oom_kills_come_from_the_limited_cgroup_the_demo_runs_in(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    shutil.copytree(TREES / "cgroup_v1", root)
    counter_file = root / "sys/fs/cgroup/memory/spotleash-contract/memory.oom_control"
    counter_file.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    (root / "proc/vmstat").write_text("nr_free_pages 1\noom_kill 40\n")
    c = oom_counter(root)
    assert c is not None and c.what.startswith("cgroup v1 ") and c.kills() == 0
    counter_file.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    assert c.kills() == 1


def test_without_a_limited_cgroup_the_machine_counter_is_read(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    shutil.copytree(TREES / "cgroup_v1", root)
    (root / "sys/fs/cgroup/memory/spotleash-contract/memory.limit_in_bytes").write_text(str(2**63 - 4096))
    stat = root / "sys/fs/cgroup/memory/spotleash-contract/memory.stat"
    stat.write_text("\n".join(ln for ln in stat.read_text().splitlines()
                              if not ln.startswith("hierarchical_memory_limit")) + "\n")
    (root / "proc/vmstat").write_text("nr_free_pages 1\noom_kill 40\n")
    c = oom_counter(root)
    assert c is not None and c.what == "the machine (/proc/vmstat)" and c.kills() == 0
    (root / "proc/vmstat").write_text("nr_free_pages 1\noom_kill 44\n")
    assert c.kills() == 4
    (root / "proc/vmstat").unlink()
    assert c.kills() is None
