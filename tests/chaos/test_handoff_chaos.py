"""The hand-off (issue 22) under faults, with real memory: a 2 GB cgroup is the laptop.

Each scenario starts the same way (``moved_off``): the real agent runs in the cgroup with its local copy of
``ballast`` (600 MB really held), a hog grows until the agent demands from the cgroup's figures and then takes
the laptop to ~90 % (a model load: the copy cannot come home while it runs), the instance gets READY, the load
through the router is served remotely and the agent stops its local copy. Then:

1. **remote lost while the local copy is stopped** — every process of the instance SIGKILLed. The memory does
   not allow the copy back (the hog holds it), so the router holds requests (``SPOTLEASH_ROUTER_HOLD_S``) and
   serves them from the failover replacement: not one GET fails, no OOM kill in the laptop.
2. **local copy crash-looping while coming home** — the copy exits at start while a crash file exists; the hog
   ends, the agent tries to bring it home: the remote copy stays READY and keeps the traffic (a remote copy is
   never released before its local copy answers), 0 failed GETs; the crash file removed, the copy answers and
   only then is the remote released.
3. **agent SIGKILL with local copies stopped** — no process of the agent's local copies is left (the cgroup holds
   only the hog), and the lease's instance is reaped once the lease expires.

Every scenario ends with the chaos verdict (nothing left at the providers, every record ended with a reason).
These need the hand-off: the module skips, saying so, on a tree where ``handoff_landed()`` is false, and where no
memory cgroup can be written.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from tests.chaos.conftest import REAP_BOUND, SEEDS, Chaos, ChaosStack, new_lease, observed
from tests.e2e.packaged import MARKER
from tests.support.memory_app import handoff_landed

from local_emulator import procs
from local_emulator.laptop.ballast import (
    Hog,
    agent_env,
    answers,
    ballast_app,
    crash_file,
    grow_until_demand,
    local_copy_pids,
    published,
    start_agent,
    top_up,
)
from local_emulator.laptop.cgroups import MB, MemoryCgroup, memory_cgroup, why_not_writable
from local_emulator.load import Load
from local_emulator.procs import free_port
from spotleash.agent.local_copies import LOCAL_MARKER_ENV
from spotleash.model import ENDED, InstanceRecord, State
from spotleash.polling import wait_until

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.timeout(600),
    pytest.mark.skipif(not handoff_landed(), reason="the hand-off (issue 22: the agent stops its local copy once the "
                       "remote serves and brings it home) has not landed on this tree"),
    pytest.mark.skipif(why_not_writable() is not None, reason=str(why_not_writable())),
]

LAPTOP = 2048 * MB
BALLAST_MB = 600
INSTANCE_PORT = 8148
READY_TIMEOUT_S = 240.0
HOLD_S = 120.0  # the router holds a request this long while no copy serves (heartbeat loss → failover → READY)


@pytest.fixture(scope="module")
def app(chaos_stack: ChaosStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The ballast app published on the chaos stack, its launchers told the bucket (undone after)."""
    tmp = tmp_path_factory.mktemp("handoff-chaos")
    ports = {"local_port": free_port(), "route_port": free_port()}
    config = ballast_app(tmp / "app", mb=BALLAST_MB, port=INSTANCE_PORT, **ports)
    saved = dict(os.environ)
    os.environ.update(chaos_stack.env)
    try:
        with published(chaos_stack.state_dir, config, tmp):
            yield {"config": config, **ports}
    finally:
        os.environ.clear()
        os.environ.update(saved)


@dataclass
class Moved:
    """The laptop once the hand-off is done: the remote copy serves, the local copy is stopped."""

    cg: MemoryCgroup
    agent: subprocess.Popen[bytes]
    log: Path
    hog: Hog
    load: Load
    rec: InstanceRecord
    local_url: str
    lease_id: str


@contextmanager
def moved_off(chaos: Chaos, app: dict[str, Any], tmp: Path, lease_id: str) -> Iterator[Moved]:
    with memory_cgroup(LAPTOP, prefix="spotleash-chaos") as cg:
        log = tmp / f"agent-{lease_id}.log"
        agent = start_agent(cg, lease_id, agent_env(cg, app["config"], tmp, free_port(),
                                                    SPOTLEASH_ROUTER_HOLD_S=str(HOLD_S)), log)
        local_url = f"http://127.0.0.1:{app['local_port']}/healthz"
        route_url = f"http://127.0.0.1:{app['route_port']}/healthz"
        hog: Hog | None = None
        try:
            wait_until(lambda: answers(local_url), timeout_s=60, interval_s=0.2, what="the agent's local copy")
            wait_until(lambda: answers(route_url), timeout_s=30, interval_s=0.2, what="the router")
            with Load({"ballast": route_url}, timeout_s=HOLD_S + 30) as load:
                hog = Hog(cg)
                grow_until_demand(hog, cg, log)
                top_up(hog, cg, 0.91, step_mb=32)
                rec = chaos.wait_ready(lease_id, timeout_s=READY_TIMEOUT_S)
                wait_until(lambda: load.last_served_by == rec.instance_id, timeout_s=60, interval_s=0.1,
                           what=f"the load served by {rec.instance_id}")
                wait_until(lambda: not local_copy_pids(cg, "ballast"), timeout_s=30, interval_s=0.05,
                           what="the local copy stopped once the remote serves")
                assert load.failures == [], load.failures[:5]
                yield Moved(cg, agent, log, hog, load, rec, local_url, lease_id)
        finally:
            if agent.poll() is None:
                with suppress(ProcessLookupError):
                    os.killpg(agent.pid, signal.SIGTERM)
                try:
                    agent.wait(timeout=30)
                except Exception:  # noqa: BLE001 - a stuck agent is killed; the verdict judges what it left
                    os.killpg(agent.pid, signal.SIGKILL)
                    agent.wait(timeout=10)
            if hog is not None and hog.proc.poll() is None:
                hog.end()
            crash_file(app["config"]).unlink(missing_ok=True)


