"""Real memory, end to end (issue 22, "Done when"): a memory-limited cgroup is the laptop.

A 2 GB cgroup (v1 ``memory.limit_in_bytes`` here, v2 ``memory.max`` elsewhere) holds the real agent
(``python -m spotleash.agent``, reading the cgroup: ``SPOTLEASH_MEMORY_SOURCE=cgroup-v1``/``-v2``) and the local
copy it starts of ``ballast``, a component that really holds 600 MB. A hog in the same cgroup grows 64 MB at a
time until the agent demands; a load runs through the router the whole time; the cgroup's usage and OOM-kill
counter are sampled from outside (local_emulator/laptop/cgroups.py, no spotleash code).

Asserted on what main does today: the demand fires from the cgroup's own figures and names ``ballast``; its
instance (a Compute fake VM running the published app) gets READY and serves the traffic; 0 failed requests;
OOM-kill counter 0; the hog ends → the remote copy is released → 0 failed requests again.

Asserted once the hand-off has landed (``handoff_landed()``; ``SPOTLEASH_EXPECT_HANDOFF=1``/``0`` forces it):
the local copy is stopped once the remote serves, the cgroup's working set falls by at least 90 % of the copy's
measured footprint (within 2 s of the remote serving, as the issue's target, reported, not asserted); when the
hog ends the local copy comes home and answers before the remote copy is released.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.flows import Flows
from tests.support.memory_app import handoff_landed

from local_emulator.laptop.ballast import (
    Hog,
    Sampler,
    agent_env,
    answers,
    ballast_app,
    grow_until_demand,
    local_copy_pids,
    published,
    start_agent,
    top_up,
    tree_rss,
)
from local_emulator.laptop.cgroups import MB, MemoryCgroup, memory_cgroup, why_not_writable
from local_emulator.load import Load
from local_emulator.procs import free_port
from spotleash.model import ENDED, InstanceRecord, State
from spotleash.polling import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

LAPTOP = 2048 * MB
BALLAST_MB = 600
INSTANCE_PORT = 8147  # the fake VM's copy binds it on this machine
READY_TIMEOUT_S = 240.0
FIGURES = Path(__file__).resolve().parents[2] / "bench" / "results" / "tmp" / "memproof.json"  # the last run's


@pytest.fixture
def laptop() -> Iterator[MemoryCgroup]:
    why = why_not_writable()
    if why:
        pytest.skip(why)
    with memory_cgroup(LAPTOP, prefix="spotleash-laptop") as cg:
        yield cg


@pytest.fixture
def app(local_stack: Any, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The ballast app published through the CLI, the launchers restarted with the package bucket."""
    ports = {"local_port": free_port(), "route_port": free_port()}
    config = ballast_app(tmp_path / "app", mb=BALLAST_MB, port=INSTANCE_PORT, **ports)
    with published(local_stack.state_dir, config, tmp_path) as result:
        yield {"config": config, **ports, "publish": result}


def ready_of(flows: Flows, lease_id: str) -> InstanceRecord | None:
    for r in flows.records_of(lease_id):
        if r.state in ENDED:
            raise AssertionError(f"{r.instance_id} ended {r.state}: {r.reason}")
        if r.state == State.READY:
            return r
    return None


