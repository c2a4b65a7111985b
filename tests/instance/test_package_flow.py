"""The instance side of a package, for real: ``python -m spotleash.instance_agent`` fetches a package
built with the package format from an HTTP server speaking Cloud Storage's JSON media download (as
``STORAGE_EMULATOR_HOST``), verifies it, installs it offline into a venv, starts and probes its
components and reports them in its heartbeats; told to stop, it ends them. Bad packages are reported,
never run. No local stack needed (the emulator's API is one GET; the heartbeat receiver is ours)."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from tests.support.wheels import tiny_wheel

from spotleash.instance_agent.environment import MARKER_ENV
from spotleash.wire.package import AppSpec, ComponentSpec, build_package, package_object

pytestmark = pytest.mark.slow
BUCKET = "sl-packages"

SERVER = '''\
import http.server, json, os
import tinylib

MODE = os.environ.get("MODE", "ok")

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"greeting": tinylib.greet(), "path": self.path}).encode()
        self.send_response(503 if MODE == "sick" else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass

print("serving", os.environ["PORT"], flush=True)
http.server.ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
'''


@dataclass
class Cloud:
    """Cloud Storage media downloads + the on_heartbeat receiver, on one loopback server."""

    objects: dict[str, bytes] = field(default_factory=dict)
    beats: list[dict[str, Any]] = field(default_factory=list)
    downloads: int = 0
    stop: bool = False
    url: str = ""

    def last(self) -> dict[str, Any]:
        return self.beats[-1] if self.beats else {}


@pytest.fixture
def cloud() -> Iterator[Cloud]:
    c = Cloud()

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            parts = urllib.parse.urlsplit(self.path)
            prefix = f"/download/storage/v1/b/{BUCKET}/o/"
            name = urllib.parse.unquote(parts.path[len(prefix):]) if parts.path.startswith(prefix) else ""
            if parts.query != "alt=media" or name not in c.objects:
                self.send_response(404)
                self.end_headers()
                return
            c.downloads += 1
            self.send_response(200)
            self.send_header("Content-Length", str(len(c.objects[name])))
            self.end_headers()
            self.wfile.write(c.objects[name])

        def do_POST(self) -> None:  # noqa: N802
            beat = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            assert self.headers["Authorization"] == "Bearer tok-1"
            c.beats.append(beat)
            reply: dict[str, Any] = {"action": "stop" if c.stop else "continue"}
            ask = (beat.get("snapshot") or {}).get("op")
            if ask is not None:  # as the control plane answers a lease that has no snapshot yet
                reply["snapshot"] = {"restore": {"kind": "restore_grant"}, "restored": {"kind": "noted"}}.get(
                    ask, {"kind": "refused", "detail": "this receiver takes no snapshots"})
            body = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    c.url = f"http://127.0.0.1:{srv.server_address[1]}"
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield c
    srv.shutdown()
    srv.server_close()


def publish(cloud: Cloud, tmp: Path, *, requirements: tuple[str, ...] = ("tinylib",)) -> str:
    app_dir = tmp / "app-src"
    app_dir.mkdir(exist_ok=True)
    (app_dir / "server.py").write_text(SERVER)
    wheels = tmp / "wheels"
    wheels.mkdir(exist_ok=True)
    app = AppSpec(name="demo", components=[
        ComponentSpec(name="web", command=["python", "server.py"], port=18231, health_path="/healthz"),
        ComponentSpec(name="sick", command=["python", "server.py"], port=18232, env={"MODE": "sick"},
                      start_timeout_s=2),
    ])
    sha, _ = build_package(tmp / "pkg.tar.gz", app, {"server.py": app_dir / "server.py"}, [tiny_wheel(wheels)],
                           list(requirements))
    cloud.objects[package_object(sha)] = (tmp / "pkg.tar.gz").read_bytes()
    return sha


@dataclass
class Agent:
    proc: subprocess.Popen[bytes]
    instance_id: str
    started: float
    log_path: Path

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out


@pytest.fixture
def agent(cloud: Cloud, tmp_path: Path) -> Iterator[Callable[..., Agent]]:
    agents: list[Agent] = []

    def start(sha: str, components: list[str], *, uri_sha: str | None = None) -> Agent:
        instance_id = f"sl-flow-{len(agents)}-{os.getpid()}"
        cfg = {"instance_id": instance_id, "lease_id": "l-flow", "heartbeat_url": f"{cloud.url}/hb",
               "heartbeat_interval_s": 1.0, "package_sha256": sha, "advertise_host": "127.0.0.1",
               "package_uri": f"gs://{BUCKET}/{package_object(uri_sha or sha)}", "components": components}
        env = {**os.environ, "SPOTLEASH_AGENT_CONFIG": json.dumps(cfg), "SPOTLEASH_HEARTBEAT_TOKEN": "tok-1",
               "STORAGE_EMULATOR_HOST": cloud.url, "PYTHONUNBUFFERED": "1",
               "SPOTLEASH_VM_ROOT": str(tmp_path / f"{instance_id}-disk")}  # its /workspace, not this machine's
        log_path = tmp_path / f"{instance_id}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(  # noqa: S603
                [sys.executable, "-m", "spotleash.instance_agent", "--provider", "vast",
                 "--work-dir", str(tmp_path / instance_id)],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        a = Agent(proc, instance_id, time.monotonic(), log_path)
        agents.append(a)
        return a

    yield start
    for a in agents:
        if a.proc.poll() is None:
            a.proc.terminate()
            try:
                a.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                a.proc.kill()
        for p in component_processes(a.instance_id):
            p.kill()


def component_processes(instance_id: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get(MARKER_ENV) == instance_id and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            continue
    return found


def wait_for(cond: Callable[[], bool], timeout: float, what: str, agent: Agent | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            tail = "\n".join(agent.log_path.read_text().splitlines()[-15:]) if agent else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{tail}")
        time.sleep(0.1)


def test_package_installs_offline_and_its_component_becomes_healthy(cloud: Cloud, agent: Callable[..., Agent],
                                                                   tmp_path: Path) -> None:
    sha = publish(cloud, tmp_path)
    a = agent(sha, ["web"])
    wait_for(lambda: bool(cloud.beats), 20, "a first beat", a)
    first = cloud.beats[0]
    assert first["components"]["web"]["state"] == "starting" and first["failure"] is None
    wait_for(lambda: cloud.last().get("components", {}).get("web", {}).get("state") == "healthy", 120,
             "web healthy", a)
    became_healthy_s = time.monotonic() - a.started
    web = cloud.last()["components"]["web"]
    assert set(cloud.last()["components"]) == {"web"}  # only what it was launched for
    answer = httpx.get(f"http://{web['endpoint']}/hello", timeout=5).json()
    assert answer == {"greeting": "hello from tinylib", "path": "/hello"}  # the wheel installed offline runs
    assert cloud.downloads == 1
    timings = next(e for e in a.log_lines() if e.get("message") == "all components healthy")
    print(f"\nagent start -> web healthy beat: {became_healthy_s:.1f} s; agent's own timings: "
          f"fetch {timings['fetch_s']} s, install {timings['install_s']} s, to healthy {timings['to_healthy_s']} s")
    assert component_processes(a.instance_id)

    cloud.stop = True
    assert a.proc.wait(timeout=20) == 0
    wait_for(lambda: not component_processes(a.instance_id), 5, "the component processes to be gone")
    work = tmp_path / a.instance_id
    assert (work / "logs" / "web.log").read_text().count("serving") == 1


def test_a_component_never_healthy_is_reported_given_up(cloud: Cloud, agent: Callable[..., Agent],
                                                        tmp_path: Path) -> None:
    sha = publish(cloud, tmp_path)
    a = agent(sha, ["sick"])
    wait_for(lambda: cloud.last().get("components", {}).get("sick", {}).get("gave_up") is True, 120,
             "sick to give up", a)
    sick = cloud.last()["components"]["sick"]
    assert sick["state"] == "failing" and sick["error"].startswith("not healthy within 2 s: health check answered HTTP 503")
    cloud.stop = True  # what the control plane answers once it has deleted the instance
    assert a.proc.wait(timeout=20) == 0
    wait_for(lambda: not component_processes(a.instance_id), 5, "the component processes to be gone")


def test_a_hash_mismatch_is_reported_and_nothing_is_extracted(cloud: Cloud, agent: Callable[..., Agent],
                                                              tmp_path: Path) -> None:
    sha = publish(cloud, tmp_path)
    other = hashlib.sha256(b"another package").hexdigest()
    cloud.objects[package_object(other)] = cloud.objects[package_object(sha)]  # an object under a wrong name
    a = agent(other, ["web"])
    wait_for(lambda: cloud.last().get("failure") is not None, 30, "a failure report", a)
    failure = cloud.last()["failure"]
    assert failure["reason"] == "package_unverified" and sha in failure["detail"]
    assert cloud.last()["components"]["web"]["state"] == "failing"
    work = tmp_path / a.instance_id
    assert not list(work.glob("pkg-*")) and not list((work / "archives").iterdir())
    assert not component_processes(a.instance_id)
    cloud.stop = True
    assert a.proc.wait(timeout=20) == 0


def test_a_missing_package_is_reported(cloud: Cloud, agent: Callable[..., Agent]) -> None:
    a = agent("b" * 64, ["web"])
    wait_for(lambda: cloud.last().get("failure") is not None, 30, "a failure report", a)
    assert cloud.last()["failure"]["reason"] == "package_missing"
    cloud.stop = True
    assert a.proc.wait(timeout=20) == 0


def test_a_package_that_fails_to_install_is_reported(cloud: Cloud, agent: Callable[..., Agent],
                                                     tmp_path: Path) -> None:
    sha = publish(cloud, tmp_path, requirements=("tinylib", "not-in-the-package==9"))
    a = agent(sha, ["web"])
    wait_for(lambda: cloud.last().get("failure") is not None, 120, "a failure report", a)
    failure = cloud.last()["failure"]
    assert failure["reason"] == "package_install_failed"
    assert "pip install (offline) exited with code 1" in failure["detail"] and "not-in-the-package" in failure["detail"]
    assert not component_processes(a.instance_id)
    cloud.stop = True
    assert a.proc.wait(timeout=20) == 0


SYSTEM_PYTHON = "/usr/bin/python3"


def bootstrap_env(cloud: Cloud, sha: str, components: list[str], instance_id: str) -> dict[str, str]:
    cfg = {"instance_id": instance_id, "lease_id": "l-flow", "heartbeat_url": f"{cloud.url}/hb",
           "heartbeat_interval_s": 1.0, "package_sha256": sha, "advertise_host": "127.0.0.1",
           "package_uri": f"gs://{BUCKET}/{package_object(sha)}", "components": components}
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON", "UV"))}
    return {**clean, "SPOTLEASH_AGENT_CONFIG": json.dumps(cfg), "SPOTLEASH_HEARTBEAT_TOKEN": "tok-1",
            "STORAGE_EMULATOR_HOST": cloud.url}


@pytest.mark.skipif(not Path(SYSTEM_PYTHON).exists(), reason="no system python3")
def test_bootstrap_on_the_system_python_then_the_agent_supervises_what_it_installed(
        cloud: Cloud, tmp_path: Path) -> None:
    """bootstrap.py alone, on the OS's python3 (Debian 12: 3.11.2, no spotleash, no tar filters), fetches
    and installs; the agent started with --package-root supervises the result."""
    from spotleash.instance_agent import bootstrap

    sha = publish(cloud, tmp_path)
    work = tmp_path / "boot-work"
    env = bootstrap_env(cloud, sha, ["web"], "sl-boot")
    t0 = time.monotonic()
    done = subprocess.run([SYSTEM_PYTHON, "-I", bootstrap.__file__, "--provider", "vast", "--work-dir", str(work),
                           "--no-exec"], env=env, capture_output=True, text=True, timeout=300, check=False)
    install_s = time.monotonic() - t0
    assert done.returncode == 0, done.stderr
    root = Path(done.stdout.strip())
    assert (root / "venv" / "bin" / "python").exists() and (root / "app" / "server.py").exists()
    assert cloud.beats and cloud.beats[0]["components"] == {"web": {"state": "starting"}}  # it beat while working

    agent_env = {**os.environ, **{k: env[k] for k in ("SPOTLEASH_AGENT_CONFIG", "SPOTLEASH_HEARTBEAT_TOKEN")}}
    proc = subprocess.Popen([sys.executable, "-m", "spotleash.instance_agent", "--provider", "vast",  # noqa: S603
                             "--work-dir", str(work), "--package-root", str(root)],
                            env=agent_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: cloud.last().get("components", {}).get("web", {}).get("state") == "healthy", 60,
                 "web healthy")
        print(f"\nbootstrap on {SYSTEM_PYTHON}: fetch+verify+venv+install {install_s:.1f} s; "
              f"then healthy {time.monotonic() - t0 - install_s:.1f} s later")
        endpoint = cloud.last()["components"]["web"]["endpoint"]
        assert httpx.get(f"http://{endpoint}/", timeout=5).json()["greeting"] == "hello from tinylib"
        assert cloud.downloads == 1  # the agent did not fetch again
        cloud.stop = True
        assert proc.wait(timeout=20) == 0
        wait_for(lambda: not component_processes("sl-boot"), 5, "the component processes to be gone")
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.skipif(not Path(SYSTEM_PYTHON).exists(), reason="no system python3")
def test_bootstrap_reports_a_bad_package_and_exits(cloud: Cloud, tmp_path: Path) -> None:
    from spotleash.instance_agent import bootstrap

    sha = publish(cloud, tmp_path)
    other = hashlib.sha256(b"x").hexdigest()
    cloud.objects[package_object(other)] = cloud.objects[package_object(sha)]
    work = tmp_path / "boot-work"
    done = subprocess.run([SYSTEM_PYTHON, "-I", bootstrap.__file__, "--provider", "vast", "--work-dir", str(work)],
                          env=bootstrap_env(cloud, other, ["web"], "sl-boot-bad"), capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 1
    assert cloud.last()["failure"]["reason"] == "package_unverified"
    assert cloud.last()["components"]["web"]["state"] == "failing"
    assert not list(work.glob("pkg-*")) and not list((work / "archives").iterdir())


@pytest.mark.skipif(not Path(SYSTEM_PYTHON).exists(), reason="no system python3")
def test_the_agent_reports_the_install_s_last_step_failing_and_starts_nothing(cloud: Cloud, tmp_path: Path) -> None:
    """The app's requirements the bootstrap leaves to the agent (``bootstrap.RestInstall``) fail: the agent's
    heartbeat says ``package_install_failed`` with the step's output, and no component starts."""
    from spotleash.instance_agent import bootstrap

    sha = publish(cloud, tmp_path)
    work = tmp_path / "boot-work"
    env = bootstrap_env(cloud, sha, ["web"], "sl-rest-bad")
    done = subprocess.run([SYSTEM_PYTHON, "-I", bootstrap.__file__, "--provider", "vast", "--work-dir", str(work),
                           "--no-exec"], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    root = Path(done.stdout.strip())
    bootstrap.write_rest(root, ["sh", "-c", "echo 'no wheel for not-in-the-package'; exit 1"])
    agent_env = {**os.environ, **{k: env[k] for k in ("SPOTLEASH_AGENT_CONFIG", "SPOTLEASH_HEARTBEAT_TOKEN")}}
    proc = subprocess.Popen([sys.executable, "-m", "spotleash.instance_agent", "--provider", "vast",  # noqa: S603
                             "--work-dir", str(work), "--package-root", str(root)],
                            env=agent_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: cloud.last().get("failure") is not None, 60, "a failure report")
        failure = cloud.last()["failure"]
        assert failure["reason"] == "package_install_failed"
        assert "exited with code 1" in failure["detail"] and "not-in-the-package" in failure["detail"]
        assert not component_processes("sl-rest-bad") and not list((work / "logs").glob("web*"))
        assert (root / bootstrap.REST_FILE).exists()  # a restarted agent tries it again
    finally:
        proc.kill()
        proc.wait(timeout=10)
