"""The VM runtime: what runs "inside" a fake VM — a real process group, and what its metadata server shows.

A VM runs its ``startup-script`` metadata for real with bash, through :mod:`local_emulator.vmshim`
(as GCE's guest agent does; a VM without one runs nothing of spotleash), or the fake's ``vm_command``
when one is given; either is started in its own session by
:func:`local_emulator.procs.spawn`, with ``GCE_METADATA_HOST`` pointing at the VM's own metadata
server; stopping it ends the whole group through :func:`local_emulator.procs.stop_all` (SIGTERM,
SIGKILL after the grace, wait until nothing of it is left).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from typing import Any

from local_emulator import procs, vmshim
from local_emulator.compute.metadata_server import directory_listing
from local_emulator.compute.models.resources import Instance
from spotleash.log import get_logger
from spotleash.wire.agent_config import CONFIG_KEY

log = get_logger("local_emulator.compute.vm")

GROUP_GONE_TIMEOUT_S = 10.0
VM_IDLE = "exec sleep 2147483647"  # the guest keeps running after its startup script


def startup_command(inst: Instance) -> list[str]:
    """What the guest runs at boot: the ``startup-script`` metadata value, for real, then idle."""
    assert inst.workdir is not None
    (inst.workdir / "root").mkdir(parents=True, exist_ok=True)
    script = inst.metadata.get("startup-script")
    if script is None:
        return ["bash", "-c", VM_IDLE]
    (inst.workdir / "startup-script.sh").write_text(script)
    return ["bash", "-c", f"bash ./startup-script.sh; echo \"startup-script exited $?\"; {VM_IDLE}"]


# What a fake VM takes from this machine's environment: the stand-in for storage.googleapis.com (the local stack's
# Cloud Storage emulator), the interpreter's search path and temp dir, and the stack's marker (its `down` ends
# the VM's processes too). Nothing else: a real VM gets its configuration from its metadata server only.
PASSED_ON = ("STORAGE_EMULATOR_HOST", "PYTHONPATH", "VIRTUAL_ENV", "TMPDIR", "SPOTLEASH_LOCAL_STACK")


def vm_env(inst: Instance, *, metadata_host: str) -> dict[str, str]:
    """The guest's environment, built afresh as the VAST fake builds a box's. Inherited, it held the control
    plane's settings and secrets (the heartbeat signing key, the VAST API key, the emulators' hosts) and the
    host's interpreter settings: with PYTHONDONTWRITEBYTECODE every component start recompiled numpy and Pillow."""
    assert inst.workdir is not None
    root = inst.workdir / "root"
    home = root / "root"
    home.mkdir(parents=True, exist_ok=True)
    env = {"PATH": vmshim.path_value(), "HOME": str(home), "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1",
           "GCE_METADATA_HOST": metadata_host, "GCE_METADATA_IP": metadata_host,
           vmshim.ROOT_VAR: str(root), vmshim.INSTANCE_VAR: vmshim.instance_mark("gce", inst.id)}
    env.update({var: os.environ[var] for var in PASSED_ON if var in os.environ})
    return env


def start(command: list[str] | None, inst: Instance, *, metadata_host: str) -> procs.ManagedProcess:
    """Start the VM's process group (``command``, or its startup script); output to ``workdir/vm.log``."""
    assert inst.workdir is not None
    return procs.spawn(f"gce-vm-{inst.name}", command or startup_command(inst), log_path=inst.workdir / "vm.log",
                       port=None, env=vm_env(inst, metadata_host=metadata_host), cwd=inst.workdir)


def spotleash_id(inst: Instance) -> str:
    """The spotleash instance id the VM was launched as (its components carry it), or ''."""
    try:
        cfg = json.loads(inst.metadata.get(CONFIG_KEY) or "{}")
    except ValueError:
        return ""
    return str(cfg.get("instance_id") or "") if isinstance(cfg, dict) else ""


def stop(inst: Instance, *, grace_s: float) -> None:
    """End the VM's whole process group (SIGTERM, SIGKILL after ``grace_s``, wait until it is gone),
    then whatever of it runs in process groups of its own (install steps, components)."""
    proc = inst.proc
    if proc is not None:
        try:
            procs.stop_all([proc], timeout=GROUP_GONE_TIMEOUT_S, term_grace=grace_s)
        except procs.StackError as e:
            log.error("VM processes did not stop", vm=proc.name, reason=str(e))
    try:
        left = vmshim.sweep_instance(vmshim.instance_mark("gce", inst.id), term_grace=grace_s)
    except procs.StackError as e:
        log.error("VM processes outside its group did not stop", vm=inst.name, reason=str(e))
        left = 0
    if left:
        log.info("VM processes outside its process group ended", vm=inst.name, count=left)
    vmshim.sweep_components(spotleash_id(inst))


def check_startup_script(script: str | None) -> dict[str, Any]:
    """GCE stores any startup script; the fake does too, and records whether ``bash -n`` accepts it."""
    if script is None:
        return {"present": False}
    try:
        res = subprocess.run(["bash", "-n"], input=script.encode(), capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"present": True, "bash_n_ok": None, "stderr": str(e)}
    return {"present": True, "bash_n_ok": res.returncode == 0, "stderr": res.stderr.decode(errors="replace")[-2000:]}


def project_number(project: str) -> int:
    return int(hashlib.sha256(project.encode()).hexdigest()[:10], 16) % 10**12


def metadata_view(inst: Instance, path: str, recursive: bool) -> tuple[str, str] | None:
    """What the VM's metadata server answers for ``path`` (None: 404). Caller holds the model's lock."""
    attrs = dict(inst.metadata)
    number = project_number(inst.project)
    instance = {
        "id": str(inst.id),
        "name": inst.name,
        "hostname": f"{inst.name}.{inst.zone}.c.{inst.project}.internal",
        "zone": f"projects/{number}/zones/{inst.zone}",
        "machine-type": f"projects/{number}/machineTypes/{inst.machine_type}",
        "preempted": "TRUE" if inst.preempted else "FALSE",
        "maintenance-event": "TERMINATE_ON_HOST_MAINTENANCE" if inst.preempted else "NONE",
        "tags": "[]",
        # the VM's "external IP" is this machine's loopback: its components are reached there
        "network-interfaces/0/access-configs/0/external-ip": "127.0.0.1",
    }
    accounts = inst.body.get("serviceAccounts") or []
    if accounts:  # the token the guest asks for (storage reads); the emulator does not check it
        instance["service-accounts/default/email"] = str(accounts[0].get("email", "default"))
        instance["service-accounts/default/token"] = json.dumps(
            {"access_token": f"fake-vm-token-{inst.id}", "expires_in": 3599, "token_type": "Bearer"})
        instance["service-accounts/default/scopes"] = "\n".join(accounts[0].get("scopes") or [])
    project = {"project-id": inst.project, "numeric-project-id": str(number)}
    path = path.rstrip("/") if path.endswith("/") and path.count("/") > 1 else path
    if path in ("instance/attributes", "instance/attributes/"):
        return directory_listing(attrs, recursive)
    if path.startswith("instance/attributes/"):
        key = path[len("instance/attributes/"):]
        return ("application/text", attrs[key]) if key in attrs else None
    if path in ("instance", "instance/"):
        return directory_listing({**instance, "attributes": attrs} if recursive else {**instance, "attributes/": ""}, recursive)
    if path.startswith("instance/") and path[len("instance/"):] in instance:
        return "application/text", instance[path[len("instance/"):]]
    if path.startswith("project/") and path[len("project/"):] in project:
        return "application/text", project[path[len("project/"):]]
    return None
