"""The Compute Engine fake, driven by the OFFICIAL google-cloud-compute client over HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1
from tests.emulator import compute_fixtures
from tests.emulator.escaper import ESCAPER_LINE

from local_emulator.compute import ComputeFake

fake = compute_fixtures.fake
clean = compute_fixtures.clean

pytestmark = pytest.mark.emulator

P = "test-project"
ZA, ZB = "us-central1-a", "us-central1-b"
DONE = compute_v1.Operation.Status.DONE


def wait_until(pred: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def pid_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def clients(fake: ComputeFake) -> tuple[compute_v1.InstancesClient, compute_v1.ZoneOperationsClient]:
    opts = ClientOptions(api_endpoint=fake.url)
    creds = AnonymousCredentials()
    return (
        compute_v1.InstancesClient(client_options=opts, credentials=creds),
        compute_v1.ZoneOperationsClient(client_options=opts, credentials=creds),
    )


@pytest.fixture
def control(fake: ComputeFake) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.url, timeout=10) as c:
        yield c


def resource(name: str, zone: str = ZA, **kw: Any) -> compute_v1.Instance:
    args: dict[str, Any] = {
        "name": name,
        "machine_type": f"zones/{zone}/machineTypes/e2-medium",
        "disks": [
            compute_v1.AttachedDisk(
                boot=True,
                auto_delete=True,
                initialize_params=compute_v1.AttachedDiskInitializeParams(source_image="projects/debian-cloud/global/images/family/debian-12"),
            )
        ],
        "network_interfaces": [compute_v1.NetworkInterface(network="global/networks/default")],
    }
    args.update(kw)
    return compute_v1.Instance(**args)


def spot(seconds: int | None = None, action: str = "DELETE") -> compute_v1.Scheduling:
    s = compute_v1.Scheduling(provisioning_model="SPOT", instance_termination_action=action)
    if seconds is not None:
        s.max_run_duration = compute_v1.Duration(seconds=seconds)
    return s


def insert(clients: Any, inst: compute_v1.Instance, zone: str = ZA, request_id: str | None = None) -> compute_v1.Operation:
    ic, oc = clients
    req = compute_v1.InsertInstanceRequest(project=P, zone=zone, instance_resource=inst)
    if request_id:
        req.request_id = request_id
    op = ic.insert_unary(request=req)
    return oc.wait(project=P, zone=zone, operation=op.name)


def inspect(control: httpx.Client, name: str, zone: str = ZA) -> dict[str, Any]:
    r = control.get(f"/_control/instances/{zone}/{name}")
    r.raise_for_status()
    return dict(r.json())


# ---------------------------------------------------------------------------- lifecycle
def test_insert_runs_a_real_process_with_a_metadata_server(clients: Any, control: httpx.Client) -> None:
    ic, _ = clients
    op = insert(clients, resource("vm-a", labels={"team": "x"}, metadata=compute_v1.Metadata(
        items=[compute_v1.Items(key="startup-script", value="#!/bin/bash\necho ok\n"), compute_v1.Items(key="k", value="v")])))
    assert op.status == DONE and not op.error.errors
    inst = ic.get(project=P, zone=ZA, instance="vm-a")
    assert inst.status == "RUNNING" and inst.labels == {"team": "x"} and inst.id > 0
    info = inspect(control, "vm-a")
    assert info["history"][:3] == ["PROVISIONING", "STAGING", "RUNNING"]
    assert info["startup_script_check"] == {"present": True, "bash_n_ok": True, "stderr": ""}
    proc = psutil.Process(info["pid"])
    assert "spotleash.instance_agent" not in " ".join(proc.cmdline())  # the fake itself starts no agent
    # a VM's process is a fork of the fake until it execs: its environment is the VM's only from then (CI, 2 lanes)
    wait_until(lambda: "GCE_METADATA_HOST" in proc.environ(), timeout=10, what="the VM's exec")
    assert proc.environ()["GCE_METADATA_HOST"] == info["metadata_host"]
    md = f"http://{info['metadata_host']}/computeMetadata/v1"
    h = {"Metadata-Flavor": "Google"}
    assert httpx.get(f"{md}/instance/name", headers=h).text == "vm-a"
    assert httpx.get(f"{md}/instance/id", headers=h).text == str(inst.id)
    assert httpx.get(f"{md}/instance/zone", headers=h).text.endswith(f"/zones/{ZA}")
    assert httpx.get(f"{md}/instance/attributes/k", headers=h).text == "v"
    assert httpx.get(f"{md}/instance/preempted", headers=h).text == "FALSE"
    assert httpx.get(f"{md}/instance/attributes/nope", headers=h).status_code == 404
    assert httpx.get(f"{md}/instance/name").status_code == 403
    assert httpx.get(f"{md}/instance/name", headers={**h, "X-Forwarded-For": "1.2.3.4"}).status_code == 403
    wait_until(lambda: "ok\nstartup-script exited 0" in open(info["log_path"]).read(), what="the script's output")
    # no service account attached: no token (the bootstrap reports package_forbidden); the external IP is loopback
    assert httpx.get(f"{md}/instance/service-accounts/default/token", headers=h).status_code == 404
    ext = httpx.get(f"{md}/instance/network-interfaces/0/access-configs/0/external-ip", headers=h)
    assert ext.text == "127.0.0.1"


def test_a_vm_with_a_service_account_gets_a_token_and_one_without_a_script_runs_nothing(
        clients: Any, control: httpx.Client) -> None:
    r = resource("vm-sa")
    r.service_accounts = [compute_v1.ServiceAccount(email="sl-vm@p.iam.gserviceaccount.com",
                                                    scopes=["https://www.googleapis.com/auth/devstorage.read_only"])]
    insert(clients, r)
    info = inspect(control, "vm-sa")
    md = f"http://{info['metadata_host']}/computeMetadata/v1/instance/service-accounts/default"
    h = {"Metadata-Flavor": "Google"}
    token = httpx.get(f"{md}/token", headers=h).json()
    assert token["access_token"] and token["token_type"] == "Bearer" and token["expires_in"] > 0
    assert httpx.get(f"{md}/email", headers=h).text == "sl-vm@p.iam.gserviceaccount.com"
    cmd = " ".join(psutil.Process(info["pid"]).cmdline())
    assert "spotleash" not in cmd and "startup-script" not in cmd, "no script: nothing of spotleash runs"


def test_startup_script_syntax_is_checked_not_rejected(clients: Any, control: httpx.Client) -> None:
    insert(clients, resource("vm-bad-script", metadata=compute_v1.Metadata(
        items=[compute_v1.Items(key="startup-script", value="#!/bin/bash\nif then fi (\n")])))
    check = inspect(control, "vm-bad-script")["startup_script_check"]
    assert check["bash_n_ok"] is False and "syntax error" in check["stderr"]


def test_delete_ends_the_process_group(clients: Any, control: httpx.Client) -> None:
    ic, oc = clients
    insert(clients, resource("vm-del"))
    pid = inspect(control, "vm-del")["pid"]
    disk = Path(inspect(control, "vm-del")["root"])
    (disk / "var" / "lib").mkdir(parents=True, exist_ok=True)
    (disk / "var" / "lib" / "state.bin").write_bytes(b"work")
    op = ic.delete_unary(project=P, zone=ZA, instance="vm-del")
    op = oc.wait(project=P, zone=ZA, operation=op.name)
    assert op.status == DONE and op.operation_type == "delete"
    assert pid_gone(pid)
    assert not disk.exists()  # the VM's disk goes with it
    with pytest.raises(gexc.NotFound):
        ic.get(project=P, zone=ZA, instance="vm-del")
    with pytest.raises(gexc.NotFound):
        ic.delete_unary(project=P, zone=ZA, instance="vm-del")


def test_delete_ends_processes_that_left_the_vm_s_process_group(clients: Any, control: httpx.Client) -> None:
    from local_emulator import procs, vmshim

    script = f"#!/bin/bash\n{ESCAPER_LINE}\nwait\n"
    ic, oc = clients
    insert(clients, resource("vm-esc", metadata=compute_v1.Metadata(
        items=[compute_v1.Items(key="startup-script", value=script)])))
    info = inspect(control, "vm-esc")
    mark = vmshim.instance_mark("gce", ic.get(project=P, zone=ZA, instance="vm-esc").id)
    wait_until(lambda: "escaper ready" in open(info["log_path"]).read(), what="the escaper to start")
    [escaper] = [p for p in procs.find_marked(vmshim.INSTANCE_VAR, mark) if "python" in p.name()]
    assert os.getpgid(escaper.pid) != os.getpgid(info["pid"]), "it runs outside the VM's process group"
    oc.wait(project=P, zone=ZA, operation=ic.delete_unary(project=P, zone=ZA, instance="vm-esc").name)
    wait_until(lambda: not procs.find_marked(vmshim.INSTANCE_VAR, mark), timeout=15,
               what="every process of the deleted VM to end")


def test_a_vm_s_environment_is_its_own_not_the_control_plane_s(clients: Any, control: httpx.Client,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A real VM reads its configuration from its metadata server: the fake's own environment (the control
    plane's settings and secrets in a local stack) never reaches the guest."""
    monkeypatch.setenv("SPOTLEASH_HEARTBEAT_SIGNING_KEY", "the-control-plane-s-secret")
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", "127.0.0.1:1")
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    script = "#!/bin/bash\nenv > guest.env\necho dumped\n"
    insert(clients, resource("vm-env", metadata=compute_v1.Metadata(
        items=[compute_v1.Items(key="startup-script", value=script)])))
    info = inspect(control, "vm-env")
    wait_until(lambda: "dumped" in open(info["log_path"]).read(), what="the guest's environment")
    guest = dict(line.split("=", 1) for line in
                 (Path(info["log_path"]).parent / "guest.env").read_text().splitlines() if "=" in line)
    assert not {"SPOTLEASH_HEARTBEAT_SIGNING_KEY", "FIRESTORE_EMULATOR_HOST", "PYTHONDONTWRITEBYTECODE"} & set(guest)
    assert guest["GCE_METADATA_HOST"] and guest["HOME"].startswith(str(Path(info["log_path"]).parent))
    assert "the-control-plane-s-secret" not in "\n".join(guest.values())