def test_real_memory_moves_off_the_laptop_and_comes_home(laptop: MemoryCgroup, app: dict[str, Any],
                                                         tmp_path: Path) -> None:
    cg, lease_id = laptop, f"memproof-{uuid.uuid4().hex[:6]}"
    flows = Flows()
    handoff = handoff_landed()
    log = tmp_path / "agent.log"
    local_url = f"http://127.0.0.1:{app['local_port']}/healthz"
    route_url = f"http://127.0.0.1:{app['route_port']}/healthz"
    figures: dict[str, Any] = {"handoff_asserted": handoff, "cgroup": f"v{cg.version} {cg.dir}",
                               "limit_mb": cg.limit() // MB}
    agent = start_agent(cg, lease_id, agent_env(cg, app["config"], tmp_path, free_port()), log)
    rec: InstanceRecord | None = None
    try:
        with Sampler(cg) as sampler:
            wait_until(lambda: answers(local_url), timeout_s=60, interval_s=0.2, what="the agent's local copy")
            wait_until(lambda: answers(route_url), timeout_s=30, interval_s=0.2, what="the router")
            assert agent.pid in cg.pids(), "the agent runs in the laptop cgroup"
            copy = local_copy_pids(cg, "ballast")
            assert copy, "the local copy of ballast runs in the laptop cgroup (started by the agent)"
            footprint = tree_rss(copy)
            figures["footprint_mb"] = round(footprint / MB, 1)
            assert footprint >= BALLAST_MB * MB, f"ballast holds {footprint / MB:.0f} MB"

            with Load({"ballast": route_url}) as load:
                # ---- the hog grows until the agent demands, from the cgroup's own figures
                hog = Hog(cg)
                demand = grow_until_demand(hog, cg, log)
                t_demand = time.monotonic()
                figures.update(hog_mb=hog.held_mb, demand=demand.get("message"), demand_source=demand.get("source"),
                               demand_ram_percent=demand.get("ram_percent"), demand_limit_mb=demand.get("limit_mb"))
                assert f"cgroup v{cg.version}" in str(demand.get("source")) and cg.dir.name in str(demand.get("source"))
                assert demand.get("limit_mb") == LAPTOP // MB, demand
                assert demand.get("components") == ["ballast"], demand
                # a model load on top: the laptop stays short even without the copy (no coming home before the hog ends)
                top_up(hog, cg, 0.91, step_mb=32)
                time.sleep(0.5)
                set_before = cg.working_set()  # the laptop full, the copy running: what the hand-off must lower

                # ---- the remote copy gets READY and serves
                rec = wait_until(lambda: ready_of(flows, lease_id), timeout_s=READY_TIMEOUT_S, interval_s=0.5,
                                 what=f"a READY instance of {lease_id}")
                figures["demand_to_ready_s"] = round(time.monotonic() - t_demand, 1)
                ready_rec = rec
                wait_until(lambda: load.last_served_by == ready_rec.instance_id, timeout_s=60, interval_s=0.1,
                           what=f"the load served by {ready_rec.instance_id}")
                t_remote = time.monotonic()

                if handoff:  # ---- the local copy is stopped and its memory is given back
                    wait_until(lambda: not local_copy_pids(cg, "ballast"), timeout_s=30, interval_s=0.05,
                               what="the local copy of ballast stopped")
                    figures["remote_serving_to_stopped_s"] = round(time.monotonic() - t_remote, 2)

                    def freed() -> int | None:
                        gone = set_before - cg.working_set()
                        return gone if gone >= 0.9 * footprint else None

                    got = wait_until(freed, timeout_s=10, interval_s=0.05,
                                     what=f"the cgroup's working set to fall by 90 % of {footprint / MB:.0f} MB")
                    figures["remote_serving_to_freed_s"] = round(time.monotonic() - t_remote, 2)
                    figures["freed_mb"] = round(got / MB, 1)
                    figures["freed_of_footprint"] = round(got / footprint, 3)
                else:
                    time.sleep(3)
                    figures["local_copy_still_running"] = bool(local_copy_pids(cg, "ballast"))
                time.sleep(2)  # requests keep flowing through the hand-off
                figures["failed_phase1"] = list(load.failures)
                figures["served_phase1"] = dict(load.served)
                assert load.failures == [], load.failures[:5]
                assert cg.oom_kills() == 0, "a process of the laptop was OOM-killed"

                # ---- the hog ends: the component comes home, the remote copy is released
                assert hog.end() == 0
                t_home = time.monotonic()
                home_at: list[float] = []

                def released() -> InstanceRecord | None:
                    if not home_at and answers(local_url):
                        home_at.append(time.monotonic())
                    r = flows.store.get(ready_rec.instance_id)
                    return r if r is not None and r.state in ENDED else None

                ended = wait_until(released, timeout_s=120, interval_s=0.1,
                                   what=f"{ready_rec.instance_id} released once the hog ended")
                t_released = time.monotonic()
                flows.wait_gone(ended, timeout_s=60)
                wait_until(lambda: load.last_served_by == "local", timeout_s=30, interval_s=0.1,
                           what="the load served locally again")
                figures["hog_end_to_released_s"] = round(t_released - t_home, 1)
                if handoff:
                    assert home_at, "the remote copy was released before the local copy answered again"
                    figures["local_answers_to_released_s"] = round(t_released - home_at[0], 2)
                    assert local_copy_pids(cg, "ballast"), "the local copy runs in the laptop again"
                time.sleep(2)
            figures["failed_total"] = list(load.failures)
            figures["served_total"] = dict(load.served)
            assert load.failures == [], load.failures[:5]
            figures["oom_kills"] = cg.oom_kills()
            assert figures["oom_kills"] == 0
            figures["peak_usage_mb"] = round(sampler.peak_usage() / MB, 1)
            figures["peak_percent"] = round(100 * sampler.peak_usage() / LAPTOP, 1)
        os.kill(agent.pid, signal.SIGTERM)
        assert agent.wait(timeout=30) == 0, log.read_text()[-3000:]
        # the agent's clean exit stops its local copies: nothing of it is left in the laptop
        wait_until(lambda: not cg.pids(), timeout_s=15, interval_s=0.1, what="the laptop cgroup empty")
    finally:
        if agent.poll() is None:
            os.killpg(agent.pid, signal.SIGKILL)
            agent.wait(timeout=10)
        if rec is not None and flows.records_of(lease_id) and any(r.live for r in flows.records_of(lease_id)):
            flows.release(lease_id)
            for r in flows.records_of(lease_id):
                if r.live:
                    flows.wait_gone(r, timeout_s=60)
        print("\nmemproof figures: " + json.dumps(figures), flush=True)
        FIGURES.parent.mkdir(parents=True, exist_ok=True)
        FIGURES.write_text(json.dumps(figures, indent=1) + "\n")
