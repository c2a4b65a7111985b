"""The VAST fake box's GPUs: its nvidia-smi (run as a box runs it) reports the offer's GPUs in the formats our
agent and common tools query, and the control API's load is what it reports next."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from local_emulator.vast import gpus
from local_emulator.vast.errors import VastApiError
from spotleash.instance_agent.idle import GPU_QUERY, parse_gpu_query
from spotleash.wire.events import GpuReport

OFFER = {"gpu_name": "RTX 4090", "num_gpus": 2, "gpu_ram": 24564, "machine_id": 10123}


def smi(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": os.pathsep.join([str(gpus.BIN), os.environ["PATH"]]),
           **gpus.box_env(folder, gpus.initial_state(OFFER, 21000001))}
    return subprocess.run(["nvidia-smi", *args], env=env, capture_output=True, text=True, timeout=30, check=False)


@pytest.fixture()
def box(tmp_path: Path) -> Path:
    gpus.write_state(tmp_path, gpus.initial_state(OFFER, 21000001))
    return tmp_path


def test_the_agent_s_query_reads_the_offer_s_gpus_and_their_load(box: Path) -> None:
    out = smi(box, *GPU_QUERY[1:])
    assert out.returncode == 0, out.stderr
    idle = GpuReport(name="NVIDIA GeForce RTX 4090", memory_total_mib=24564, memory_used_mib=0, utilization_percent=0)
    assert parse_gpu_query(out.stdout) == [idle, idle]
    gpus.set_load(box, {"utilization_percent": [90, 0], "memory_used_mib": 8192})
    busy, loaded = parse_gpu_query(smi(box, *GPU_QUERY[1:]).stdout)
    assert (busy.utilization_percent, busy.memory_used_mib) == (90.0, 8192)
    assert (loaded.utilization_percent, loaded.memory_used_mib) == (0.0, 8192)


def test_the_formats_common_tools_ask_for(box: Path) -> None:
    with_units = smi(box, "--query-gpu=index,name,memory.total,memory.free", "--format=csv")
    assert with_units.stdout.splitlines() == [
        "index, name, memory.total [MiB], memory.free [MiB]",
        "0, NVIDIA GeForce RTX 4090, 24564 MiB, 24564 MiB",
        "1, NVIDIA GeForce RTX 4090, 24564 MiB, 24564 MiB"]
    listed = smi(box, "-L").stdout.splitlines()
    assert len(listed) == 2 and listed[1].startswith("GPU 1: NVIDIA GeForce RTX 4090 (UUID: GPU-")
    assert smi(box, "-i", "1", "--query-gpu=index", "--format=csv,noheader").stdout == "1\n"
    assert smi(box, "--query-gpu=count", "--format=csv,noheader").stdout.splitlines() == ["2", "2"]
    summary = smi(box)
    assert summary.returncode == 0 and "CUDA Version" in summary.stdout and "24564MiB" in summary.stdout
    unknown = smi(box, "--query-gpu=name,warp.speed", "--format=csv")
    assert unknown.returncode == 2 and 'Field "warp.speed" is not a valid field to query.' in unknown.stderr
    assert smi(box, "--query-gpu=name").returncode == 2  # --format is required with a query


def test_a_box_without_its_gpu_state_fails_as_a_missing_driver_does(tmp_path: Path) -> None:
    out = smi(tmp_path, *GPU_QUERY[1:])  # the state file was never written
    assert out.returncode == 9 and "couldn't communicate with the NVIDIA driver" in out.stderr


def test_the_box_s_environment_shows_its_gpus(box: Path) -> None:
    env = gpus.box_env(box, gpus.initial_state(OFFER, 21000001))
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1" and env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert gpus.driver_name("A100 SXM4") == "NVIDIA A100-SXM4-80GB" and gpus.driver_name("L40S") == "NVIDIA L40S"


@pytest.mark.parametrize("body", [{}, {"utilisation": 5}, {"utilization_percent": 101},
                                  {"utilization_percent": [1, 2, 3]}, {"memory_used_mib": 24565},
                                  {"memory_used_mib": True}, [1]])
def test_a_wrong_load_is_refused_and_changes_nothing(box: Path, body: object) -> None:
    before = (box / gpus.STATE_FILE).read_text()
    with pytest.raises(VastApiError) as e:
        gpus.set_load(box, body)
    assert e.value.status == 400 and (box / gpus.STATE_FILE).read_text() == before