def test_stop_and_start(clients: Any, control: httpx.Client) -> None:
    ic, oc = clients
    insert(clients, resource("vm-stop"))
    pid = inspect(control, "vm-stop")["pid"]
    disk = Path(inspect(control, "vm-stop")["root"])
    (disk / "state.bin").write_bytes(b"work")
    op = oc.wait(project=P, zone=ZA, operation=ic.stop_unary(project=P, zone=ZA, instance="vm-stop").name)
    assert op.status == DONE
    assert ic.get(project=P, zone=ZA, instance="vm-stop").status == "TERMINATED"
    assert pid_gone(pid) and inspect(control, "vm-stop")["pid"] is None
    oc.wait(project=P, zone=ZA, operation=ic.start_unary(project=P, zone=ZA, instance="vm-stop").name)
    assert ic.get(project=P, zone=ZA, instance="vm-stop").status == "RUNNING"
    new_pid = inspect(control, "vm-stop")["pid"]
    assert new_pid and new_pid != pid and psutil.pid_exists(new_pid)
    assert (disk / "state.bin").read_bytes() == b"work"  # a stopped VM keeps its disk


def test_operations_get_and_unknown_operation(clients: Any) -> None:
    ic, oc = clients
    op = ic.insert_unary(project=P, zone=ZA, instance_resource=resource("vm-op"))
    got = oc.get(project=P, zone=ZA, operation=op.name)
    assert got.name == op.name and got.operation_type == "insert" and got.target_link.endswith("/instances/vm-op")
    with pytest.raises(gexc.NotFound):
        oc.get(project=P, zone=ZA, operation="operation-nope")


