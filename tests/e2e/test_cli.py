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
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1
from tests.e2e.flows import Flows

from spotleash.model import Hibernation
from spotleash.providers.base import ownership_labels
from spotleash.services.context import Context
from spotleash.wire.events import Heartbeat
from spotleash.wire.snapshot import SNAPSHOT_REQUEST_FIELD
from spotleash.wire.stack_env import read_env_file

pytestmark = [pytest.mark.e2e]


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**(env or os.environ), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "spotleash.cli", *args], capture_output=True, text=True,
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


def _no_stack_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPOTLEASH_") and not k.endswith("_EMULATOR_HOST")}
    return {**env, "SPOTLEASH_STATE_DIR": str(tmp_path)}


def test_shell_completion_is_on_under_the_command_name(tmp_path: Path) -> None:
    # The shell named, not detected: detection reads the parent process (``make`` runs ``sh``, which typer
    # does not complete); typer's own switch for that is this variable.
    named = {**_no_stack_env(tmp_path), "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    script = cli("--show-completion", "bash", env=named)
    assert script.returncode == 0 and "_SPOTLEASH_COMPLETE=complete_bash" in script.stdout
    env = {**_no_stack_env(tmp_path), "_SPOTLEASH_COMPLETE": "complete_bash", "COMP_WORDS": "spotleash vast sm",
           "COMP_CWORD": "2"}
    assert cli(env=env).stdout.split() == ["smoke"]


def test_local_up_json_is_the_stack_without_its_secrets(tmp_path: Path) -> None:
    """Its own stack (started and stopped here, before or beside the session's): stdout is JSON naming the
    secrets' variables, and no secret value is anywhere in what the command printed."""
    env = _no_stack_env(tmp_path)
    try:
        up = cli("local", "up", "--json", env=env, timeout=240)
        assert up.returncode == 0, up.stderr
        shown = json.loads(up.stdout)
        written = read_env_file(Path(shown["env_file"]))
        secrets = {k: written[k] for k in ("SPOTLEASH_HEARTBEAT_SIGNING_KEY", "SPOTLEASH_VAST_API_KEY")}
        assert sorted(shown["secrets_in_env_file"]) == sorted(secrets)
        assert shown["env"]["SPOTLEASH_VAST_URL"] == written["SPOTLEASH_VAST_URL"]
        for value in secrets.values():
            assert len(value) >= 16 and value not in up.stdout and value not in up.stderr
    finally:
        down = cli("local", "down", "--json", env=env)
    assert down.returncode == 0 and json.loads(down.stdout)["stopped"], down.stderr


def _insert_vm(flows: Flows, name: str, labels: dict[str, str]) -> None:
    opts = ClientOptions(api_endpoint=flows.compute_url)
    zone = flows.settings.zones[0]
    inst = compute_v1.Instance(
        name=name, machine_type=f"zones/{zone}/machineTypes/e2-small", labels=labels,
        disks=[compute_v1.AttachedDisk(boot=True, auto_delete=True, initialize_params=compute_v1.AttachedDiskInitializeParams(
            source_image="projects/debian-cloud/global/images/family/debian-12"))],
        network_interfaces=[compute_v1.NetworkInterface(network="global/networks/default")],
    )
    op = compute_v1.InstancesClient(client_options=opts, credentials=AnonymousCredentials()).insert_unary(
        project=flows.project, zone=zone, instance_resource=inst)
    compute_v1.ZoneOperationsClient(client_options=opts, credentials=AnonymousCredentials()).wait(
        project=flows.project, zone=zone, operation=op.name)


def test_status_refresh_asks_the_provider_and_down_waits_for_it(local_stack: object) -> None:
    """A VM carrying the lease's labels but no record (its delete refused by the fake): ``status --refresh``
    flags it, ``down`` confirms the recorded one gone and exits 3 for it; once it can go, ``down`` exits 0."""
    flows = Flows()
    lid = f"cli-{uuid.uuid4().hex[:8]}"
    stray = f"sl-stray-{uuid.uuid4().hex[:8]}"
    rule = {"operation": "instances.delete", "path": stray, "count": 100000, "status": 403}
    httpx.post(f"{flows.compute_url}/_control/faults", json=rule, timeout=10).raise_for_status()
    try:
        with flows.lease_kept(lid):
            flows.demand(lid)
            rec = flows.wait_ready(lid)
            _insert_vm(flows, stray, ownership_labels(flows.settings.deployment_id, lid, stray))
            refreshed = cli("status", "--refresh", "--json")
            assert refreshed.returncode == 0, refreshed.stderr
            shown = json.loads(refreshed.stdout)
            row = next(r for r in shown["instances"] if r["instance_id"] == rec.instance_id)
            assert row["provider_says"]["listing"] == "listed" and row["provider_says"]["flag"] is None
            assert row["provider_says"]["status"] == "RUNNING"
            flagged = {u["provider_id"]: u for u in shown["unrecorded"]}
            assert flagged[stray]["flag"] == "not in Firestore" and flagged[stray]["lease_id"] == lid
            assert shown["providers"]["gce"]["ok"] is True
            table = cli("status", "--refresh")
            assert table.returncode == 0 and stray in table.stdout and "not in Firestore" in table.stdout
            # the stray never goes: down waits out its whole timeout, long enough for the recorded VM's delete
            # (1.7-5.3 s measured, docs/benchmarks.md) on a slow machine, no longer than that
            down = cli("down", "--lease-id", lid, "--timeout", "15", "--json")
            assert down.returncode == 3, down.stderr
            result = json.loads(down.stdout)
            assert result["ok"] is False and rec.instance_id in result["gone"], down.stdout
            assert [x["provider_id"] for x in result["left"]] == [stray]
            assert "left after" in down.stderr
    finally:
        flows.compute("DELETE", "faults")
    again = cli("down", "--lease-id", lid, "--json")  # the reaper deletes the stray now: nothing is left
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads(again.stdout)["left"] == [] and flows.vm(stray) is None


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
        assert report["dry_run"] is True and report["saved"] == []  # a dry run deletes nothing, so saves nothing
        assert rec.instance_id not in [d["instance_id"] for d in report["decisions"]], "a healthy VM is not due"
        table = cli("status")
        assert table.returncode == 0 and rec.instance_id in table.stdout
        down = cli("down", "--lease-id", lid)
        assert down.returncode == 0, down.stderr
        assert "confirmed gone" in down.stdout
        flows.wait_gone(rec, timeout_s=5)  # down returned: already gone
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
