"""The supervisor with real component processes: crash → backoff → failing; never healthy → deadline;
healthy → endpoint; stop ends the whole process group. No local stack needed."""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import httpx
import psutil
import pytest
from tests.support.component_processes import COMPONENT, free_port, wait_until

from spotleash.instance_agent.environment import MARKER_ENV, STATE_PATHS_ENV, component_env
from spotleash.supervisor import Launch, Supervisor
from spotleash.wire.events import ComponentReport


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Callable[..., Supervisor]]:
    started: list[Supervisor] = []

    def make(mode: str, *, timeout_s: float = 30.0, port: int | None = None, **extra_env: str) -> Supervisor:
        launch = Launch(name=f"c-{mode}", argv=(sys.executable, str(COMPONENT)), port=port or free_port(),
                        health_path="/healthz", timeout_s=timeout_s, env={"MODE": mode, **extra_env})
        base = {**os.environ, "SPOTLEASH_HEARTBEAT_TOKEN": "tok-secret", "SPOTLEASH_AGENT_CONFIG": "{}"}
        state = [tmp_path / "workspace", tmp_path / "var" / "lib" / "app"]
        sup = Supervisor([launch], cwd=tmp_path, env=component_env(base, tmp_path / "venv", "sl-test", state),
                         log_dir=tmp_path / "logs", backoff_base_s=0.2)
        started.append(sup)
        sup.start()
        return sup

    yield make
    for sup in started:
        sup.stop()


def only(sup: Supervisor) -> ComponentReport:
    (report,) = sup.reports().values()
    return report


def test_healthy_component_reports_its_endpoint_and_gets_its_environment(run: Callable[..., Supervisor]) -> None:
    sup = run("ok")
    wait_until(lambda: only(sup).state == "healthy", 15, "healthy")
    report = only(sup)
    port = sup.runners[0].port
    assert report.endpoint == f"127.0.0.1:{port}" and report.error is None and not report.gave_up
    answer = httpx.get(f"http://{report.endpoint}/anything", timeout=5).json()
    env = answer["env"]
    assert env["PORT"] == str(port) and env["MODE"] == "ok" and env[MARKER_ENV] == "sl-test"
    assert env["SPOTLEASH_HEARTBEAT_TOKEN"] is None and env["SPOTLEASH_AGENT_CONFIG"] is None  # secrets stay out
    assert env["VIRTUAL_ENV"].endswith("venv")
    assert [Path(p).name for p in env[STATE_PATHS_ENV].split(os.pathsep)] == ["workspace", "app"]


def test_crash_at_start_restarts_with_backoff_and_reports_failing(run: Callable[..., Supervisor]) -> None:
    sup = run("crash")
    runner = sup.runners[0]
    wait_until(lambda: runner.restarts >= 4, 20, "four restarts")
    report = only(sup)
    assert report.state == "failing" and not report.gave_up
    assert report.error == "exited with code 3: boom: the model file is missing"
    starts = [datetime.strptime(m, "%Y-%m-%d %H:%M:%S,%f")
              for m in re.findall(r"^(\S+ \S+) --- starting", runner.log_path.read_text(), re.M)]
    gaps = [(b - a).total_seconds() for a, b in zip(starts, starts[1:], strict=False)]
    assert len(gaps) >= 3
    assert gaps[0] >= 0.18 and gaps[1] >= 0.38 and gaps[2] >= 0.78  # 0.2, 0.4, 0.8 s: exponential
    assert "boom: the model file is missing" in runner.log_path.read_text()  # the output is kept in its log


def test_never_healthy_gives_up_at_its_deadline(run: Callable[..., Supervisor]) -> None:
    sup = run("sick", timeout_s=1.5)
    t0 = time.monotonic()
    wait_until(lambda: only(sup).gave_up, 10, "the deadline")
    assert time.monotonic() - t0 >= 1.4
    report = only(sup)
    assert report.state == "failing"
    assert report.error is not None and report.error.startswith("not healthy within 1.5 s: health check answered HTTP 503")


def test_taken_port_moves_the_component_and_its_endpoint(run: Callable[..., Supervisor]) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        sup = run("ok", port=taken)
        wait_until(lambda: only(sup).state == "healthy", 15, "healthy")
        endpoint = only(sup).endpoint
        assert endpoint is not None and not endpoint.endswith(f":{taken}")
        assert httpx.get(f"http://{endpoint}/healthz", timeout=5).status_code == 200


def test_stop_ends_the_whole_process_group(run: Callable[..., Supervisor], tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    sup = run("child", CHILD_PID_FILE=str(pid_file))
    wait_until(lambda: only(sup).state == "healthy" and pid_file.exists(), 15, "healthy with a grandchild")
    leader, grandchild = sup.runners[0].pid, int(pid_file.read_text())
    assert leader is not None and psutil.pid_exists(grandchild)
    t0 = time.monotonic()
    sup.stop()
    assert time.monotonic() - t0 < 5
    for pid in (leader, grandchild):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_output_of_each_component_goes_to_its_own_log(run: Callable[..., Supervisor]) -> None:
    sup = run("ok")
    wait_until(lambda: only(sup).state == "healthy", 15, "healthy")
    runner = sup.runners[0]
    assert runner.log_path.name == "c-ok.log"
    assert f"listening on {runner.port}" in runner.log_path.read_text()
    assert json.loads(httpx.get(f"http://127.0.0.1:{runner.port}/x", timeout=5).text)["path"] == "/x"
