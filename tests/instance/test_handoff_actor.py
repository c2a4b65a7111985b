"""The agent's hand-off on real processes, without the local stack: a real local copy (``LocalCopies``), the real
router (``RouterService``) fed instance records by the test, a real remote copy behind the instance's TLS front
(a child process the test can SIGKILL), and ``HandOff`` between them; memory readings are synthetic.

1. the remote copy serves → the local copy is stopped (pid gone), freed bytes recorded, requests keep answering;
2. the remote copy is SIGKILLed while the local copy is stopped → memory allows it: the local copy restarts and
   serves; a request sent meanwhile waits (hold) and is answered;
3. a new remote copy serves → stopped again; memory comes back → the way home: local copy healthy, traffic local,
   the release's reason handed to the agent;
4. a local copy that never gets healthy on the way home → stopped again, the remote copy stays, the reason says why.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from tests.support.component_processes import COMPONENT, free_port

from spotleash.agent.handoff import HandOff
from spotleash.agent.local_copies import LocalCopies, local_plan
from spotleash.agent.ram import fraction_reading
from spotleash.agent.routing import AgentRouter
from spotleash.decide.handoff import HomeRule
from spotleash.polling import wait_until
from spotleash.router import ComponentRoute, Limits, RouterConfig, RouterService
from spotleash.router.channel import credential_hash, new_credential
from spotleash.wire.events import Component
from spotleash.wire.package import AppSpec

REMOTE = Path(__file__).parents[1] / "unit" / "router" / "remote_instance.py"  # the real Front before a component
GB = 2**30
NAME = "thumbs"  # the component remote_instance.py's front serves


class World:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.port = free_port()
        spec = AppSpec.model_validate({"name": "t", "components": [
            {"name": NAME, "command": [sys.executable, str(COMPONENT)], "port": 8101, "start_timeout_s": 5,
             "env": {"MODE": "ok", "CRASH_IF": str(work / "crash")}, "local_url": f"http://127.0.0.1:{self.port}"}]})
        self.copies = LocalCopies(local_plan(spec, [NAME]), app_root=work, lease_id="handoff-actor",
                                  state_dir=work / "state", backoff_base_s=0.2)
        self.credential = new_credential()
        changed = threading.Event()
        config = RouterConfig(components=(ComponentRoute(NAME, 0, f"http://127.0.0.1:{self.port}", "/healthz"),),
                              credential=self.credential, admin_port=0,
                              limits=Limits(probe_interval_s=0.2, probe_timeout_s=1.0, drain_s=1.0, hold_s=20.0),
                              on_route_change=changed.set)
        self.service = RouterService(config)
        self.router = AgentRouter(self.service, credential_hash(self.credential), None, changed)
        self.handoff = HandOff(self.copies, self.router, components=[Component(name=NAME, ram_gb=0.5)], offload={},
                               threshold=0.85, home=HomeRule(release_below=0.7, hold_s=1.0), drain_s=1.0)
        self.remotes: list[subprocess.Popen[str]] = []
        self.t = 0.0

    def start(self) -> None:
        self.copies.start_all()
        addresses = self.service.start()
        self.url = "http://{}:{}".format(*addresses[NAME])
        self.service.set_component_status(self.handoff.snapshot)
        self.handoff.start()
        wait_until(lambda: self.state()["pid"] is not None and self.get().status_code == 200, timeout_s=30,
                   interval_s=0.1, what="the local copy")

    def close(self) -> None:
        self.handoff.close()
        self.service.stop()
        self.copies.close()
        for p in self.remotes:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)

    # ------------------------------------------------------------------ the pieces the test drives
    def memory(self, used: float, samples: int = 1) -> None:
        """``samples`` readings at ``used`` of a 16 GB machine, 0.5 s apart (the agent's loop, on a fake clock)."""
        for _ in range(samples):
            self.handoff.observe(self.t, fraction_reading(used, 16 * GB, "test"), False)
            self.t += 0.5

    def remote_up(self, instance_id: str) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        child = subprocess.Popen([sys.executable, str(REMOTE), credential_hash(self.credential)], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.remotes.append(child)
        assert child.stdout is not None
        info = json.loads(child.stdout.readline())
        self.service.apply_records([{"instance_id": instance_id, "state": "READY", "preempted": False,
                                     "tls_fingerprint": info["fingerprint"],
                                     "component_states": {NAME: {"state": "healthy",
                                                                 "endpoint": f"127.0.0.1:{info['port']}"}}}])

    def state(self) -> dict[str, Any]:
        return self.handoff.snapshot()[NAME]

    def get(self) -> httpx.Response:
        return httpx.get(f"{self.url}/who", timeout=30)

    def admin(self, path: str) -> httpx.Response:
        host, port = self.service.router.admin_address or ("127.0.0.1", 0)
        return httpx.get(f"http://{host}:{port}{path}", timeout=10)

    def wait(self, what: str, check: Any, timeout_s: float = 30) -> Any:
        return wait_until(check, timeout_s=timeout_s, interval_s=0.1, what=f"{what} (state: {self.state()})")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    w.start()
    yield w
    w.close()


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_hand_off_loss_and_the_way_home(world: World) -> None:
    assert world.get().json()["mode"] == "ok"  # the local copy answers (JSON); the remote one says "remote"
    first_pid = world.state()["pid"]
    world.memory(0.9)  # short of memory: the demand went out (not this test's part), the remote gets READY

    # 1. the remote copy serves → the local copy stops
    world.remote_up("sl-1")
    world.wait("the hand-off", lambda: world.state()["local"] == "stopped")
    st = world.state()
    assert st["where"] == "remote" and st["freed_bytes"] > 0 and st["stops"] == 1 and st["pid"] is None
    assert gone(first_pid)
    assert world.get().text == "remote"
    shown = world.admin("/routes").json()
    assert shown["components"][NAME]["where"] == "remote" and shown["routes"][NAME]["local_mode"] == "stopped"
    metrics = dict(line.rsplit(" ", 1) for line in world.admin("/metrics").text.splitlines()
                   if line.startswith("spotleash_component_"))
    assert float(metrics[f'spotleash_component_freed_bytes{{component="{NAME}"}}']) == st["freed_bytes"]
    assert float(metrics[f'spotleash_component_location{{component="{NAME}",where="remote"}}']) == 1.0

    # 2. the remote copy dies while the local copy is stopped; memory allows the local copy: it restarts and serves
    world.memory(0.5)
    answered: list[httpx.Response] = []
    world.remotes[0].kill()
    world.remotes[0].wait(timeout=10)
    asker = threading.Thread(target=lambda: answered.append(world.get()))
    asker.start()  # sent while no copy serves: held until the local copy answers
    world.wait("the restart", lambda: world.state()["local"] == "running" and world.state()["where"] == "local")
    asker.join(timeout=30)
    assert answered and answered[0].status_code == 200 and answered[0].json()["mode"] == "ok", answered
    assert world.state()["starts"] == 1 and "lost" in world.state()["reason"]

    # 3. a replacement serves → stopped again; memory comes back → the way home, then the release's reason
    world.remote_up("sl-2")
    world.wait("the second hand-off", lambda: world.state()["stops"] == 2 and world.state()["local"] == "stopped")
    assert world.get().text == "remote"
    world.memory(0.9, samples=10)  # not while memory is short: the away copy would not fit
    assert world.handoff.take_release() is None and world.state()["local"] == "stopped"
    assert "would not fit" in world.state()["home"]
    world.memory(0.3, samples=4)  # 1.5 s below 70 % with the copy back: past the 1 s hold
    reason = world.wait("the way home", world.handoff.take_release)
    assert "came home" in reason and NAME in reason
    st = world.state()
    assert st["where"] == "local" and st["local"] == "running" and st["starts"] == 2 and st["pid"]
    assert world.get().json()["mode"] == "ok", "traffic is back local while the remote copy still runs"
    assert world.admin("/routes").json()["routes"][NAME]["local_mode"] == "home"
    assert st["freed_total_bytes"] > st["freed_bytes"] > 0  # two stops, each freed something
    world.handoff.demanded([NAME])  # a later demand: the component may serve remotely again
    world.wait("the remote to take traffic again", lambda: world.get().text == "remote")


def test_a_local_copy_that_never_gets_healthy_on_the_way_home_keeps_the_remote(world: World) -> None:
    world.memory(0.9)
    world.remote_up("sl-1")
    world.wait("the hand-off", lambda: world.state()["local"] == "stopped")
    (world.work / "crash").write_text("")  # the next start of the local copy crashes at once
    world.memory(0.3, samples=4)
    world.wait("the failed way home", lambda: "did not get healthy" in world.state()["reason"]
               or "not healthy after" in world.state()["reason"], timeout_s=30)
    st = world.state()
    assert st["local"] == "stopped" and st["where"] == "remote" and "remote copy stays" in st["reason"]
    assert world.handoff.take_release() is None, "the remote copy is never released before its local copy answers"
    assert world.get().text == "remote"
    assert world.copies.pid(NAME) is None, "the failing copy is not left crash-looping"
