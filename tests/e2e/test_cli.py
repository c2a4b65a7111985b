"""The ``spotleash`` command as a user runs it: real subprocesses, exit codes, JSON output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from tests.e2e.flows import Flows

from spotleash.events import Heartbeat
from spotleash.model import Hibernation
from spotleash.services.context import Context
from spotleash.snapshot_wire import SNAPSHOT_REQUEST_FIELD

pytestmark = [pytest.mark.e2e]


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**(env or os.environ), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "spotleash.cli_main", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_usage_and_configuration_errors_exit_2_with_one_clear_sentence(tmp_path: Path) -> None:
    assert cli("no-such-command").returncode == 2
    env = {**os.environ, "SPOTLEASH_RAM_THRESHOLD": "1.5", "SPOTLEASH_STATE_DIR": str(tmp_path)}
    bad = cli("status", env=env)
    assert bad.returncode == 2
    assert "SPOTLEASH_RAM_THRESHOLD" in bad.stderr and "Traceback" not in bad.stderr


def test_local_status_without_a_stack(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPOTLEASH_")}
    out = cli("local", "status", "--json", env={**env, "SPOTLEASH_STATE_DIR": str(tmp_path)})
    assert out.returncode == 0 and json.loads(out.stdout) == []


def test_status_reap_and_down_against_the_local_stack(local_stack: object) -> None:
    flows = Flows()
    lid = f"cli-{uuid.uuid4().hex[:8]}"
    with flows.lease_kept(lid):
        flows.demand(lid)
        rec = flows.wait_ready(lid)
        status = cli("status", "--json")
        assert status.returncode == 0, status.stderr
        shown = json.loads(status.stdout)
        rows = {r["instance_id"]: r for r in shown["instances"]}
        assert isinstance(shown["routes"], dict)  # keyed by component when an agent's router answers
        assert rows[rec.instance_id]["state"] == "READY" and "token_hash" not in rows[rec.instance_id]
        dry = cli("reap", "--dry-run", "--json")
        assert dry.returncode == 0, dry.stderr
        report = json.loads(dry.stdout)
        assert report["dry_run"] is True
        assert rec.instance_id not in [d["instance_id"] for d in report["decisions"]], "a healthy VM is not due"
        table = cli("status")
        assert table.returncode == 0 and rec.instance_id in table.stdout
        down = cli("down", "--lease-id", lid)
        assert down.returncode == 0, down.stderr
        flows.wait_gone(rec, timeout_s=30)
    gone = json.loads(cli("status", "--all", "--json").stdout)["instances"]
    assert any(r["instance_id"] == rec.instance_id and r["state"] == "TERMINATED" for r in gone)


def test_snapshot_commands_and_hibernated_status_against_the_local_stack(local_stack: object) -> None:
    """``snapshot create`` writes a request the on_heartbeat function really sends back (over HTTP, in the
    reply's ``snapshot_request``); ``restore`` of an unknown snapshot is a usage error; ``status`` lists a
    HIBERNATED lease with its snapshot's age and size."""
    flows = Flows()
    lid = f"snap-{uuid.uuid4().hex[:8]}"
    with flows.lease_kept(lid):
        flows.demand(lid)
        rec = flows.wait_ready(lid)
        listed = cli("snapshot", "list", "--lease-id", lid, "--json")
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout) == {"lease_id": lid, "snapshots": [], "restore_pin": None, "hibernated": None}
        made = cli("snapshot", "create", "--lease-id", lid, "--json")
        assert made.returncode == 0, made.stderr
        asked = json.loads(made.stdout)
        assert asked["instance_id"] == rec.instance_id and asked["snapshot"] is None
        token = Context(settings=flows.settings, store=flows.store).heartbeat_token(rec.instance_id)
        reply = httpx.post(os.environ["SPOTLEASH_HEARTBEAT_URL"], timeout=10,
                           content=Heartbeat(instance_id=rec.instance_id, lease_id=lid).model_dump_json(),
                           headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}).json()
        assert reply[SNAPSHOT_REQUEST_FIELD] == {"request_id": asked["request_id"], "reason": "on_demand"}

        bad = cli("snapshot", "restore", "no-such-snapshot", "--lease-id", lid)
        assert bad.returncode == 2 and "no snapshot no-such-snapshot" in bad.stderr and "Traceback" not in bad.stderr

        now = datetime.now(UTC)
        flows.store.put_hibernation(Hibernation(
            lease_id=f"{lid}-h", deployment_id=flows.settings.deployment_id, snapshot_id="s-hib", instance_id="sl-x",
            components=["vision"], snapshot_created_at=now - timedelta(minutes=5), size_bytes=7_000_000,
            hibernated_at=now - timedelta(minutes=4)))
        try:
            shown = json.loads(cli("status", "--json").stdout)["hibernated"]
            [hib] = [h for h in shown if h["lease_id"] == f"{lid}-h"]
            assert hib["state"] == "HIBERNATED" and hib["size_bytes"] == 7_000_000 and hib["snapshot_age_s"] >= 300
            table = cli("status")
            assert f"{lid}-h" in table.stdout and "HIBERNATED" in table.stdout and "7.0 MB" in table.stdout
        finally:
            flows.store.delete_hibernation(f"{lid}-h")
        flows.release(lid)
        flows.wait_gone(rec, timeout_s=30)