# ---------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("inst", "needle"),
    [
        (resource("Bad_Name"), "resource.name"),
        (resource("-x"), "resource.name"),
        (resource("a" * 64), "resource.name"),
        (resource("vm", labels={"Bad": "x"}), "label key"),
        (resource("vm", labels={"ok": "UPPER"}), "labels.ok"),
        (resource("vm", metadata=compute_v1.Metadata(items=[compute_v1.Items(key="startup script\necho", value="x")])), "Metadata keys"),
        (resource("vm", metadata=compute_v1.Metadata(items=[compute_v1.Items(key="big", value="x" * (256 * 1024 + 1))])), "limit"),
        (resource("vm", metadata=compute_v1.Metadata(items=[compute_v1.Items(key=f"k{i}", value="x" * 200_000) for i in range(3)])), "total size"),
        (resource("vm", machine_type=f"zones/{ZA}/machineTypes/e2-gigantic"), "Machine type"),
        (resource("vm", machine_type=f"zones/{ZB}/machineTypes/e2-medium"), "must match"),
        (resource("vm", disks=[]), "Boot disk"),
        (resource("vm", network_interfaces=[]), "network interface"),
        (resource("vm", scheduling=spot(10)), "maxRunDuration"),
        (resource("vm", scheduling=compute_v1.Scheduling(provisioning_model="SPOT", max_run_duration=compute_v1.Duration(seconds=60))), "instanceTerminationAction"),
        (resource("vm", scheduling=compute_v1.Scheduling(provisioning_model="SPOT", automatic_restart=True)), "automaticRestart"),
        (resource("vm", scheduling=compute_v1.Scheduling(provisioning_model="CHEAP")), "provisioningModel"),
    ],
)
def test_insert_rejects_what_gce_rejects(clients: Any, inst: compute_v1.Instance, needle: str) -> None:
    ic, _ = clients
    with pytest.raises(gexc.BadRequest) as e:
        ic.insert_unary(project=P, zone=ZA, instance_resource=inst)
    assert needle in e.value.message
    assert e.value.errors and e.value.errors[0]["reason"] == "invalid"
    assert list(ic.list(project=P, zone=ZA)) == []