def _kill_instance(chaos: Chaos, rec: InstanceRecord) -> None:
    """SIGKILL every process of the fake VM (its group) and of its components (marked with its id)."""
    vm = chaos.vm(rec.provider_id or "")
    assert vm is not None and vm["pid"]
    group = os.getpgid(int(vm["pid"]))
    victims = [p for p in psutil.process_iter() if _pgid(p) == group] + procs.find_marked(MARKER, rec.instance_id)
    for p in victims:
        with suppress(psutil.Error):
            p.send_signal(signal.SIGKILL)


def _pgid(p: psutil.Process) -> int | None:
    try:
        return os.getpgid(p.pid)
    except OSError:
        return None


def _sigterm_and_judge(chaos: Chaos, m: Moved, scenario: str, obs: Any) -> None:
    t0 = time.monotonic()
    os.killpg(m.agent.pid, signal.SIGTERM)
    assert m.agent.wait(timeout=30) == 0, m.log.read_text()[-3000:]
    chaos.verdict(scenario, obs, [m.lease_id], t_fault=t0, bound_s=60, min_seen=1)


@pytest.mark.parametrize("seed", SEEDS)
def test_remote_lost_while_the_local_copy_is_stopped(chaos: Chaos, app: dict[str, Any], tmp_path: Path,
                                                     seed: int) -> None:
    lid = new_lease(f"hlost{seed}")
    with observed(chaos) as obs, moved_off(chaos, app, tmp_path, lid) as m:
        _kill_instance(chaos, m.rec)
        # the hog still holds the laptop: the copy cannot come home; requests wait for the replacement
        def replaced() -> InstanceRecord | None:
            for r in chaos.records_of(lid):
                if r.instance_id != m.rec.instance_id and r.state == State.READY:
                    return r
            return None

        new = wait_until(replaced, timeout_s=READY_TIMEOUT_S, interval_s=0.5, what="the failover replacement READY")
        served_by_new = m.load.served[new.instance_id]
        wait_until(lambda: m.load.served[new.instance_id] > served_by_new + 20, timeout_s=60, interval_s=0.2,
                   what=f"the load served by the replacement {new.instance_id}")
        assert m.load.failures == [], m.load.failures[:5]
        assert m.cg.oom_kills() == 0, "the copy came home into memory that was not there: OOM kill"
        _sigterm_and_judge(chaos, m, "hand-off: remote lost while the local copy is stopped", obs)


@pytest.mark.parametrize("seed", SEEDS)
def test_local_copy_crash_looping_while_coming_home(chaos: Chaos, app: dict[str, Any], tmp_path: Path,
                                                    seed: int) -> None:
    lid = new_lease(f"hcrash{seed}")
    with observed(chaos) as obs, moved_off(chaos, app, tmp_path, lid) as m:
        crash_file(app["config"]).write_text("crash at start\n")
        assert m.hog.end() == 0  # headroom is back: the agent tries to bring ballast home, and it crashes
        t_end = time.monotonic()
        while time.monotonic() - t_end < 20:  # longer than the come-home hold (5 s) and several restarts
            r = chaos.store.get(m.rec.instance_id)
            assert r is not None and r.state not in ENDED, f"the remote was released with no local copy answering: {r}"
            assert not answers(m.local_url)
            time.sleep(0.5)
        assert m.load.last_served_by == m.rec.instance_id
        crash_file(app["config"]).unlink()
        home: list[float] = []

        def released() -> InstanceRecord | None:
            if not home and answers(m.local_url):
                home.append(time.monotonic())
            r = chaos.store.get(m.rec.instance_id)
            return r if r is not None and r.state in ENDED else None

        wait_until(released, timeout_s=120, interval_s=0.1, what="the remote released once the copy answers")
        assert home, "the remote copy was released before the local copy answered"
        wait_until(lambda: m.load.last_served_by == "local", timeout_s=30, interval_s=0.1, what="the load local")
        assert m.load.failures == [], m.load.failures[:5]
        assert m.cg.oom_kills() == 0
        _sigterm_and_judge(chaos, m, "hand-off: local copy crash-looping while coming home", obs)


@pytest.mark.parametrize("seed", SEEDS)
def test_agent_sigkill_with_local_copies_stopped(chaos: Chaos, app: dict[str, Any], tmp_path: Path,
                                                 seed: int) -> None:
    lid = new_lease(f"hkill{seed}")
    with observed(chaos) as obs, moved_off(chaos, app, tmp_path, lid) as m:
        marker_value = f"{lid}@{(tmp_path / 'state').resolve()}"
        t0 = time.monotonic()
        os.killpg(m.agent.pid, signal.SIGKILL)
        m.agent.wait(timeout=15)
        time.sleep(2)  # whatever the agent had started would still be running now
        left = [p.pid for p in procs.find_marked(LOCAL_MARKER_ENV, marker_value)]
        assert left == [], f"local-copy processes outlived the agent: {left}"
        assert m.cg.pids() == [m.hog.proc.pid], f"the laptop holds more than the hog: {m.cg.pids()}"
        chaos.verdict("hand-off: agent SIGKILL with local copies stopped", obs, [lid], t_fault=t0,
                      bound_s=REAP_BOUND, min_seen=1)
        assert all(r.reason == "lease_expired" for r in chaos.records_of(lid) if r.provider_id)
