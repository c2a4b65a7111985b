"""The instance agent's side of snapshots and idleness, as pure decisions: which state paths, what a
heartbeat reply asks for, how long the box has been idle (the rule in ``instance_agent.idle``)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from spotleash.instance_agent.agent import snapshot_request_of
from spotleash.instance_agent.idle import GPU_MEMORY_STEP_MIB, GPU_QUERY, GpuProbe, IdleClock, parse_gpu_query
from spotleash.instance_agent.keeper import fingerprint, new_snapshot_id, resolve_state_paths
from spotleash.instance_agent.snapshot.common import SnapshotError
from spotleash.instance_agent.snapshot.restore import MAX_RESTORE_WAIT_S, restore
from spotleash.instance_agent.snapshot.take import take_snapshot
from spotleash.wire.events import GpuReport
from spotleash.wire.ids import ID_PATTERN
from spotleash.wire.snapshot import (
    SNAPSHOT_REQUEST_FIELD,
    Noted,
    Refused,
    RestoredAsk,
    RestoreGrant,
    RestoreWait,
    SnapshotAsk,
    SnapshotReply,
    SnapshotRequest,
    UploadAsk,
)


def test_state_paths_configured_then_declared_then_the_providers_default() -> None:
    assert resolve_state_paths("vast", [], [], env={}) == [Path("/workspace")]
    assert resolve_state_paths("gce", [], [], env={}) == []
    assert resolve_state_paths("gce", [], ["/var/lib/app"], env={}) == [Path("/var/lib/app")]
    assert resolve_state_paths("vast", ["/data"], ["/var/lib/app"], env={}) == [Path("/data")]


def test_state_paths_of_a_fake_instance_live_under_its_root(tmp_path: Path) -> None:
    env = {"SPOTLEASH_VM_ROOT": str(tmp_path / "vm")}
    assert resolve_state_paths("vast", [], [], env=env) == [tmp_path / "vm" / "workspace"]
    assert resolve_state_paths("gce", [], ["/var/lib/app"], env=env) == [tmp_path / "vm" / "var/lib/app"]


def test_relative_or_escaping_state_paths_are_refused() -> None:
    with pytest.raises(SnapshotError, match="absolute"):
        resolve_state_paths("gce", ["data"], env={})
    with pytest.raises(SnapshotError, match="absolute"):
        resolve_state_paths("gce", ["/data/../etc"], env={})


def test_a_reply_asks_for_a_snapshot_only_in_its_documented_field() -> None:
    body = json.dumps({"action": "continue", SNAPSHOT_REQUEST_FIELD: {"request_id": "hib-1", "reason": "idle"}})
    assert snapshot_request_of(200, body) == SnapshotRequest(request_id="hib-1", reason="idle")
    assert snapshot_request_of(200, json.dumps({"action": "continue"})) is None
    assert snapshot_request_of(500, body) is None and snapshot_request_of(None, None) is None
    assert snapshot_request_of(200, "not json") is None
    bad = json.dumps({"action": "continue", SNAPSHOT_REQUEST_FIELD: {"request_id": "../x"}})
    assert snapshot_request_of(200, bad) is None


def test_an_upload_ask_says_why_and_which_request() -> None:
    ask = UploadAsk(snapshot_id="s-1", parts=1, trigger="requested", request_id="hib-1")
    assert json.loads(ask.model_dump_json())["request_id"] == "hib-1"
    assert UploadAsk(snapshot_id="s-1", parts=1).trigger == "manual"


def test_snapshot_ids_are_valid_and_unique() -> None:
    import re

    ids = {new_snapshot_id() for _ in range(200)}
    assert len(ids) == 200 and all(re.match(ID_PATTERN, i) for i in ids)


def test_the_fingerprint_changes_with_content_size_or_names_only(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("one")
    first = fingerprint([tmp_path])
    assert fingerprint([tmp_path]) == first
    (tmp_path / "a").write_text("one, longer")
    second = fingerprint([tmp_path])
    assert second != first
    (tmp_path / "b").mkdir()
    assert fingerprint([tmp_path]) != second
    assert fingerprint([tmp_path / "missing"]) == fingerprint([])


def gpu(util: float | None, used: int | None = 0) -> GpuReport:
    return GpuReport(name="NVIDIA GeForce RTX 4090", memory_total_mib=24564, memory_used_mib=used,
                     utilization_percent=util)


def test_idle_counts_from_the_last_busy_moment() -> None:
    clock = IdleClock(100.0, cpu_threshold=10.0, gpu_threshold=10.0)
    assert clock.observe(130.0, cpu_percent=3.0) == 30.0  # never busy: since the agent started
    assert clock.observe(160.0, cpu_percent=55.0) == 0.0  # CPU busy
    assert clock.observe(190.0, cpu_percent=2.0, gpus=[gpu(4.0), gpu(9.9)]) == 30.0
    assert clock.observe(200.0, cpu_percent=2.0, gpus=[gpu(0.0), gpu(80.0)]) == 0.0  # one GPU busy
    assert clock.observe(260.0, cpu_percent=2.0, last_request_at=250.0) == 10.0  # a request through the front
    assert clock.observe(300.0, cpu_percent=2.0, last_request_at=250.0) == 50.0  # the same request again: old
    assert clock.observe(310.0, cpu_percent=10.0) == 0.0  # the threshold itself is busy
    off = IdleClock(100.0, cpu_threshold=0.0, gpu_threshold=10.0)
    assert off.observe(130.0, cpu_percent=100.0) == 30.0  # 0: CPU never makes the box busy
    assert off.observe(140.0, cpu_percent=100.0, last_request_at=135.0) == 5.0  # requests still do


def test_gpu_memory_that_moves_is_busy_and_memory_that_stays_is_not() -> None:
    clock = IdleClock(0.0, cpu_threshold=10.0, gpu_threshold=10.0)
    assert clock.observe(30.0, cpu_percent=0.0, gpus=[gpu(0.0, 0), gpu(0.0, 0)]) == 30.0  # first reading
    assert clock.observe(60.0, cpu_percent=0.0, gpus=[gpu(0.0, 0), gpu(2.0, 9000)]) == 0.0  # weights loading
    assert clock.observe(90.0, cpu_percent=0.0, gpus=[gpu(0.0, 0), gpu(0.0, 9000)]) == 30.0  # resident, unused
    assert clock.observe(120.0, cpu_percent=0.0, gpus=[gpu(0.0, 0), gpu(0.0, 9000 + GPU_MEMORY_STEP_MIB - 1)]) == 60.0
    assert clock.observe(150.0, cpu_percent=0.0, gpus=[gpu(0.0, 0), gpu(0.0, 100)]) == 0.0  # freed: work ended
    assert clock.observe(180.0, cpu_percent=0.0, gpus=[gpu(None, None), gpu(None, None)]) == 30.0  # [N/A]: no sign
    assert clock.observe(210.0, cpu_percent=0.0, gpus=[gpu(0.0, 20000), gpu(0.0, 100)]) == 60.0  # after N/A: a new base
    assert clock.observe(240.0, cpu_percent=0.0, gpus=[gpu(0.0, 20000)]) == 90.0  # a GPU gone from the list


def test_gpu_readings_from_nvidia_smi_or_none() -> None:
    calls: list[list[str]] = []

    def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, stdout="NVIDIA GeForce RTX 4090, 24564, 1201, 12\n"
                                                            "NVIDIA GeForce RTX 4090, 24564, 0, 87\n", stderr="")

    assert GpuProbe(run, which=lambda _n: "/usr/bin/nvidia-smi").sample() == [gpu(12.0, 1201), gpu(87.0, 0)]
    assert calls == [GPU_QUERY]
    assert GPU_QUERY == ["nvidia-smi", "--query-gpu=name,memory.total,memory.used,utilization.gpu",
                         "--format=csv,noheader,nounits"]
    assert GpuProbe(run, which=lambda _n: None).sample() == []

    def broken(argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, 9, stdout="", stderr="NVIDIA-SMI has failed")

    assert GpuProbe(broken, which=lambda _n: "/usr/bin/nvidia-smi").sample() == []

    def garbled(argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, 0, stdout="12\n87\n", stderr="")

    assert GpuProbe(garbled, which=lambda _n: "/usr/bin/nvidia-smi").sample() == []


def test_the_gpu_query_parser_reads_what_nvidia_smi_writes() -> None:
    assert parse_gpu_query("") == []
    assert parse_gpu_query("NVIDIA A100-SXM4-80GB, 81920, 40960, 100\n\n") == [
        GpuReport(name="NVIDIA A100-SXM4-80GB", memory_total_mib=81920, memory_used_mib=40960,
                  utilization_percent=100.0)]
    # MIG and some virtual GPUs answer [N/A] for utilisation; a name may hold a comma
    assert parse_gpu_query("Odd, Inc. GPU, 16384, [N/A], [Not Supported]") == [
        GpuReport(name="Odd, Inc. GPU", memory_total_mib=16384)]
    for bad, says in (("NVIDIA GeForce RTX 4090, 24564 MiB, 0 MiB, 0 %", "line 1's memory.total is not a number"),
                      ("NVIDIA GeForce RTX 4090, 24564, 0", "is not 'name,memory.total,memory.used,utilization.gpu'"),
                      (", 1, 2, 3", "is not 'name,"),
                      ("GPU, -5, 0, 0", "greater than or equal to 0")):
        with pytest.raises(ValueError, match=re.escape(says)):
            parse_gpu_query(bad)


class ScriptedChannel:
    """The control plane's answers, in order; every ask kept."""

    def __init__(self, *replies: SnapshotReply) -> None:
        self.replies: list[SnapshotReply] = list(replies)
        self.asks: list[SnapshotAsk] = []
        self.budgets: list[float | None] = []

    def ask(self, ask: SnapshotAsk, budget_s: float | None = None) -> SnapshotReply:
        self.asks.append(ask)
        self.budgets.append(budget_s)
        return self.replies.pop(0) if self.replies else Noted()


