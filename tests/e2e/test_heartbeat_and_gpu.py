"""on_heartbeat over real HTTP, and a GPU demand through the control plane to the VAST fake: the box shows its
offer's GPUs (nvidia-smi, CUDA_VISIBLE_DEVICES) and its beats carry their figures, which the idle rule reads."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import paramiko
import pytest
from tests.e2e.flows import Flows

from local_emulator import stack
from local_emulator.vast import gpus
from spotleash.instance_agent.idle import GPU_QUERY, parse_gpu_query
from spotleash.model import InstanceRecord, State
from spotleash.polling import wait_until
from spotleash.providers.vast import ssh as vast_ssh
from spotleash.wire.events import GpuReport, Heartbeat

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def flows(local_stack: object) -> Flows:
    return Flows()


def _beat(instance_id: str, lease_id: str, token: str) -> httpx.Response:
    body = Heartbeat(instance_id=instance_id, lease_id=lease_id).model_dump_json()
    return httpx.post(os.environ["SPOTLEASH_HEARTBEAT_URL"], content=body, timeout=10,
                      headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})


def test_heartbeat_answers_401_404_and_stop(flows: Flows) -> None:
    from spotleash.services.context import Context

    lid = f"hb-{uuid.uuid4().hex[:8]}"
    with flows.lease_kept(lid):
        flows.demand(lid)
        rec = flows.wait_ready(lid)
        token = Context(settings=flows.settings, store=flows.store).heartbeat_token(rec.instance_id)
        assert _beat(rec.instance_id, lid, token).json()["action"] == "continue"
        assert _beat(rec.instance_id, lid, "0" * len(token)).status_code == 401
        assert _beat("sl-does-not-exist", lid, token).status_code == 404
        bad = httpx.post(os.environ["SPOTLEASH_HEARTBEAT_URL"], content=b"{not json", timeout=10,
                         headers={"Authorization": f"Bearer {token}"})
        assert bad.status_code == 400 and bad.json()["error"] == "bad_json"
        flows.release(lid)
        flows.wait_gone(rec, timeout_s=30)
        reply = _beat(rec.instance_id, lid, token)
        assert reply.status_code == 200 and reply.json()["action"] == "stop"


def test_a_gpu_demand_rents_a_vast_box_that_heartbeats_and_is_destroyed_on_release(flows: Flows) -> None:
    lid = f"gpu-{uuid.uuid4().hex[:8]}"
    with flows.lease_kept(lid):
        flows.demand(lid, gpu=True)
        rec = flows.wait_ready(lid, timeout_s=90)  # the box's own instance agent has heartbeated
        assert rec.provider == "vast" and rec.price_per_hour > 0
        vast = httpx.get(f"{os.environ['SPOTLEASH_VAST_URL']}/_control/inspect", timeout=10).json()
        mine = [i for i in vast["instances"] if str(i.get("id")) == rec.provider_id]
        assert mine, "the VAST fake holds the instance"
        pinned = wait_until(lambda: (flows.store.get(rec.instance_id) or rec).host_key, timeout_s=30,
                            what="the pinned host key")
        assert pinned.split()[0].startswith(("ssh-", "ecdsa-")), "host key pinned at first contact"
        flows.release(lid)
        done = flows.wait_gone(rec, timeout_s=60)
    assert done.state == State.TERMINATED


@pytest.fixture()
def cpu_never_busy(local_stack: Any) -> Iterator[None]:
    """on_demand launches with SPOTLEASH_IDLE_CPU_PERCENT=0: only the GPUs (and requests) keep a box busy, so
    the figures below cannot come from this shared machine's CPU."""
    _set_env(local_stack.state_dir, {"SPOTLEASH_IDLE_CPU_PERCENT": "0"})
    try:
        yield
    finally:
        _set_env(local_stack.state_dir, {"SPOTLEASH_IDLE_CPU_PERCENT": "10"})


