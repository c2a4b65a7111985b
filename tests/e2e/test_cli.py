"""The ``spotleash`` command as a user runs it: real subprocesses, exit codes, JSON output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from tests.e2e.flows import Flows

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
