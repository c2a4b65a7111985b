"""A launch that must fail cleanly, on the local stack: wait for its record to end, then check every trace.

Shared by the e2e tests of bad packages (tests/e2e/test_package_faults.py) and of artifacts and
``image_provides`` (tests/e2e/test_artifacts_flow.py). What "failed cleanly" means, in one place: the record
ends FAILED with the reason code first (``code: …``), the audit has a ``launch_failed`` entry with that code
and no ``ready``, ``spotleash status --json`` (the CLI, as a subprocess) shows the same reason, the provider
confirms the VM is gone, and no process of the VM (its bootstrap, pip, a component) is left.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from tests.e2e.flows import Flows

from local_emulator.vmshim import MARKER_VAR, ROOT_VAR
from spotleash.model import ENDED, InstanceRecord, State
from spotleash.polling import wait_until
from spotleash.providers.base import LABEL_LEASE

FAIL_TIMEOUT_S = 180.0


@dataclass
class Seen:
    rec: InstanceRecord
    vm_dirs: set[str]  # the fake VMs' work dirs seen while they ran


def wait_ended(flows: Flows, lease_id: str, timeout_s: float = FAIL_TIMEOUT_S) -> Seen:
    """Poll until the lease's instance record has ended; remember the VM's work dir while it exists."""
    dirs: set[str] = set()

    def check() -> InstanceRecord | None:
        for vm in flows.vms():
            if vm.get("labels", {}).get(LABEL_LEASE) == lease_id and vm.get("workdir"):
                dirs.add(str(vm["workdir"]))
        recs = flows.records_of(lease_id)
        return next((r for r in recs if r.state in ENDED), None)

    rec: InstanceRecord = wait_until(check, timeout_s=timeout_s, interval_s=0.2, what=f"{lease_id} to end")
    return Seen(rec, dirs)


def vm_processes(vm_dirs: set[str], instance_id: str) -> list[psutil.Process]:
    """Live processes of those VMs (their root is in the environment) or marked as the instance's components."""
    roots = {str(Path(d) / "root") for d in vm_dirs}
    found = []
    for p in psutil.process_iter():
        try:
            env = p.environ()
            if p.status() != psutil.STATUS_ZOMBIE and (env.get(ROOT_VAR) in roots
                                                        or env.get(MARKER_VAR) == instance_id):
                found.append(p)
        except psutil.Error:
            continue
    return found


def status_row(instance_id: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "spotleash.cli", "status", "--json", "--all"],
                         env=dict(os.environ), capture_output=True, text=True, timeout=60, check=True)
    [row] = [r for r in json.loads(out.stdout)["instances"] if r["instance_id"] == instance_id]
    return dict(row)


def assert_failed_cleanly(flows: Flows, seen: Seen, code: str, *needles: str) -> InstanceRecord:
    rec = flows.wait_gone(seen.rec, timeout_s=60)  # the provider confirms the VM is gone
    assert rec.state is State.FAILED, (rec.state, rec.reason)
    assert rec.reason is not None and rec.reason.startswith(f"{code}: "), rec.reason
    for needle in needles:
        assert needle in rec.reason, (needle, rec.reason)
    audit = flows.audit(rec.instance_id)
    assert any(e["action"] == "launch_failed" and e["reason"] == code for e in audit), audit
    assert not any(e["action"] == "ready" for e in audit), "it never was READY"
    row = status_row(rec.instance_id)
    assert (row["state"], row["reason"]) == ("FAILED", rec.reason)
    assert seen.vm_dirs, "the VM was seen running"
    wait_until(lambda: not vm_processes(seen.vm_dirs, rec.instance_id), timeout_s=15, interval_s=0.25,
               what=f"every process of {rec.instance_id}'s VM to be gone")
    return rec
