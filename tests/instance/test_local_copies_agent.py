"""``spotleash agent`` runs the local copies, as a real process with a small app (no local stack: its publishes
go nowhere, which only the release's confirmation notices). A ``kill -9`` of the agent leaves its copies running
(nothing else could stop them); the next agent of the lease ends them, by the marker in their environment,
before starting its own; a SIGTERM stops them all — no process of a local copy is left (psutil). ``spotleash
logs`` shows a local copy's output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from tests.support.component_processes import COMPONENT, free_port, wait_until

from local_emulator.json_log import first_logged
from spotleash.agent.local_copies import LOCAL_MARKER_ENV, marker_of
from spotleash.polling import wait_until as poll
from spotleash.supervisor.marked import find_marked

LEASE = "localcopy-test"


def app_toml(ports: dict[str, int]) -> str:
    heavy = f"""[[app.components]]
name = "heavy"
command = [{json.dumps(sys.executable)}, {json.dumps(str(COMPONENT))}]
port = 8101
env = {{ MODE = "child", CHILD_PID_FILE = "child.pid" }}
local_url = "http://127.0.0.1:{ports['heavy']}"
"""
    light = f"""[[app.components]]
name = "light"
command = [{json.dumps(sys.executable)}, {json.dumps(str(COMPONENT))}]
port = 8102
local_url = "http://127.0.0.1:{ports['light']}"
"""
    return f'[app]\nname = "tiny"\ndir = "."\n\n{heavy}\n{light}'


class Agents:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.ports = {"heavy": free_port(), "light": free_port()}
        (work / "spotleash.toml").write_text(app_toml(self.ports))
        trace = work / "low.csv"
        trace.write_text("t_seconds,percent\n0,10\n1,10\n")
        self.trace = trace
        self.env = {**os.environ, "SPOTLEASH_CONFIG_FILE": str(work / "spotleash.toml"),
                    "SPOTLEASH_STATE_DIR": str(work / "state"), "SPOTLEASH_PROJECT": "local-copies-test",
                    "PUBSUB_EMULATOR_HOST": f"127.0.0.1:{free_port()}", "SPOTLEASH_SHUTDOWN_BUDGET_S": "2",
                    "NO_GCE_CHECK": "true", "PYTHONUNBUFFERED": "1"}
        for var in ("SPOTLEASH_COMPONENTS", "SPOTLEASH_COMPONENT_RAM_GB", "SPOTLEASH_GPU_COMPONENTS",
                    "SPOTLEASH_ROUTER_ADMIN_PORT"):
            self.env.pop(var, None)
        self.marker = marker_of(LEASE, work / "state")
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, n: int) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.work / f"agent-{n}.log"
        with log.open("wb") as out:
            p = subprocess.Popen([sys.executable, "-m", "spotleash.cli", "agent", "--lease-id", LEASE,
                                  "--trace", str(self.trace)], cwd=self.work, env=self.env, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)
        return p, log

    def copies(self) -> list[psutil.Process]:
        return find_marked(LOCAL_MARKER_ENV, self.marker)

    def both_answer(self) -> bool:
        for p in self.procs:
            if p.poll() is not None and p.returncode != -signal.SIGKILL:
                log = self.work / f"agent-{self.procs.index(p) + 1}.log"
                raise AssertionError(f"the agent exited {p.returncode}: {log.read_text()[-2000:]}")
        try:
            return all(httpx.get(f"http://127.0.0.1:{p}/healthz", timeout=2).status_code == 200
                       for p in self.ports.values())
        except httpx.HTTPError:
            return False

    def logs(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "spotleash.cli", "logs", *args, "--lease-id", LEASE],
                              cwd=self.work, env=self.env, capture_output=True, text=True, timeout=60)


def alive(p: psutil.Process) -> bool:
    """Running, and not a zombie (a dead process whose parent died before reaping it: it holds nothing)."""
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Agents]:
    a = Agents(tmp_path)
    yield a
    for p in a.procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
    for p in a.copies():  # only if a test failed half-way
        p.kill()


def test_after_a_kill_9_the_next_agent_ends_the_leftover_copies_and_a_sigterm_leaves_none(agents: Agents) -> None:
    first, first_log = agents.start(1)
    wait_until(lambda: agents.both_answer() and (agents.work / "child.pid").exists(), 60, "both local copies")
    old = agents.copies()
    grandchild = int((agents.work / "child.pid").read_text())
    assert len(old) == 3 and grandchild in {p.pid for p in old}, "two copies, one with a grandchild, all marked"
    assert first_logged(first_log, "local copies starting") is not None

    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    assert all(alive(p) for p in old), "kill -9 of the agent leaves its copies behind: the case to handle"
    (agents.work / "child.pid").unlink()

    second, second_log = agents.start(2)
    ended = poll(lambda: first_logged(second_log, "ended local copies a previous agent left running"), timeout_s=60,
                 what="the second agent to end the leftovers")
    assert sorted(ended["pids"]) == sorted(p.pid for p in old)
    assert ended["components"] == ["heavy", "light"]
    assert not any(alive(p) for p in old), "is_running checks the create time too: no reused pid is counted"
    wait_until(lambda: agents.both_answer() and (agents.work / "child.pid").exists(), 60, "the new local copies")
    new = agents.copies()
    assert len(new) == 3 and not {p.pid for p in new} & {p.pid for p in old}

    shown = agents.logs("light")
    assert shown.returncode == 0, shown.stderr
    assert f"listening on {agents.ports['light']}" in shown.stdout and "--- starting" in shown.stdout
    unknown = agents.logs("nope")
    assert unknown.returncode == 2 and "its components: heavy, light" in unknown.stderr

    os.kill(second.pid, signal.SIGTERM)
    second.wait(timeout=30)
    assert first_logged(second_log, "components stopped") is not None
    assert agents.copies() == [], "no process of a local copy outlives the agent"
    assert not any(alive(p) for p in new)
