"""An app that keeps state, published for the failover tests, and what they do with it through real interfaces.

``examples/thumbs`` plus a ``notes`` component and ``state_paths = ["/workspace"]`` (VAST's default, a plain
directory on a GCE VM). ``notes`` finds its state directory the way an app should: the first entry of
``SPOTLEASH_STATE_PATHS``, which the instance agent gives every component (on the fakes it lies under the
instance's own disk, ``SPOTLEASH_VM_ROOT``). It serves the sha256 of ``notes.bin`` as it was when the process
started, so a test learns what a replacement's component found at its start — after the restore, before any
request.

``published(...)`` publishes it through the CLI and restarts the launchers (on_demand, on_heartbeat, on_reap)
with the package bucket and the given settings in their environment, as a redeploy would; restored at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from tests.e2e.flows import Flows

from local_emulator.stack import set_launcher_env
from spotleash.model import ENDED, InstanceRecord, SnapshotRecord, SnapshotState, State
from spotleash.polling import wait_until
from spotleash.topology import load_topology
from spotleash.wire.events import Component, DemandEvent

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "thumbs"
STATE_PATH = "/workspace"
READY_TIMEOUT_S = 240.0

NOTES_PY = '''"""Serves the sha256 of notes.bin in its state directory as it was when the process started (or null),
its state paths and the instance it runs on."""
import hashlib
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PATHS = [p for p in os.environ.get("SPOTLEASH_STATE_PATHS", "").split(os.pathsep) if p]
STATE = os.path.join(PATHS[0], "notes.bin") if PATHS else None
AT_START = hashlib.sha256(open(STATE, "rb").read()).hexdigest() if STATE and os.path.exists(STATE) else None
WHO = os.environ.get("SPOTLEASH_COMPONENT_OF", "local")  # the instance it runs on; "local": the user's copy


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"sha256_at_start": AT_START, "state_paths": PATHS, "served_by": WHO}).encode() \\
            if self.path == "/state" else b"ok"
        self.send_response(200 if self.path in ("/state", "/healthz") else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer((os.environ.get("HOST", "0.0.0.0"), int(os.environ["PORT"])), Handler).serve_forever()
'''

NOTES_TOML = '''
[[app.components]]
name = "notes"
command = ["python", "notes.py"]
port = {port}
health_path = "/healthz"
ram_gb = 1
'''


def notes_app(tmp: Path, *, state_path: str | None, port: int) -> Path:
    """examples/thumbs (same requirements: its resolved wheels are cached) plus ``notes`` on ``port``; with
    ``state_path`` declared as the app's state path (None: the provider's default)."""
    app = tmp / "notes-app"
    shutil.copytree(EXAMPLE, app)
    toml = (app / "spotleash.toml").read_text()
    if state_path is not None:
        # after the [app] table's requirements line, whatever the example requires
        toml = re.sub(r"(?m)^(requirements = \[.*\])$", lambda m: f'{m.group(1)}\nstate_paths = ["{state_path}"]',
                      toml, count=1)
        assert f'state_paths = ["{state_path}"]' in toml
    (app / "spotleash.toml").write_text(toml + NOTES_TOML.format(port=port))
    (app / "notes.py").write_text(NOTES_PY)
    return app


def state_app(tmp: Path) -> Path:
    """The failover tests' app: ``notes`` with ``/workspace`` declared."""
    return notes_app(tmp, state_path=STATE_PATH, port=8132)


