"""The local agent (a real ``python -m spotleash.agent``) killed or stopped at the worst moments.

SIGKILL leaves no release: the lease stops being renewed and the reaper must delete what it had.
SIGTERM publishes a release: on_release (or the launcher itself, if the create is still in flight)
must delete it.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.chaos.conftest import PENDING_BOUND, REAP_BOUND, SEEDS, Chaos, new_lease, observed

from spotleash.model import State
from spotleash.polling import wait_until

pytestmark = [pytest.mark.chaos]

CLIMB = Path(__file__).resolve().parents[2] / "shared" / "spotleash" / "agent" / "traces" / "climb.csv"


class Agent:
    def __init__(self, chaos: Chaos, tmp: Path, lease_id: str, trace: Path, speed: float) -> None:
        env = {k: v for k, v in os.environ.items()}
        env.update({"SPOTLEASH_STATE_DIR": str(tmp / f"agent-{lease_id}"), "SPOTLEASH_SHUTDOWN_BUDGET_S": "5",
                    "PYTHONUNBUFFERED": "1"})
        self.log_path = tmp / f"agent-{lease_id}.log"
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "spotleash.agent", "--lease-id", lease_id, "--trace", str(trace),
                 "--trace-speed", str(speed)],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def kill(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)
        self.proc.wait(timeout=15)


@pytest.fixture
def agents(chaos: Chaos, tmp_path: Path) -> Iterator[list[Agent]]:
    started: list[Agent] = []
    try:
        yield started
    finally:
        for a in started:
            if a.proc.poll() is None:
                os.killpg(a.proc.pid, signal.SIGKILL)
                a.proc.wait(timeout=10)


def _start(chaos: Chaos, tmp: Path, agents: list[Agent], lid: str, trace: Path = CLIMB, speed: float = 10.0) -> Agent:
    a = Agent(chaos, tmp, lid, trace, speed)
    agents.append(a)
    return a


def _flat_trace(tmp: Path) -> Path:
    p = tmp / "flat.csv"
    p.write_text("t_seconds,percent\n" + "".join(f"{t},50.0\n" for t in range(0, 600, 5)))
    return p


@pytest.mark.parametrize("seed", SEEDS)
def test_agent_sigkill_while_idle(chaos: Chaos, agents: list[Agent], tmp_path: Path, seed: int) -> None:
    lid = new_lease("idle")
    with observed(chaos) as obs:
        a = _start(chaos, tmp_path, agents, lid, _flat_trace(tmp_path))
        wait_until(lambda: chaos.store.get_lease(lid), timeout_s=30, what="the agent's lease")
        time.sleep(random.Random(seed).uniform(0, 2))
        a.kill(signal.SIGKILL)
        t0 = time.monotonic()
        chaos.verdict("agent SIGKILL while idle", obs, [lid], t_fault=t0, bound_s=REAP_BOUND)
    assert not chaos.records_of(lid), "an idle agent made no demand, so no instance"


@pytest.mark.parametrize("seed", SEEDS)
def test_agent_sigkill_while_launching(chaos: Chaos, agents: list[Agent], tmp_path: Path, seed: int) -> None:
    chaos.compute("POST", "config", boot_delay_s=6.0)
    lid = new_lease("launch")
    with observed(chaos) as obs:
        a = _start(chaos, tmp_path, agents, lid)
        wait_until(lambda: [r for r in chaos.records_of(lid) if r.state in (State.REQUESTED, State.PROVISIONING)],
                   timeout_s=60, interval_s=0.1, what="a launch in progress")
        time.sleep(random.Random(seed).uniform(0, 1.5))
        assert not [r for r in chaos.records_of(lid) if r.state == State.READY], "killed before READY"
        a.kill(signal.SIGKILL)
        t0 = time.monotonic()
        chaos.verdict("agent SIGKILL while launching", obs, [lid], t_fault=t0, bound_s=REAP_BOUND + 6, min_seen=1)


@pytest.mark.parametrize("seed", SEEDS)
def test_agent_sigkill_while_running(chaos: Chaos, agents: list[Agent], tmp_path: Path, seed: int) -> None:
    lid = new_lease("running")
    with observed(chaos) as obs:
        a = _start(chaos, tmp_path, agents, lid)
        chaos.wait_ready(lid, timeout_s=90)
        time.sleep(random.Random(seed).uniform(0, 2))
        a.kill(signal.SIGKILL)
        t0 = time.monotonic()
        chaos.verdict("agent SIGKILL while running", obs, [lid], t_fault=t0, bound_s=REAP_BOUND, min_seen=1)
    assert all(r.reason == "lease_expired" for r in chaos.records_of(lid) if r.provider_id)


@pytest.mark.parametrize("seed", SEEDS)
def test_agent_sigterm_during_launch_before_the_vm_runs(chaos: Chaos, agents: list[Agent], tmp_path: Path,
                                                         seed: int) -> None:
    chaos.compute("POST", "config", boot_delay_s=8.0)
    lid = new_lease("term")
    with observed(chaos) as obs:
        a = _start(chaos, tmp_path, agents, lid)
        wait_until(lambda: [v for v in chaos.vms() if v["labels"].get("spotleash-lease") == lid
                            and v["status"] != "RUNNING"], timeout_s=60, interval_s=0.1, what="a booting VM")
        time.sleep(random.Random(seed).uniform(0, 1.0))
        t0 = time.monotonic()
        a.kill(signal.SIGTERM)
        assert a.proc.returncode == 0, a.log_path.read_text()[-2000:]
        # The release arrives while the create is still in flight: whoever sees it last deletes the VM.
        chaos.verdict("agent SIGTERM during launch", obs, [lid], t_fault=t0, bound_s=PENDING_BOUND, min_seen=1)
    reasons = [r.reason for r in chaos.records_of(lid)]
    assert reasons and all(reasons), reasons
