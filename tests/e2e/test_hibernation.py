"""Auto-hibernation end to end on a VAST fake box, woken by a request through the agent's router (issue 14,
item 4), with Cloud Storage down during the pre-destroy snapshot.

A real ``python -m spotleash.agent`` (its ``spotleash.toml`` says ``wake_on_request = true``) demands a GPU
box for the ``notes`` component of a published app; the box pulls the package, gets READY, and the router
sends ``notes`` there. A file is written into the box's ``/workspace`` (the fake box's disk). Nobody uses
the box (the router's health probes do not count), so after ``idle_after`` the control plane asks it for
a hibernation snapshot — while Cloud Storage is down (its emulator killed, as tests/e2e/test_package_faults.py
does): the upload cannot finish, the box is kept running, an alert is audited and the snapshot asked
again. Cloud Storage comes back (empty, as the emulator keeps objects in memory: the bucket is made again and
the app published again), the snapshot is verified, and only then is the box destroyed: gone at the VAST
fake, its disk removed, its cost frozen in ``spotleash cost``; the record ends ``hibernated``, the lease is
HIBERNATED in ``spotleash status --json`` with the snapshot's age and size.

Then a request reaches the router: it is served by the local copy at once, and the agent publishes one
demand (trigger ``request``). A second box restores the snapshot before ``notes`` starts — the component
itself reports the sha256 of the file as it found it at its start — the router shifts to it, and the
hibernation is over (document removed, audited ``woke``).

The launchers (on_demand, on_heartbeat, on_reap) are restarted with the package bucket and the hibernation
settings in their environment (as a redeploy would) and restored at the end. ``idle_cpu_percent`` is 0 here
(CPU never keeps a box busy): a fake box's "whole box" CPU is this 2-core machine's, shared with the stack and
other work; at 10 % it is rarely idle, and even at 100 % a saturated second called the hibernation off in one
run. Only requests keep the box awake.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.e2e.flows import Flows
from tests.e2e.state_app import notes_app, wait_ready

from local_emulator import stack
from local_emulator import storage as gcs
from local_emulator.json_log import first_logged, log_lines
from local_emulator.procs import free_port
from spotleash.model import InstanceRecord, SnapshotState, State
from spotleash.polling import wait_until
from spotleash.providers import build_provider
from spotleash.topology import load_topology

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

LAUNCHERS = ("on_demand", "on_heartbeat", "on_reap")
IDLE_AFTER_S = 14  # box 1 is used (routed to) within a few seconds of READY: well before it counts as idle
HIBERNATION_ENV = {
    "SPOTLEASH_SNAPSHOT_INTERVAL_S": "0",  # the hibernation's snapshot is the only one
    "SPOTLEASH_IDLE_AFTER_S": str(IDLE_AFTER_S),
    "SPOTLEASH_IDLE_CPU_PERCENT": "0",  # CPU never keeps the box busy: only requests do
    "SPOTLEASH_SNAPSHOT_UPLOAD_TIMEOUT_S": "8",  # an upload stuck this long: alert, asked again
}
OFF = {"SPOTLEASH_PACKAGE_BUCKET": "", "SPOTLEASH_SNAPSHOT_INTERVAL_S": "0", "SPOTLEASH_IDLE_AFTER_S": "0",
       "SPOTLEASH_IDLE_CPU_PERCENT": "10", "SPOTLEASH_SNAPSHOT_UPLOAD_TIMEOUT_S": "3600"}

def agent_toml(app: Path, local_port: int, route_port: int) -> str:
    """The app's spotleash.toml for the agent: wake on request, notes routed, its local copy's address."""
    text = (app / "spotleash.toml").read_text().replace('dir = "."', f"dir = {json.dumps(str(app))}")
    assert str(app) in text
    text = text.replace('health_path = "/healthz"\nram_gb = 1\n',
                        f'health_path = "/healthz"\nram_gb = 1\nlocal_url = "http://127.0.0.1:{local_port}"\nlocal_copy = "user"\n'
                        f"route_port = {route_port}\n")
    assert f"route_port = {route_port}" in text
    return "wake_on_request = true\n" + text  # top-level keys come before the first table


def _set_env(state_dir: Path, values: dict[str, str]) -> None:
    path = stack.env_file(state_dir)
    lines = [ln for ln in path.read_text().splitlines() if ln.split("=", 1)[0] not in values]
    path.write_text("\n".join([*lines, *(f"{k}={v}" for k, v in values.items())]) + "\n")
    for name in LAUNCHERS:  # one at a time: each restart rewrites stack.json
        stack.restart(state_dir, name)


def publish(app: Path, pub_state: Path) -> dict[str, Any]:
    env = {**os.environ, "SPOTLEASH_PACKAGE_BUCKET": load_topology().package_bucket,
           "SPOTLEASH_STATE_DIR": str(pub_state)}
    out = subprocess.run([sys.executable, "-m", "spotleash.cli", "publish", "--app", str(app), "--json"],
                         env=env, capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    got: dict[str, Any] = json.loads(out.stdout)
    return got


@pytest.fixture(scope="module")
def published(local_stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    bucket = load_topology().package_bucket
    state_dir: Path = local_stack.state_dir
    cache = Path(os.environ.get("SPOTLEASH_TEST_WHEEL_CACHE", Path.home() / ".cache" / "spotleash" / "test-wheels"))
    cache.mkdir(parents=True, exist_ok=True)
    pub_state = tmp_path_factory.mktemp("publish-state")
    (pub_state / "wheels").symlink_to(cache, target_is_directory=True)
    app = notes_app(tmp_path_factory.mktemp("app"), state_path=None, port=8131)
    result = publish(app, pub_state)
    saved = os.environ.get("SPOTLEASH_PACKAGE_BUCKET")
    _set_env(state_dir, {"SPOTLEASH_PACKAGE_BUCKET": bucket, **HIBERNATION_ENV})
    os.environ["SPOTLEASH_PACKAGE_BUCKET"] = bucket
    try:
        yield {**result, "app": app, "pub_state": pub_state, "state_dir": state_dir, "bucket": bucket}
    finally:
        _set_env(state_dir, OFF)
        if saved is None:
            os.environ.pop("SPOTLEASH_PACKAGE_BUCKET", None)
        else:
            os.environ["SPOTLEASH_PACKAGE_BUCKET"] = saved


# ---------------------------------------------------------------- the parts the test acts through

class Agent:
    """A real agent process with its router, and the local copy of ``notes``."""

    def __init__(self, work: Path, app: Path, lease_id: str) -> None:
        self.work, self.lease_id = work, lease_id
        self.local_port, self.route_port, self.admin_port = free_port(), free_port(), free_port()
        config = work / "spotleash.toml"
        config.write_text(agent_toml(app, self.local_port, self.route_port))
        (work / "local-root").mkdir()
        local_env = {**os.environ, "PORT": str(self.local_port), "HOST": "127.0.0.1",
                     "SPOTLEASH_VM_ROOT": str(work / "local-root")}
        local_env.pop("SPOTLEASH_COMPONENT_OF", None)
        self.local = subprocess.Popen([sys.executable, str(app / "notes.py")], env=local_env, start_new_session=True,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        trace = work / "high.csv"
        trace.write_text("t_seconds,percent\n0,95\n1,95\n")
        env = {**os.environ, "SPOTLEASH_CONFIG_FILE": str(config), "SPOTLEASH_STATE_DIR": str(work / "state"),
               "SPOTLEASH_ROUTER_ADMIN_PORT": str(self.admin_port), "SPOTLEASH_COMPONENTS": '["notes"]',
               "SPOTLEASH_COMPONENT_RAM_GB": '{"notes": 1}', "SPOTLEASH_GPU_COMPONENTS": '["notes"]',
               "PYTHONUNBUFFERED": "1"}
        env.pop("SPOTLEASH_WAKE_ON_REQUEST", None)  # the file says it
        self.log = work / "agent.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "spotleash.agent", "--lease-id", lease_id, "--trace", str(trace)],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(lambda: self.logged("router started"), timeout_s=30, interval_s=0.2, what="the agent's router")
        started = self.logged("router started")
        assert started is not None and started.get("wake_on_request") is True, started

    def lines(self) -> list[dict[str, Any]]:
        return log_lines(self.log)

    def logged(self, fragment: str) -> dict[str, Any] | None:
        return first_logged(self.log, fragment)

    def state(self) -> dict[str, Any]:
        r = httpx.get(f"http://127.0.0.1:{self.route_port}/state", timeout=30)
        assert r.status_code == 200, r.text
        got: dict[str, Any] = r.json()
        return got

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        for p in (self.proc, self.local):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
        return self.proc.returncode


def vast_boxes() -> list[dict[str, Any]]:
    r = httpx.get(f"{os.environ['SPOTLEASH_VAST_URL']}/_control/inspect", timeout=10)
    r.raise_for_status()
    return list(r.json()["instances"])


def vast_box(rec: InstanceRecord) -> dict[str, Any] | None:
    return next((b for b in vast_boxes() if str(b["id"]) == rec.provider_id), None)


def cli_json(*args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "spotleash.cli", *args, "--json"], capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    got: dict[str, Any] = json.loads(out.stdout)
    return got


def storage_back(published: dict[str, Any]) -> None:
    """Cloud Storage up again; the emulator lost its objects: the bucket made again, the app published again."""
    proc = stack.restart(published["state_dir"], gcs.NAME)
    assert proc.port is not None
    gcs.create_bucket(proc.port, os.environ["SPOTLEASH_PROJECT"], published["bucket"])
    again = publish(published["app"], published["pub_state"])
    assert again["sha256"] == published["sha256"], "the same tree, the same archive"


def alerts(flows: Flows, instance_id: str) -> list[dict[str, Any]]:
    return [e for e in flows.audit(instance_id) if e["action"] == "alert"]


# ---------------------------------------------------------------- the test

def test_an_idle_box_hibernates_only_after_a_verified_snapshot_and_a_request_wakes_it_with_its_file(
        published: dict[str, Any], tmp_path: Path) -> None:
    flows = Flows()
    lease = "lease-hibernate-e2e"
    agent = Agent(tmp_path, published["app"], lease)
    storage_down = False
    t0 = time.monotonic()
    marks: dict[str, float] = {}

    def mark(name: str) -> None:
        marks[name] = round(time.monotonic() - t0, 1)

    try:
        # 1. The agent's demand → box 1 READY; the router sends notes there; a file lands in its workspace.
        first = wait_ready(flows, lease)
        assert first.provider == "vast" and first.package_sha256 == published["sha256"]
        box = vast_box(first)
        assert box is not None
        data = os.urandom(300_000)
        (Path(box["workspace"]) / "notes.bin").write_bytes(data)
        want = hashlib.sha256(data).hexdigest()
        wait_until(lambda: agent.state()["served_by"] == first.instance_id, timeout_s=30, interval_s=0.5,
                   what="the router to send notes to box 1")
        assert agent.state()["sha256_at_start"] is None  # a first box: nothing to restore
        used = flows.store.get(first.instance_id)
        print(f"\nbox 1's idle_s at its last beat before it was used: {used.idle_s if used else None}"
              f" (idle after {IDLE_AFTER_S} s)")
        mark("box 1 READY, file written")

        # 2. Cloud Storage down; box 1 goes idle → asked for a hibernation snapshot → the upload cannot finish.
        stack.kill_part(published["state_dir"], gcs.NAME)
        storage_down = True
        alert = wait_until(lambda: next(iter(alerts(flows, first.instance_id)), None), timeout_s=IDLE_AFTER_S + 90,
                           interval_s=0.5, what="an alert: the hibernation snapshot did not finish")
        assert alert["reason"] in ("hibernation_snapshot_failed", "snapshot_failed"), alert
        mark(f"first alert ({alert['reason']})")
        kept = flows.store.get(first.instance_id)
        assert kept is not None and kept.state is State.READY, "the box is kept running"
        assert kept.snapshot_request is not None and kept.snapshot_request.reason == "hibernate"
        assert vast_box(first) is not None and flows.store.get_hibernation(lease) is None
        shown = {r["instance_id"]: r for r in cli_json("status")["instances"]}
        assert shown[first.instance_id]["state"] == "READY"
        assert shown[first.instance_id]["snapshot_request"]["reason"] == "hibernate"
        # asked again: the reaper renews the request after the stuck upload
        wait_until(lambda: any(a["reason"] == "hibernation_snapshot_failed" for a in alerts(flows, first.instance_id)),
                   timeout_s=60, interval_s=0.5, what="the reaper's alert and renewed request")
        renewed = flows.store.get(first.instance_id)
        assert renewed is not None and renewed.snapshot_request is not None
        assert renewed.snapshot_request.by == "reaper" and renewed.state is State.READY
        shown = {r["instance_id"]: r for r in cli_json("status")["instances"]}
        assert "did not finish" in shown[first.instance_id]["snapshot_request"]["postponed"], "the user sees why"
        assert vast_box(first) is not None, "still no verified snapshot: the box stays"

        # 3. Cloud Storage back → a snapshot verifies → only then the box is destroyed.
        storage_back(published)
        storage_down = False
        mark("Cloud Storage back")
        ended = flows.wait_state(first.instance_id, {State.TERMINATED, State.FAILED}, timeout_s=180)
        assert ended.state is State.TERMINATED and ended.reason == "hibernated", (ended.state, ended.reason)
        hib = flows.store.get_hibernation(lease)
        assert hib is not None and hib.instance_id == first.instance_id and hib.components == ["notes"]
        snap = flows.store.get_snapshot(hib.snapshot_id)
        assert snap is not None and snap.state is SnapshotState.VERIFIED and (snap.raw_bytes or 0) >= len(data)
        assert snap.verified_at is not None and ended.ended_at is not None
        assert snap.verified_at <= ended.ended_at, "verified before the box was destroyed"
        gone = flows.wait_gone(first, timeout_s=60)
        mark("box 1 hibernated and gone")
        assert build_provider("vast", flows.settings).get(gone.provider_id or "") is None
        assert vast_box(first) is None
        # The fake drops a destroyed box from its table, then stops its processes and removes its disk: a box
        # gone from the API may still be on its way down (seen once under load, a two-lane run at load 6).
        wait_until(lambda: not Path(box["folder"]).exists(), timeout_s=30, interval_s=0.2, what="the box's disk to go")
        costs = [next(i for i in cli_json("cost")["instances"] if i["instance_id"] == first.instance_id)
                 for _ in range(2)]
        assert costs[0]["cost"] == costs[1]["cost"] and costs[0]["state"] == "TERMINATED", "the bill stopped"
        assert datetime.fromisoformat(costs[0]["intervals"][-1]["end"]) <= ended.ended_at
        status = cli_json("status")
        [sleeping] = [h for h in status["hibernated"] if h["lease_id"] == lease]
        assert sleeping["state"] == "HIBERNATED" and sleeping["snapshot_id"] == hib.snapshot_id
        assert sleeping["size_bytes"] > 0 and sleeping["snapshot_age_s"] >= 0
        assert not [r for r in status["instances"] if r["lease_id"] == lease]
        wait_until(lambda: agent.logged("lease hibernated"), timeout_s=30, interval_s=0.5,
                   what="the agent to see the hibernation")

        # 4. Requests arrive: served locally at once; one demand wakes the lease; box 2 restores the file.
        for _ in range(3):
            assert agent.state()["served_by"] == "local"
        mark("requests served locally")
        second = wait_ready(flows, lease, besides=frozenset({first.instance_id}))
        mark("box 2 READY")
        wakes = [ln for ln in agent.lines() if "waking the lease" in str(ln.get("message", ""))]
        assert len(wakes) == 1 and wakes[0]["snapshot_id"] == hib.snapshot_id, wakes
        assert second.provider == "vast"
        wait_until(lambda: agent.state()["served_by"] == second.instance_id, timeout_s=30, interval_s=0.5,
                   what="the router to send notes to box 2")
        mark("served by box 2")
        assert agent.state()["sha256_at_start"] == want, "box 2's notes found the file at its very start"
        restored = [e for e in flows.audit(second.instance_id) if e["action"] == "restored"]
        assert [e["snapshot_id"] for e in restored] == [hib.snapshot_id]
        assert flows.store.get_hibernation(lease) is None
        assert any(e["action"] == "woke" for e in flows.audit(second.instance_id))
        launched = [e for e in flows.audit(second.instance_id) if e["action"] in ("launch_intent", "launched")]
        assert launched and all(e["reason"] == "request" for e in launched), launched
        print(f"\nphases (s since the agent started): {json.dumps(marks)}")
    finally:
        if storage_down:
            storage_back(published)
        agent.stop()
    for rec in flows.records_of(lease):
        flows.wait_gone(rec, timeout_s=60)