@contextmanager
def published(state_dir: Path, tmp: Path, settings: dict[str, str]) -> Iterator[dict[str, Any]]:
    """The app published, the launchers restarted with the bucket and ``settings``; all undone at the end."""
    bucket = load_topology().package_bucket
    cache = Path(os.environ.get("SPOTLEASH_TEST_WHEEL_CACHE", Path.home() / ".cache" / "spotleash" / "test-wheels"))
    cache.mkdir(parents=True, exist_ok=True)
    (tmp / "publish-state").mkdir()
    (tmp / "publish-state" / "wheels").symlink_to(cache, target_is_directory=True)
    app = state_app(tmp)
    env = {**os.environ, "SPOTLEASH_PACKAGE_BUCKET": bucket, "SPOTLEASH_STATE_DIR": str(tmp / "publish-state")}
    out = subprocess.run([sys.executable, "-m", "spotleash.cli", "publish", "--app", str(app), "--json"],
                         env=env, capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    saved = os.environ.get("SPOTLEASH_PACKAGE_BUCKET")
    set_launcher_env(state_dir, {"SPOTLEASH_PACKAGE_BUCKET": bucket, **settings})
    os.environ["SPOTLEASH_PACKAGE_BUCKET"] = bucket
    try:
        yield json.loads(out.stdout)
    finally:
        set_launcher_env(state_dir, {"SPOTLEASH_PACKAGE_BUCKET": "", **{k: None for k in settings}})
        if saved is None:
            os.environ.pop("SPOTLEASH_PACKAGE_BUCKET", None)
        else:
            os.environ["SPOTLEASH_PACKAGE_BUCKET"] = saved


def notes_demand(lease_id: str, *, gpu: bool = False) -> DemandEvent:
    return DemandEvent(lease_id=lease_id, trigger="manual", ram_percent=91.0,
                       components=[Component(name="notes", ram_gb=1.0, gpu=gpu)])


def wait_ready(flows: Flows, lease_id: str, *, replaces: str | None = None, besides: frozenset[str] = frozenset(),
               timeout_s: float = READY_TIMEOUT_S) -> InstanceRecord:
    """The lease's READY instance (the one replacing ``replaces``, when given; not one of ``besides``); one that
    ended fails at once."""
    def check() -> InstanceRecord | None:
        for r in flows.records_of(lease_id):
            if r.replaces != replaces or r.instance_id in besides or (r.preempted and replaces is None):
                continue
            if r.state in ENDED:
                raise AssertionError(f"{r.instance_id} ended {r.state}: {r.reason}")
            if r.state == State.READY and not r.preempted:
                return r
        return None

    got: InstanceRecord = wait_until(check, timeout_s=timeout_s, interval_s=0.5,
                                     what=f"a READY instance of {lease_id}" + (f" replacing {replaces}" if replaces else ""))
    return got


def box(flows: Flows, rec: InstanceRecord) -> dict[str, Any]:
    """The instance as its provider's fake shows it (control API), with its disk's ``root``."""
    if rec.provider == "gce":
        [vm] = [v for v in flows.vms() if rec.instance_id in v["labels"].values()]
        return vm
    r = httpx.get(f"{os.environ['SPOTLEASH_VAST_URL']}/_control/inspect", timeout=10)
    r.raise_for_status()
    [found] = [b for b in r.json()["instances"] if str(b["id"]) == rec.provider_id]
    return dict(found)


def vast_control(path: str) -> None:
    """The VAST fake's control API: what only the provider does (outbid a bid)."""
    httpx.post(f"{os.environ['SPOTLEASH_VAST_URL']}/_control/{path}", timeout=30).raise_for_status()


def state_dir_of(flows: Flows, rec: InstanceRecord) -> Path:
    return Path(box(flows, rec)["root"]) / STATE_PATH.lstrip("/")


def write_state(flows: Flows, rec: InstanceRecord, size: int = 300_000) -> str:
    """A fresh ``notes.bin`` in the instance's state directory; its sha256."""
    where = state_dir_of(flows, rec)
    where.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    (where / "notes.bin").write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def notes_state(rec: InstanceRecord) -> dict[str, Any]:
    """What ``notes`` on ``rec`` says: the sha256 of its state file at its start, and its state paths."""
    endpoint = rec.component_states["notes"].endpoint
    assert endpoint
    r = httpx.get(f"http://{endpoint}/state", timeout=10)
    r.raise_for_status()
    got: dict[str, Any] = r.json()
    return got


def request_snapshot(lease_id: str, instance_id: str, wait_s: float = 90.0) -> dict[str, Any]:
    """``spotleash snapshot create --wait`` (the CLI, as a user types it): the verified snapshot's JSON."""
    out = subprocess.run([sys.executable, "-m", "spotleash.cli", "snapshot", "create", "--lease-id", lease_id,
                          "--instance", instance_id, "--wait", str(wait_s), "--json"],
                         capture_output=True, text=True, timeout=wait_s + 60, check=False)
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-3000:])
    snap: dict[str, Any] = json.loads(out.stdout)["snapshot"]
    assert snap["state"] == "VERIFIED", snap
    return snap


def verified_of(flows: Flows, lease_id: str, instance_id: str) -> list[SnapshotRecord]:
    """The verified snapshots ``instance_id`` took, oldest first."""
    return sorted((s for s in flows.store.snapshots_of_lease(lease_id)
                   if s.state is SnapshotState.VERIFIED and s.instance_id == instance_id),
                  key=lambda s: (s.created_at, s.snapshot_id))


def actions_of(flows: Flows, instance_id: str, action: str) -> list[dict[str, Any]]:
    return [e for e in flows.audit(instance_id) if e["action"] == action]