def _set_env(state_dir: Path, values: dict[str, str]) -> None:
    path = stack.env_file(state_dir)
    lines = [ln for ln in path.read_text().splitlines() if ln.split("=", 1)[0] not in values]
    path.write_text("\n".join([*lines, *(f"{k}={v}" for k, v in values.items())]) + "\n")
    stack.restart(state_dir, "on_demand")


def _on_the_box(vast_url: str, box: dict[str, Any], host_key: str, command: str) -> str:
    """``command``'s output on the box over its real SSH endpoint (a key of our own on the account, the host key
    the control plane pinned): what the box's own processes see."""
    key = paramiko.ECDSAKey.generate()
    httpx.post(f"{vast_url}/_control/ssh_keys", json={"ssh_key": f"{key.get_name()} {key.get_base64()} test"},
               timeout=10).raise_for_status()
    with vast_ssh.connect(box["ssh_host"], box["ssh_port"], host_key, key) as client:
        code, out, err = vast_ssh.run(client, command)
    assert code == 0, err
    return out


def test_a_vast_box_shows_its_offer_s_gpu_and_its_beats_carry_the_gpu_figures(flows: Flows,
                                                                               cpu_never_busy: None) -> None:
    vast_url = os.environ["SPOTLEASH_VAST_URL"]
    lid = f"gpu-{uuid.uuid4().hex[:8]}"
    with flows.lease_kept(lid):
        flows.demand(lid, gpu=True)
        rec = flows.wait_ready(lid, timeout_s=90)
        box = next(i for i in httpx.get(f"{vast_url}/_control/inspect", timeout=10).json()["instances"]
                   if str(i["id"]) == rec.provider_id)
        want = GpuReport(name=gpus.driver_name(box["gpu_name"]), memory_total_mib=box["gpu_ram"], memory_used_mib=0,
                         utilization_percent=0)

        def record() -> InstanceRecord:
            return flows.store.get(rec.instance_id) or rec

        # the box's nvidia-smi and environment, as its own processes see them
        host_key = wait_until(lambda: record().host_key, timeout_s=30, what="the pinned host key")
        out = _on_the_box(vast_url, box, host_key, f"{' '.join(GPU_QUERY)}; echo CUDA=$CUDA_VISIBLE_DEVICES")
        *lines, cuda = out.strip().splitlines()
        assert parse_gpu_query("\n".join(lines)) == [want] * box["num_gpus"]
        assert cuda == "CUDA=" + ",".join(str(i) for i in range(box["num_gpus"]))

        # the agent's beats carry them; with nothing busy the box's idle time grows
        wait_until(lambda: record().gpus == [want] * box["num_gpus"], timeout_s=30, what="the GPUs in the record")
        wait_until(lambda: record().idle_s >= 3, timeout_s=30, what="an idle box")

        # a busy GPU keeps it busy, beat after beat
        assert httpx.post(f"{vast_url}/_control/gpu/{rec.provider_id}", json={"utilization_percent": 90,
                                                                              "memory_used_mib": 9000},
                          timeout=10).status_code == 200
        wait_until(lambda: (record().gpus[0].utilization_percent, record().gpus[0].memory_used_mib) == (90, 9000),
                   timeout_s=30, what="the GPU's load in the record")
        seen = []
        for _ in range(4):
            seen.append(record().idle_s)
            time.sleep(1.0)
        assert max(seen) < 2.5, seen  # a beat a second; each one busy

        # the model stays in memory, nobody asks: idle again (resident memory does not keep the box awake)
        httpx.post(f"{vast_url}/_control/gpu/{rec.provider_id}", json={"utilization_percent": 0}, timeout=10)
        wait_until(lambda: record().idle_s >= 3 and record().gpus[0].memory_used_mib == 9000, timeout_s=30,
                   what="idle with the memory still used")
        flows.release(lid)
        done = flows.wait_gone(rec, timeout_s=60)
    assert done.state == State.TERMINATED

