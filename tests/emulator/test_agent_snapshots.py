"""The instance agent itself (``InstanceAgent``, its config from the VAST transport's environment) beating
into the real heartbeat service over HTTP, with the Cloud Storage emulator: it restores before anything
else, reports ``idle_s``, and takes exactly one snapshot per ``snapshot_request`` a reply carries —
repeated replies or not. The receiver builds its reply body as ``functions/main.py`` does; it sets the
request on the reply itself (the control plane's decision to ask belongs to issue 14's other half)."""

from __future__ import annotations

import dataclasses
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.emulator.emulator_fixtures import gcs_emulator
from tests.support.builders import DEP, open_lease, put_record
from tests.support.memory_store import MemoryStore

from spotleash.adapters.storage import Storage
from spotleash.config import Settings
from spotleash.instance_agent.agent import InstanceAgent, env_source
from spotleash.model import SnapshotState, State
from spotleash.polling import wait_until
from spotleash.services.context import Context, token_hash
from spotleash.services.heartbeat import handle_heartbeat
from spotleash.wire.agent_config import CONFIG_ENV, TOKEN_ENV, AgentConfig
from spotleash.wire.events import Heartbeat
from spotleash.wire.snapshot import SNAPSHOT_REQUEST_FIELD, SnapshotRequest, UploadAsk

pytestmark = [pytest.mark.emulator, pytest.mark.slow]

BUCKET = "spotleash-test-agent-snapshots"
LEASE, IID = "lease-a", "sl-agent-1"


@dataclasses.dataclass
class ControlPlane:
    ctx: Context
    url: str
    request: SnapshotRequest | None = None  # set on every reply while not None
    beats: list[Heartbeat] = dataclasses.field(default_factory=list)


@pytest.fixture()
def plane(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[ControlPlane]:
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    with gcs_emulator(tmp_path_factory.mktemp("gcs-logs"), BUCKET) as gcs_url:
        settings = Settings(deployment_id=DEP, heartbeat_signing_key="k" * 32, package_bucket=BUCKET)  # type: ignore[arg-type]
        ctx = Context(settings=settings, store=MemoryStore(DEP), storage=Storage(BUCKET, project="p", emulator=gcs_url))
        open_lease(ctx, LEASE, ttl_s=3600)
        put_record(ctx, IID, LEASE, State.READY, provider="vast", token_hash=token_hash(ctx.heartbeat_token(IID)))
        lock = threading.Lock()
        plane = ControlPlane(ctx, "")

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                beat = Heartbeat.model_validate_json(self.rfile.read(int(self.headers["Content-Length"])))
                token = self.headers.get("Authorization", "").removeprefix("Bearer ")
                with lock:  # the emulated function handles one beat at a time
                    plane.beats.append(beat)
                    reply = dataclasses.replace(handle_heartbeat(ctx, beat, token), snapshot_request=plane.request)
                body: dict[str, Any] = {"action": reply.action, "detail": reply.detail}  # as functions/main.py
                if reply.snapshot is not None:
                    body["snapshot"] = reply.snapshot
                if reply.snapshot_request is not None:
                    body[SNAPSHOT_REQUEST_FIELD] = reply.snapshot_request.model_dump(mode="json")
                data = json.dumps(body).encode()
                self.send_response(reply.status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        plane.url = f"http://127.0.0.1:{server.server_address[1]}/on_heartbeat"
        t = threading.Thread(target=server.serve_forever, daemon=True)
        t.start()
        try:
            yield plane
        finally:
            server.shutdown()
            server.server_close()


def uploads(plane: ControlPlane) -> list[UploadAsk]:
    return [b.snapshot for b in plane.beats if isinstance(b.snapshot, UploadAsk)]


def test_the_agent_restores_first_reports_idle_and_takes_one_snapshot_per_request(
        plane: ControlPlane, tmp_path: Path) -> None:
    cfg = AgentConfig(instance_id=IID, lease_id=LEASE, heartbeat_url=plane.url, heartbeat_interval_s=0.2,
                      idle_cpu_percent=100.0)  # only requests would make this box busy: none come
    env = {CONFIG_ENV: cfg.to_json(), TOKEN_ENV: plane.ctx.heartbeat_token(IID),
           "SPOTLEASH_VM_ROOT": str(tmp_path / "box")}
    agent = InstanceAgent("vast", env_source(env), work_dir=tmp_path / "work", environ=env)
    runner = threading.Thread(target=agent.run, daemon=True)
    runner.start()
    try:
        wait_until(lambda: any(b.snapshot is not None and b.snapshot.op == "restored" for b in plane.beats),
                   timeout_s=30, interval_s=0.1, what="the restore at start")
        first_ops = [b.snapshot.op for b in plane.beats if b.snapshot is not None]
        assert first_ops[:2] == ["restore", "restored"]  # before anything else
        assert agent.keeper is not None and agent.keeper.roots == [tmp_path / "box" / "workspace"]
        wait_until(lambda: plane.beats[-1].idle_s > 0.5, timeout_s=30, interval_s=0.1, what="idle_s to grow")

        workspace = tmp_path / "box" / "workspace"
        workspace.mkdir(parents=True)
        (workspace / "model.ckpt").write_bytes(b"x" * 100_000)
        plane.request = SnapshotRequest(request_id="hib-7", reason="idle for 30 min")

        def verified() -> list[str]:
            return [s.snapshot_id for s in plane.ctx.store.snapshots_of_lease(LEASE)
                    if s.state is SnapshotState.VERIFIED]

        wait_until(lambda: len(verified()) == 1, timeout_s=30, interval_s=0.1, what="the requested snapshot")
        beats_then = len(plane.beats)
        wait_until(lambda: len(plane.beats) >= beats_then + 5, timeout_s=30, interval_s=0.1,
                   what="more replies repeating the request")
        assert [(u.trigger, u.request_id) for u in uploads(plane)] == [("requested", "hib-7")]
        snap = plane.ctx.store.get_snapshot(verified()[0])
        assert snap is not None and snap.raw_bytes == 100_000
    finally:
        agent.request_stop()
        runner.join(15)
    assert not runner.is_alive()