def test_unknown_zone_bad_request_id_and_duplicates(clients: Any) -> None:
    ic, _ = clients
    with pytest.raises(gexc.BadRequest):
        ic.insert_unary(project=P, zone="mars-north1-a", instance_resource=resource("vm", zone="mars-north1-a"))
    with pytest.raises(gexc.BadRequest, match="requestId"):
        ic.insert_unary(request=compute_v1.InsertInstanceRequest(project=P, zone=ZA, instance_resource=resource("vm"), request_id="not-a-uuid"))
    insert(clients, resource("vm-dup"))
    with pytest.raises(gexc.Conflict) as e:
        ic.insert_unary(project=P, zone=ZA, instance_resource=resource("vm-dup"))
    assert e.value.errors[0]["reason"] == "alreadyExists"
    with pytest.raises(gexc.NotFound):
        ic.get(project=P, zone=ZA, instance="vm-missing")


def test_request_id_makes_insert_idempotent(clients: Any) -> None:
    ic, _ = clients
    rid = str(uuid.uuid4())
    req = compute_v1.InsertInstanceRequest(project=P, zone=ZA, instance_resource=resource("vm-idem"), request_id=rid)
    first = ic.insert_unary(request=req)
    second = ic.insert_unary(request=req)  # a retried request: same operation, no 409, no second VM
    assert first.name == second.name
    assert [i.name for i in ic.list(project=P, zone=ZA)] == ["vm-idem"]


