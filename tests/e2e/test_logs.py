"""``spotleash logs COMPONENT --remote [--follow]`` on the local stack: the remote copy's output, read from a fake
VM's TLS front through the running agent (which holds the lease credential), then followed while a request
through the router is logged by the remote copy."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from tests.e2e.flows import Flows, running
from tests.e2e.packaged import packages_on

from local_emulator.routed_app import RoutedApp
from spotleash.model import ENDED, InstanceRecord, State
from spotleash.polling import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def published(local_stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with packages_on(local_stack.state_dir, tmp_path_factory.mktemp("publish-state")) as result:
        yield result


def ready(flows: Flows, lease_id: str) -> InstanceRecord | None:
    for r in flows.records_of(lease_id):
        if r.state in ENDED:
            raise AssertionError(f"{r.instance_id} ended {r.state}: {r.reason}")
        if r.state == State.READY:
            return r
    return None


def test_logs_of_the_remote_copy_through_the_agent_and_followed(published: dict[str, Any],
                                                                 tmp_path: Any) -> None:
    flows = Flows()
    with running(RoutedApp(lease_id=f"logs-{uuid.uuid4().hex[:8]}", work=tmp_path), flows) as app:
        env = {**os.environ, "SPOTLEASH_CONFIG_FILE": str(app.work / "spotleash.toml"),
               "SPOTLEASH_ROUTER_ADMIN_PORT": str(app.admin_port), "SPOTLEASH_STATE_DIR": str(app.work / "state")}

        def logs(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "spotleash.cli", "logs", *args, "--lease-id",
                                   app.lease_id], env=env, capture_output=True, text=True, timeout=60)

        local = logs("thumbnailer")  # this test runs the local copies itself (local_copy = "user")
        assert local.returncode == 1 and 'run by you (local_copy = "user")' in local.stderr
        unknown = logs("nope", "--remote")
        assert unknown.returncode == 2 and "its components: thumbnailer, vectors" in unknown.stderr

        rec: InstanceRecord = wait_until(lambda: ready(flows, app.lease_id), timeout_s=240, interval_s=0.5,
                                         what="the lease's instance READY")
        app.wait_served_by(rec.instance_id)
        shown = logs("thumbnailer", "--remote")
        assert shown.returncode == 0, shown.stderr
        assert "--- starting ['python', 'thumbnailer.py']" in shown.stdout  # the instance supervisor's own line
        assert "thumbnailer: listening on 127.0.0.1:" in shown.stdout  # the component's output
        assert f"on instance {rec.instance_id}" in shown.stderr

        follower = subprocess.Popen([sys.executable, "-m", "spotleash.cli", "logs", "thumbnailer", "--remote",
                                     "--follow", "--tail", "0"], env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, start_new_session=True,
                                    # Ctrl-C as a terminal delivers it: a suite started in the background (`cmd &`)
                                    # hands its children SIGINT ignored, and the follower then never stopped
                                    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        out: list[str] = []
        err: list[str] = []
        for stream, into in ((follower.stdout, out), (follower.stderr, err)):
            assert stream is not None
            threading.Thread(target=lambda s=stream, i=into: i.extend(iter(s.readline, "")), daemon=True).start()
        mark = uuid.uuid4().hex
        try:
            # its first read is done once it names the instance: what the request logs from now on is followed
            wait_until(lambda: any(rec.instance_id in ln for ln in err), timeout_s=30, interval_s=0.1,
                       what="the follower's first read")
            r = app.get("thumbnailer", f"/thumbnail?size=8&mark={mark}")  # health probes are not logged
            assert r.status_code == 200 and r.headers["X-Served-By"] == rec.instance_id
            wait_until(lambda: any(mark in ln for ln in out), timeout_s=30, interval_s=0.2,
                       what="the request's line in the followed remote log")
        finally:
            os.killpg(follower.pid, signal.SIGINT)
            follower.wait(timeout=20)
        assert follower.returncode == 130, err
        (line,) = [ln for ln in out if mark in ln]
        assert f"GET /thumbnail?size=8&mark={mark} 200" in line