def test_a_restore_told_to_wait_asks_again_after_the_pause_and_reports_the_wait(tmp_path: Path) -> None:
    channel = ScriptedChannel(RestoreWait(retry_after_s=2.0, detail="sl-old is saving"),
                              RestoreWait(retry_after_s=1.5), RestoreGrant())
    slept: list[float] = []
    out = restore([tmp_path / "state"], channel=channel, spool=tmp_path / "spool", sleep=slept.append)
    assert out.snapshot_id is None and slept == [2.0, 1.5]
    assert [a.op for a in channel.asks] == ["restore", "restore", "restore", "restored"]
    done = channel.asks[-1]
    assert isinstance(done, RestoredAsk) and done.waited_s == min(3.5, done.seconds)


def test_a_restore_waits_no_longer_than_its_own_bound(tmp_path: Path) -> None:
    channel = ScriptedChannel(*[RestoreWait(retry_after_s=60.0)] * 5)
    slept: list[float] = []
    with pytest.raises(SnapshotError, match="unexpected answer 'restore_wait'"):
        restore([tmp_path / "state"], channel=channel, spool=tmp_path / "spool", sleep=slept.append)
    assert sum(slept) == MAX_RESTORE_WAIT_S


def test_every_ask_of_a_snapshot_carries_its_retry_budget(tmp_path: Path) -> None:
    """The keeper gives a preemption snapshot 25 s: the control plane's asks are bounded by it too."""
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "f").write_text("x")
    channel = ScriptedChannel(Refused(detail="no bucket"))
    out = take_snapshot([tmp_path / "state"], snapshot_id="20261130t000000-000000-abcdef01", lease_id="l-1",
                        instance_id="i-1", channel=channel, spool=tmp_path / "spool", retry_budget_s=25.0,
                        trigger="preempted")
    assert not out.verified
    assert [a.op for a in channel.asks] == ["upload", "abandoned"] and channel.budgets == [25.0, 25.0]
