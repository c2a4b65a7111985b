"""The instance side of the channel, in-process with real sockets and a real component process: a
workload whose config carries a route credential starts its TLS front before the components, every
component reports the front's address as its endpoint, the heartbeat carries the front's fingerprint,
the component is started on loopback (``HOST``), and the front admits only the lease's credential."""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import ssl
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from spotleash.instance_agent.bootstrap import MANIFEST_NAME
from spotleash.instance_agent.workload import Workload, endpoint_for, front_config
from spotleash.router.channel import (
    COMPONENT_HEADER,
    CREDENTIAL_HEADER,
    LOG_HEADER,
    credential_hash,
    new_credential,
)
from spotleash.wire.agent_config import AgentConfig
from spotleash.wire.package import AppSpec, ComponentSpec, Manifest

SERVER = """\
import http.server, json, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"path": self.path, "bound": self.server.server_address[0],
                           "saw_credential": "X-Spotleash-Credential" in self.headers}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer((os.environ.get("HOST", "0.0.0.0"), int(os.environ["PORT"])), H).serve_forever()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def installed_package(root: Path, port: int) -> Path:
    """What the bootstrap leaves behind: manifest, app tree, venv (the system interpreter stands in)."""
    (root / "app").mkdir(parents=True)
    (root / "venv" / "bin").mkdir(parents=True)
    (root / "app" / "server.py").write_text(SERVER)
    app = AppSpec(name="t", components=[ComponentSpec(name="web", command=[sys.executable, "server.py"], port=port,
                                                      health_path="/healthz", start_timeout_s=20)])
    manifest = Manifest(app=app, files={}, wheels=[], requirements=[])
    (root / MANIFEST_NAME).write_bytes(manifest.to_bytes())
    return root


def get(address: tuple[str, int], fingerprint: str, headers: dict[str, str], path: str = "/x",
        raw: bool = False) -> tuple[int, Any]:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # pinned by fingerprint below, as the router does
    conn = http.client.HTTPSConnection(*address, context=ctx, timeout=5)
    try:
        conn.connect()
        der = conn.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
        assert der is not None and hashlib.sha256(der).hexdigest() == fingerprint
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, body if raw else json.loads(body or b"{}")
    finally:
        conn.close()


@pytest.fixture
def credential() -> str:
    return new_credential()


def test_no_front_without_a_route_credential() -> None:
    assert front_config(AgentConfig(instance_id="i-1")) is None
    cfg = front_config(AgentConfig(instance_id="i-1", route_credential_sha256="a" * 64, advertise_host="127.0.0.1"))
    assert cfg is not None and cfg.listen_host == "127.0.0.1" and cfg.listen_port == 8443
    real = front_config(AgentConfig(instance_id="i-1", route_credential_sha256="a" * 64))
    assert real is not None and real.listen_host == "0.0.0.0"


def test_workload_starts_the_front_first_and_reports_it_as_every_endpoint(tmp_path: Path, credential: str) -> None:
    port, front_port = free_port(), free_port()
    agent_cfg = AgentConfig(instance_id="i-front", route_credential_sha256=credential_hash(credential),
                            advertise_host="127.0.0.1", front_port=front_port)
    changes: list[float] = []
    w = Workload(sha256="0" * 64, source=lambda: pytest.fail("installed already"), components=[],
                 instance_id="i-front", work_dir=tmp_path / "work", endpoint=endpoint_for("127.0.0.1", {}),
                 on_change=lambda: changes.append(time.monotonic()), env={"PATH": "/usr/bin:/bin"},
                 package_root=installed_package(tmp_path / "pkg", port), front=front_config(agent_cfg))
    try:
        w.start()
        assert w.front_address == ("127.0.0.1", front_port)  # bound before any component started
        fingerprint = w.tls_fingerprint
        assert fingerprint is not None and len(fingerprint) == 64
        deadline = time.monotonic() + 20
        while (reports := w.snapshot()[0]).get("web") is None or reports["web"].state != "healthy":
            assert time.monotonic() < deadline, reports
            time.sleep(0.1)
        assert reports["web"].endpoint == f"127.0.0.1:{front_port}", "the front is the component's only way in"
        ok = {CREDENTIAL_HEADER: credential, COMPONENT_HEADER: "web"}
        status, body = get(w.front_address, fingerprint, ok, "/a?b=1")
        assert status == 200 and body == {"path": "/a?b=1", "bound": "127.0.0.1", "saw_credential": False}
        assert get(w.front_address, fingerprint, {COMPONENT_HEADER: "web"})[0] == 401
        assert get(w.front_address, fingerprint, {**ok, CREDENTIAL_HEADER: new_credential()})[0] == 401
        assert get(w.front_address, fingerprint, {**ok, COMPONENT_HEADER: "other"})[0] == 404
        # spotleash logs --remote: the component's log file, through the same credential check
        status, text = get(w.front_address, fingerprint, {CREDENTIAL_HEADER: credential, LOG_HEADER: "web"}, "/",
                           raw=True)
        assert status == 200 and f"--- starting ['{sys.executable}', 'server.py'] (port {port}" in text.decode()
        assert get(w.front_address, fingerprint, {LOG_HEADER: "web"}, "/", raw=True)[0] == 401
    finally:
        w.stop()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", front_port), timeout=1):
        pass


def test_a_taken_front_port_on_loopback_falls_back_to_a_free_one(tmp_path: Path, credential: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        cfg = front_config(AgentConfig(instance_id="i-2", route_credential_sha256=credential_hash(credential),
                                       advertise_host="127.0.0.1", front_port=busy))
        w = Workload(sha256="0" * 64, source=lambda: pytest.fail("no fetch"), components=[], instance_id="i-2",
                     work_dir=tmp_path / "w", endpoint=endpoint_for("127.0.0.1", {}), env={"PATH": "/usr/bin"},
                     package_root=installed_package(tmp_path / "p", free_port()), front=cfg)
        try:
            w.start()
            assert w.front_address is not None and w.front_address[1] != busy
            assert w._component_endpoint(1234) == f"127.0.0.1:{w.front_address[1]}"
        finally:
            w.stop()


@pytest.mark.parametrize(("external_ip", "falls_back"), [("127.0.0.1", True), ("203.0.113.7", False)])
def test_a_taken_front_port_falls_back_only_where_the_instance_advertises_loopback(
        tmp_path: Path, credential: str, external_ip: str, falls_back: bool) -> None:
    """The fakes' VMs advertise their external IP, 127.0.0.1, and listen on every address: a preempted VM
    and its replacement share this machine. A real instance (public IP) whose port is taken fails instead."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        cfg = front_config(AgentConfig(instance_id="i-3", route_credential_sha256=credential_hash(credential),
                                       front_port=busy))
        assert cfg is not None and cfg.listen_host == "0.0.0.0"
        w = Workload(sha256="0" * 64, source=lambda: pytest.fail("no fetch"), components=[], instance_id="i-3",
                     work_dir=tmp_path / "w", endpoint=endpoint_for("", {}, external_ip), env={"PATH": "/usr/bin"},
                     package_root=installed_package(tmp_path / "p", free_port()), front=cfg)
        try:
            w.start()
            if falls_back:
                assert w.front_address is not None and w.front_address[1] != busy
                assert w._component_endpoint(1234) == f"127.0.0.1:{w.front_address[1]}"
            else:
                assert w.front_address is None and w.failure is not None and w.failure.reason == "front_failed"
        finally:
            w.stop()