def test_unknown_paths_fail_loudly(fake: ComputeFake) -> None:
    r = httpx.post(f"{fake.url}/compute/v1/projects/{P}/zones/{ZA}/instances/x/setMachineType", json={})
    assert r.status_code == 501 and r.json()["error"]["errors"][0]["reason"] == "notImplemented"
    r = httpx.get(f"{fake.url}/compute/v1/projects/{P}/global/images")
    assert r.status_code == 501
    r = httpx.get(f"{fake.url}/nothing/here")
    assert r.status_code == 404 and r.json()["error"]["code"] == 404
    r = httpx.get(f"{fake.url}/compute/v1/projects/{P}/zones/{ZA}/instances", params={"bogus": "1"})
    assert r.status_code == 400


# ---------------------------------------------------------------------------- list, filter, paging, labels
def test_list_filters_and_aggregated_paging(clients: Any) -> None:
    ic, oc = clients
    for i in range(5):
        insert(clients, resource(f"vm-{i}", zone=ZA if i % 2 else ZB, labels={"owner": "us" if i < 4 else "them", "n": str(i)}), zone=ZA if i % 2 else ZB)
    oc.wait(project=P, zone=ZA, operation=ic.stop_unary(project=P, zone=ZA, instance="vm-1").name)
    names = lambda it: sorted(i.name for i in it)  # noqa: E731
    assert names(ic.list(request=compute_v1.ListInstancesRequest(project=P, zone=ZA, filter='labels.owner = "us"'))) == ["vm-1", "vm-3"]
    assert names(ic.list(request=compute_v1.ListInstancesRequest(project=P, zone=ZA, filter="status = RUNNING"))) == ["vm-3"]
    assert names(ic.list(request=compute_v1.ListInstancesRequest(project=P, zone=ZA, filter="(status = TERMINATED) OR (labels.n = 3)"))) == ["vm-1", "vm-3"]
    assert names(ic.list(request=compute_v1.ListInstancesRequest(project=P, zone=ZB, filter="name eq 'vm-[02]'"))) == ["vm-0", "vm-2"]
    req = compute_v1.AggregatedListInstancesRequest(project=P, filter='(labels.owner = "us") AND (labels.n != "2")', max_results=2)
    pager = ic.aggregated_list(request=req)
    pages = list(pager.pages)
    found = sorted(i.name for page in pages for scoped in page.items.values() for i in scoped.instances)
    assert found == ["vm-0", "vm-1", "vm-3"] and len(pages) == 2
    all_pages = list(ic.aggregated_list(request=compute_v1.AggregatedListInstancesRequest(project=P, max_results=1)).pages)
    assert len(all_pages) == 5
    flat = ic.list(request=compute_v1.ListInstancesRequest(project=P, zone=ZB, max_results=1))
    assert len(list(flat.pages)) == 3
    with pytest.raises(gexc.BadRequest, match="filter"):
        list(ic.list(request=compute_v1.ListInstancesRequest(project=P, zone=ZA, filter="labels.owner = (")))
    with pytest.raises(gexc.BadRequest, match="maxResults"):
        list(ic.list(request=compute_v1.ListInstancesRequest(project=P, zone=ZA, max_results=501)))


def test_set_labels_needs_the_current_fingerprint(clients: Any) -> None:
    ic, oc = clients
    insert(clients, resource("vm-lab", labels={"a": "1"}))
    inst = ic.get(project=P, zone=ZA, instance="vm-lab")
    with pytest.raises(gexc.PreconditionFailed):
        ic.set_labels_unary(project=P, zone=ZA, instance="vm-lab", instances_set_labels_request_resource=compute_v1.InstancesSetLabelsRequest(labels={"a": "2"}, label_fingerprint="stale"))
    op = ic.set_labels_unary(project=P, zone=ZA, instance="vm-lab", instances_set_labels_request_resource=compute_v1.InstancesSetLabelsRequest(labels={"a": "2", "b": "x"}, label_fingerprint=inst.label_fingerprint))
    assert oc.wait(project=P, zone=ZA, operation=op.name).status == DONE
    assert ic.get(project=P, zone=ZA, instance="vm-lab").labels == {"a": "2", "b": "x"}
    with pytest.raises(gexc.BadRequest):
        ic.set_labels_unary(project=P, zone=ZA, instance="vm-lab", instances_set_labels_request_resource=compute_v1.InstancesSetLabelsRequest(labels={"A": "x"}, label_fingerprint=ic.get(project=P, zone=ZA, instance="vm-lab").label_fingerprint))


