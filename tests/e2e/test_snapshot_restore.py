"""A box keeps its work across instances, on the local stack (issue 14: snapshot → restore).

An app whose ``spotleash.toml`` declares ``state_paths = ["/var/lib/notes-state"]`` is published; a
demand for its ``notes`` component starts a Compute fake VM (its real startup script, the bootstrap,
the instance agent). A file written into that VM's state directory (the fake VM's disk,
``<vm root>/var/lib/notes-state``) is saved by the agent's periodic snapshot, which the control plane
verifies and records in Firestore. The instance is released (its disk goes with it); the next demand
for the same lease starts a second VM, whose agent restores the snapshot *before* starting ``notes``:
the component itself reports the sha256 of the file as it found it at its start, and it is the file's.

The launchers (on_demand, on_heartbeat, on_reap) are restarted with the package bucket and a 1 s
snapshot interval in their environment (as a redeploy would), and restored at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.e2e.flows import Flows
from tests.e2e.state_app import notes_app, wait_ready

from local_emulator import stack
from spotleash.model import InstanceRecord, SnapshotState, State
from spotleash.polling import wait_until
from spotleash.topology import load_topology
from spotleash.wire.events import Component, DemandEvent

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

LAUNCHERS = ("on_demand", "on_heartbeat", "on_reap")
STATE_PATH = "/var/lib/notes-state"

def _set_env(state_dir: Path, values: dict[str, str]) -> None:
    path = stack.env_file(state_dir)
    lines = [ln for ln in path.read_text().splitlines() if ln.split("=", 1)[0] not in values]
    path.write_text("\n".join([*lines, *(f"{k}={v}" for k, v in values.items())]) + "\n")
    for name in LAUNCHERS:  # one at a time: each restart rewrites stack.json
        stack.restart(state_dir, name)


@pytest.fixture(scope="module")
def published(local_stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    bucket = load_topology().package_bucket
    state_dir: Path = local_stack.state_dir
    cache = Path(os.environ.get("SPOTLEASH_TEST_WHEEL_CACHE", Path.home() / ".cache" / "spotleash" / "test-wheels"))
    cache.mkdir(parents=True, exist_ok=True)
    pub_state = tmp_path_factory.mktemp("publish-state")
    (pub_state / "wheels").symlink_to(cache, target_is_directory=True)
    app = notes_app(tmp_path_factory.mktemp("app"), state_path=STATE_PATH, port=8131)
    env = {**os.environ, "SPOTLEASH_PACKAGE_BUCKET": bucket, "SPOTLEASH_STATE_DIR": str(pub_state)}
    out = subprocess.run([sys.executable, "-m", "spotleash.cli", "publish", "--app", str(app), "--json"],
                         env=env, capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    saved = os.environ.get("SPOTLEASH_PACKAGE_BUCKET")
    _set_env(state_dir, {"SPOTLEASH_PACKAGE_BUCKET": bucket, "SPOTLEASH_SNAPSHOT_INTERVAL_S": "1"})
    os.environ["SPOTLEASH_PACKAGE_BUCKET"] = bucket
    try:
        yield json.loads(out.stdout)
    finally:
        _set_env(state_dir, {"SPOTLEASH_PACKAGE_BUCKET": "", "SPOTLEASH_SNAPSHOT_INTERVAL_S": "0"})
        if saved is None:
            os.environ.pop("SPOTLEASH_PACKAGE_BUCKET", None)
        else:
            os.environ["SPOTLEASH_PACKAGE_BUCKET"] = saved


def notes_demand(lease_id: str) -> DemandEvent:
    return DemandEvent(lease_id=lease_id, trigger="manual", ram_percent=91.0,
                       components=[Component(name="notes", ram_gb=1.0)])


def vm_root(flows: Flows, instance_id: str) -> Path:
    """The fake VM's disk (``SPOTLEASH_VM_ROOT``), from the Compute fake's control API."""
    r = httpx.get(f"{flows.compute_url}/_control/instances", timeout=10)
    r.raise_for_status()
    [vm] = [v for v in r.json()["instances"] if instance_id in v["labels"].values()]
    return Path(vm["root"])


def sha_at_start(rec: InstanceRecord) -> str | None:
    endpoint = rec.component_states["notes"].endpoint
    assert endpoint
    r = httpx.get(f"http://{endpoint}/state", timeout=10)
    r.raise_for_status()
    got: str | None = r.json()["sha256_at_start"]
    return got


def test_a_file_saved_on_one_vm_is_restored_on_the_next_before_its_component_starts(
        published: dict[str, Any]) -> None:
    flows = Flows()
    lease = "lease-snap-e2e"
    with flows.lease_kept(lease):
        flows.publish(notes_demand(lease))
        first = wait_ready(flows, lease)
        assert first.provider == "gce" and first.package_sha256 == published["sha256"]
        assert sha_at_start(first) is None  # a first instance: nothing to restore
        state = vm_root(flows, first.instance_id) / STATE_PATH.lstrip("/")
        state.mkdir(parents=True, exist_ok=True)
        data = os.urandom(300_000)
        (state / "notes.bin").write_bytes(data)
        want = hashlib.sha256(data).hexdigest()

        def saved() -> str | None:  # a verified snapshot holding the file (an earlier one may be empty)
            snaps = [s for s in flows.store.snapshots_of_lease(lease)
                     if s.state is SnapshotState.VERIFIED and s.instance_id == first.instance_id
                     and (s.raw_bytes or 0) >= len(data)]
            return max(snaps, key=lambda s: s.created_at).snapshot_id if snaps else None

        snapshot_id = wait_until(saved, timeout_s=60, interval_s=0.5, what="a verified snapshot of the file")

        flows.release(lease, first.instance_id)
        flows.wait_state(first.instance_id, {State.TERMINATED}, timeout_s=60)
        assert not state.exists(), "a deleted VM's disk goes with it"

        flows.publish(notes_demand(lease))
        second = wait_ready(flows, lease, besides=frozenset({first.instance_id}))
        assert sha_at_start(second) == want  # the component found the file at its very start
        restored = vm_root(flows, second.instance_id) / STATE_PATH.lstrip("/") / "notes.bin"
        assert hashlib.sha256(restored.read_bytes()).hexdigest() == want
        audit = [e for e in flows.store.audit_entries(second.instance_id) if e["action"] == "restored"]
        assert [e["snapshot_id"] for e in audit] == [snapshot_id]
        assert audit[0]["raw_bytes"] >= len(data)
        flows.release(lease)
        flows.wait_state(second.instance_id, {State.TERMINATED}, timeout_s=60)
