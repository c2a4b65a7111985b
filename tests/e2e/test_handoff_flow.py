"""Moving frees the machine, and the work comes home (issue 22, items 5–7), on the local stack.

A real agent (``python -m spotleash.agent``) runs the example app's two local copies itself and routes them; it
replays a RAM trace that steps past the threshold (a nominal 64 GB machine at 95 %: both components move) and
stays there while a Compute fake VM pulls the published package and gets READY; once the hand-off is checked the
test rewrites the trace (the agent follows its file) to come down to 30 % at once. Expected:

1. the remote copy serves → each local copy is stopped (its pid gone), the memory it freed is reported
   (``/routes``'s components, the ``spotleash_component_*`` gauges, ``spotleash status --json``);
2. memory comes down → after the hold each local copy starts again and answers, the traffic goes back local,
   the remote drains, the lease is released and the instance deleted — never before the local copies answer;
3. a load through the router all along: 0 failed requests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import psutil
import pytest
from tests.e2e.flows import Flows, running
from tests.e2e.packaged import packages_on

from local_emulator.routed_app import COMPONENTS, RoutedApp
from spotleash.agent.local_copies import LOCAL_MARKER_ENV, marker_of
from spotleash.model import ENDED, State
from spotleash.polling import wait_until
from spotleash.supervisor.marked import find_marked

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TRACE = "t_seconds,percent\n0,50\n3,50\n3,95\n"  # past the threshold from 3 s on, until the test says
DROPPED = f"{TRACE}4,95\n4,30\n"  # the same, down to 30 % at 4 s: long past when written, so at once
READY_WITHIN_S = 150  # the VM pulls the package and gets READY (CI's machine is slow)


@pytest.fixture(scope="module")
def flows(local_stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flows]:
    with packages_on(local_stack.state_dir, tmp_path_factory.mktemp("publish-state")):
        yield Flows()


@pytest.fixture
def app(flows: Flows, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RoutedApp]:
    routed = RoutedApp(lease_id=f"handoff-{uuid.uuid4().hex[:8]}", work=tmp_path_factory.mktemp("handoff-app"),
                       agent_copies=True, trace=TRACE,
                       agent_env={"SPOTLEASH_RELEASE_HOLD_S": "5", "SPOTLEASH_ROUTER_HOLD_S": "20"})
    try:
        with running(routed, flows) as a:
            yield a
    finally:  # a failed test's agent was SIGKILLed: end the local copies it ran (their marker names them)
        for p in find_marked(LOCAL_MARKER_ENV, marker_of(routed.lease_id, routed.work / "state")):
            p.kill()


def components(app: RoutedApp) -> dict[str, dict[str, Any]]:
    got: dict[str, dict[str, Any]] = app.routes()["components"]
    return got


def gauge(app: RoutedApp, name: str, component: str, **labels: str) -> float | None:
    text = httpx.get(f"http://127.0.0.1:{app.admin_port}/metrics", timeout=10).text
    want = ",".join([f'component="{component}"', *(f'{k}="{v}"' for k, v in labels.items())])
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} "):
            return float(line.rsplit(" ", 1)[1])
    return None


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def seconds(a: str, b: str) -> float:
    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


def logged_all(app: RoutedApp, message: str) -> dict[str, dict[str, Any]]:
    """component → the first line logging ``message`` for it."""
    out: dict[str, dict[str, Any]] = {}
    for ln in app.lines():
        if message in str(ln.get("message", "")) and ln.get("component") in COMPONENTS:
            out.setdefault(ln["component"], ln)
    return out


def test_the_hand_off_frees_the_local_copies_and_the_work_comes_home(app: RoutedApp, flows: Flows) -> None:
    before = components(app)
    assert {n: before[n]["where"] for n in COMPONENTS} == {n: "local" for n in COMPONENTS}, before
    pids = {n: before[n]["pid"] for n in COMPONENTS}
    assert all(isinstance(p, int) and psutil.pid_exists(p) for p in pids.values()), before

    with app.load() as traffic:  # (a load is bounded to 3000 requests: one for each half)
        traffic.wait_requests(20)
        rec = wait_until(lambda: next((r for r in flows.records_of(app.lease_id) if r.state == State.READY), None),
                         timeout_s=READY_WITHIN_S, interval_s=0.5, what="a READY instance of the lease")
        stopped = wait_until(lambda: (s := logged_all(app, "local copy stopped")) and len(s) == len(COMPONENTS) and s,
                             timeout_s=60, interval_s=0.5, what="both local copies stopped")
        app.wait_served_by(rec.instance_id)
        away = components(app)
        for name in COMPONENTS:
            assert stopped[name]["pid"] == pids[name] and stopped[name]["freed_bytes"] > 0, stopped[name]
            assert gone(pids[name]), f"the local copy of {name} (pid {pids[name]}) still runs"
            assert away[name]["where"] == "remote" and away[name]["local"] == "stopped", away[name]
            assert away[name]["freed_bytes"] == stopped[name]["freed_bytes"] and away[name]["pid"] is None
            assert gauge(app, "spotleash_component_freed_bytes", name) == stopped[name]["freed_bytes"]
            assert gauge(app, "spotleash_component_location", name, where="remote") == 1.0
        shown = subprocess.run([sys.executable, "-m", "spotleash.cli", "status", "--json"],
                               env={**os.environ, "SPOTLEASH_ROUTER_ADMIN_PORT": str(app.admin_port)},
                               capture_output=True, text=True, timeout=60, check=True)
        status = json.loads(shown.stdout)["components"]
        assert {n: status[n]["where"] for n in COMPONENTS} == {n: "remote" for n in COMPONENTS}, status
        assert all(status[n]["freed_bytes"] > 0 for n in COMPONENTS)
        traffic.wait_requests(20)
    assert traffic.failures == [], traffic.failures[:5]
    assert traffic.served[rec.instance_id] and traffic.served["local"]
    print("hand-off:", {n: (stopped[n]["freed_mb"], stopped[n]["took_s"]) for n in COMPONENTS},
          "served:", dict(traffic.served))

    # the memory comes down (a load under way, served remotely): after the 5 s hold the work comes home
    with app.load() as traffic:
        traffic.wait_requests(20)
        assert traffic.served[rec.instance_id] and not traffic.served["local"], "the remote copy serves until then"
        app.set_trace(DROPPED)
        home = wait_until(lambda: app.logged("work came home"), timeout_s=120, interval_s=0.5,
                          what="the work to come home")
        app.wait_served_by("local")
        traffic.wait_requests(20)
    assert traffic.failures == [], traffic.failures[:5]
    assert traffic.served[rec.instance_id] and traffic.served["local"]

    healthy = logged_all(app, "local copy healthy again")
    released = app.logged("release: the work came home")
    assert released is not None and set(healthy) == set(COMPONENTS)
    assert all(healthy[n]["time"] <= home["time"] <= released["time"] for n in COMPONENTS), \
        "the remote is released only after every local copy answers"
    after = components(app)
    for name in COMPONENTS:
        assert after[name]["where"] == "local" and after[name]["local"] == "running", after[name]
        assert after[name]["pid"] not in (None, pids[name]) and psutil.pid_exists(after[name]["pid"])
        assert after[name]["starts"] == 1 and after[name]["stops"] == 1
    end = flows.wait_gone(rec, timeout_s=60)
    assert end.state in ENDED
    assert app.agent is not None
    app.agent.send_signal(signal.SIGTERM)
    assert app.agent.wait(timeout=30) == 0
    assert not find_marked(LOCAL_MARKER_ENV, marker_of(app.lease_id, app.work / "state")), "no local copy outlives it"
    print("came home:", home.get("took_s"), "s; released:", released.get("reason"), "served:", dict(traffic.served))
    for name in COMPONENTS:  # the targets: freed within 2 s of the remote serving; released within 5 s
        went = next(c for c in app.route_changes(name) if str(c.get("to_target", "")).startswith("remote:"))
        print(f"{name}: remote serving → local copy stopped {seconds(went['time'], stopped[name]['time']):.2f} s "
              f"({stopped[name]['freed_mb']} MB freed); local copy healthy → release published "
              f"{seconds(healthy[name]['time'], released['time']):.2f} s")