# ---------------------------------------------------------------------------- faults and capacity
def test_injected_faults_and_latency(clients: Any, control: httpx.Client) -> None:
    ic, _ = clients
    control.post("/_control/faults", json={"operation": "instances.list", "count": 2, "status": 503}).raise_for_status()
    for _ in range(2):
        with pytest.raises(gexc.ServiceUnavailable):
            list(ic.list(project=P, zone=ZA, retry=None))
    assert list(ic.list(project=P, zone=ZA, retry=None)) == []
    # with its default retry the official client rides over a transient 503 by itself
    control.post("/_control/faults", json={"operation": "instances.list", "count": 1, "status": 503}).raise_for_status()
    assert list(ic.list(project=P, zone=ZA)) == []
    assert control.get("/_control/faults").json()["calls"]["instances.list"] == 5
    control.post("/_control/faults", json={"operation": "instances.get", "count": 1, "status": 429, "reason": "rateLimitExceeded"}).raise_for_status()
    with pytest.raises(gexc.TooManyRequests) as e:
        ic.get(project=P, zone=ZA, instance="x")
    assert e.value.errors[0]["reason"] == "rateLimitExceeded"
    control.post("/_control/faults", json={"operation": "*", "count": 1, "latency_s": 0.5}).raise_for_status()
    t = time.monotonic()
    list(ic.list(project=P, zone=ZA))
    assert time.monotonic() - t >= 0.5
    plan = control.get("/_control/faults").json()  # every rule fired, and says how often
    assert plan["left"] == 0 and plan["fired"] == 5
    assert [(r["operation"], r["fired"]) for r in plan["rules"]] == [
        ("instances.list", 2), ("instances.list", 1), ("instances.get", 1), ("*", 1)]
    bad = control.post("/_control/faults", json={"operation": "instances.list", "http_code": 503})
    assert bad.status_code == 400 and "unknown fault field" in bad.json()["error"]["message"]
    control.delete("/_control/faults").raise_for_status()
    assert control.get("/_control/faults").json() == {"rules": [], "left": 0, "fired": 0, "calls": {}}


def test_exhausted_zone_fails_the_operation_like_gce(clients: Any, control: httpx.Client) -> None:
    ic, _ = clients
    control.post("/_control/capacity", json={"zone": ZA, "exhausted": True}).raise_for_status()
    op = insert(clients, resource("vm-cap"))
    assert op.status == DONE
    assert [e.code for e in op.error.errors] == ["ZONE_RESOURCE_POOL_EXHAUSTED"]
    assert op.http_error_status_code == 503
    assert list(ic.list(project=P, zone=ZA)) == []
    op = insert(clients, resource("vm-cap", zone=ZB), zone=ZB)
    assert not op.error.errors


# ---------------------------------------------------------------------------- Spot semantics
def test_max_run_duration_deletes_the_vm_and_its_processes(clients: Any, control: httpx.Client) -> None:
    ic, _ = clients
    control.post("/_control/clock", json={"time_scale": 60}).raise_for_status()
    insert(clients, resource("vm-cap60", scheduling=spot(60, "DELETE")))
    info = inspect(control, "vm-cap60")
    assert info["deadline_reason"] == "maxRunDuration"
    pid = info["pid"]
    assert psutil.pid_exists(pid)
    wait_until(lambda: control.get(f"/_control/instances/{ZA}/vm-cap60").status_code == 404, timeout=10, what="deadline delete")
    with pytest.raises(gexc.NotFound):
        ic.get(project=P, zone=ZA, instance="vm-cap60")
    assert pid_gone(pid)


