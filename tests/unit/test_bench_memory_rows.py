"""The memory section's rows from recorded raw figures: every split, the targets judged from the worst run."""

from __future__ import annotations

from bench.memory_handoff import memory_rows
from bench.stats import summary

RUN = {"footprint_mb": 612.0, "freed_mb": 600.0, "freed_of_footprint": 0.98, "demand_to_ready_s": 21.0,
       "ready_to_remote_serving_s": 1.2, "remote_serving_to_stopped_s": 0.4, "remote_serving_to_freed_s": 0.5,
       "headroom_back_to_local_answers_s": 6.1, "local_answers_to_released_s": 1.1, "failed_requests": 0,
       "oom_kills": 0}


def test_rows_name_every_split_and_judge_the_targets_on_the_worst_run() -> None:
    slow = {**RUN, "remote_serving_to_freed_s": 2.5, "freed_of_footprint": 0.85}
    rest = {"seconds": 20.0, "agent_cpu_percent": summary([0.2, 0.4]), "agent_rss_mb": summary([80.0, 81.0])}
    rows = {r["key"]: r for r in memory_rows({"runs": [RUN, slow], "laptop_mb": 2048, "ballast_mb": 600,
                                              "rest": rest})}
    assert list(rows) == ["mem_demand_ready", "mem_stop", "mem_freed", "mem_freed_share", "mem_home", "mem_release",
                          "mem_rest_cpu", "mem_rest_rss"]
    assert rows["mem_freed"]["within_target"] is False and rows["mem_freed"]["max"] == 2.5
    assert rows["mem_freed_share"]["within_target"] is False and rows["mem_freed_share"]["median"] == 91.5
    assert rows["mem_release"]["within_target"] is True
    assert rows["mem_rest_cpu"]["within_target"] is True and rows["mem_rest_rss"]["within_target"] is True


def test_a_skipped_section_has_no_rows() -> None:
    assert memory_rows({"skipped": "no cgroup"}) == []
    assert memory_rows({"runs": []}) == []