def test_termination_time_with_stop_action_and_clock_advance(clients: Any, control: httpx.Client) -> None:
    ic, _ = clients
    insert(clients, resource("vm-stopcap", scheduling=spot(3600, "STOP")))
    pid = inspect(control, "vm-stopcap")["pid"]
    control.post("/_control/clock", json={"advance_s": 3601}).raise_for_status()
    wait_until(lambda: ic.get(project=P, zone=ZA, instance="vm-stopcap").status == "TERMINATED", what="stop at deadline")
    assert pid_gone(pid)


def test_preemption_notice_then_termination(clients: Any, control: httpx.Client) -> None:
    ic, _ = clients
    control.post("/_control/clock", json={"time_scale": 30}).raise_for_status()  # the 30 s notice lasts ~1 s
    # the guest watches its preemption flag as the agent does (curl against its metadata server)
    watcher = ('#!/bin/bash\nuntil curl -fsS -H "Metadata-Flavor: Google" '
               '"http://$GCE_METADATA_HOST/computeMetadata/v1/instance/preempted" | grep -q TRUE; '
               'do sleep 0.1; done\necho "guest saw: preempted"\n')
    insert(clients, resource("vm-pre", scheduling=spot(None, "DELETE"), metadata=compute_v1.Metadata(
        items=[compute_v1.Items(key="startup-script", value=watcher)])))
    info = inspect(control, "vm-pre")
    md = f"http://{info['metadata_host']}/computeMetadata/v1/instance/preempted"
    h = {"Metadata-Flavor": "Google"}
    first = httpx.get(md, headers=h)
    assert first.text == "FALSE"
    with httpx.Client(timeout=30) as c:
        import threading

        got: dict[str, Any] = {}
        t = threading.Thread(target=lambda: got.update(r=c.get(md, headers=h, params={"wait_for_change": "true", "last_etag": first.headers["ETag"], "timeout_sec": 20})))
        t.start()
        time.sleep(0.2)
        assert control.post(f"/_control/instances/{ZA}/vm-pre/preempt").json()["preempted"] is True
        t.join(timeout=10)
    assert got["r"].text == "TRUE"
    wait_until(lambda: "guest saw: preempted" in open(info["log_path"]).read(), what="the guest saw preemption")
    wait_until(lambda: control.get(f"/_control/instances/{ZA}/vm-pre").status_code == 404, what="deleted after notice")
    assert pid_gone(info["pid"])
    with pytest.raises(gexc.NotFound):
        ic.get(project=P, zone=ZA, instance="vm-pre")


def test_wait_for_change_times_out_with_the_current_value(clients: Any, control: httpx.Client) -> None:
    insert(clients, resource("vm-wait"))
    md = f"http://{inspect(control, 'vm-wait')['metadata_host']}/computeMetadata/v1/instance/preempted"
    t = time.monotonic()
    r = httpx.get(md, headers={"Metadata-Flavor": "Google"}, params={"wait_for_change": "true", "timeout_sec": 1}, timeout=10)
    assert r.text == "FALSE" and 0.9 <= time.monotonic() - t < 5


# ---------------------------------------------------------------------------- as a process
def test_runs_as_a_process_and_sigterm_stops_its_vms(tmp_path: Any) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "local_emulator.compute", "--port", "0", "--boot-delay", "0.1"],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        url = line.strip().rsplit(" ", 1)[-1]
        assert url.startswith("http://127.0.0.1:")
        wait_until(lambda: httpx.get(f"{url}/_control/health").status_code == 200, what="health")
        opts = ClientOptions(api_endpoint=url)
        ic = compute_v1.InstancesClient(client_options=opts, credentials=AnonymousCredentials())
        oc = compute_v1.ZoneOperationsClient(client_options=opts, credentials=AnonymousCredentials())
        oc.wait(project=P, zone=ZA, operation=ic.insert_unary(project=P, zone=ZA, instance_resource=resource("vm-proc")).name)
        pid = httpx.get(f"{url}/_control/instances/{ZA}/vm-proc").json()["pid"]
        assert psutil.pid_exists(pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        wait_until(lambda: pid_gone(pid), what="VM process gone after SIGTERM")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()
