"""The control plane end to end on the local stack: every layer of the defence table.

Events go through Google's Pub/Sub emulator by push into functions-framework processes, state
lives in Google's Firestore emulator, VMs are real process trees in the Compute Engine fake whose
instance agents heartbeat over HTTP, and Cloud Scheduler's fake fires the reaper every 5 s.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from datetime import UTC, datetime

import psutil
import pytest
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1, pubsub_v1
from tests.conftest import FAST_TIMINGS, REAP_PERIOD_S
from tests.e2e.flows import Flows, elapsed

from spotleash.model import State
from spotleash.polling import wait_until
from spotleash.providers.base import ownership_labels
from spotleash.topology import load_topology

pytestmark = [pytest.mark.e2e]

LEASE_TTL = float(FAST_TIMINGS["SPOTLEASH_LEASE_TTL_S"])
HB_TIMEOUT = float(FAST_TIMINGS["SPOTLEASH_HEARTBEAT_TIMEOUT_S"])
SLACK = 25.0  # launch of the reap function, deletes and confirmation on a loaded 2-core machine


def lease() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def flows(local_stack: object) -> Flows:
    return Flows()


def _vm_process_gone(vm: dict[str, object] | None, pid: int | None) -> bool:
    return pid is None or not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_demand_runs_a_heartbeating_vm_and_release_deletes_it(flows: Flows) -> None:
    lid = lease()
    with flows.lease_kept(lid):
        flows.demand(lid)
        rec = flows.wait_ready(lid)
        vm = flows.vm(rec.provider_id or "")
        assert vm is not None and vm["status"] == "RUNNING"
        assert vm["labels"] == ownership_labels("default", lid, rec.instance_id)
        pid = vm["pid"]
        assert pid and psutil.pid_exists(pid), "a RUNNING VM is a real process"
        assert rec.last_heartbeat is not None and rec.token_hash and len(rec.token_hash) == 64
        t0 = time.monotonic()
        flows.release(lid)
        done = flows.wait_gone(rec, timeout_s=30)
    assert done.state == State.TERMINATED and done.reason and done.reason.startswith("release")
    assert flows.vm(rec.provider_id or "") is None
    wait_until(lambda: _vm_process_gone(None, pid), timeout_s=10, what="the VM's process to end")
    actions = wait_until(lambda: (a := [e["action"] for e in flows.audit(rec.instance_id)]) and "release" in a and a,
                         timeout_s=15, what="the release in the audit")
    assert actions[:2] == ["launch_intent", "launched"]
    print(f"release → confirmed gone: {elapsed(t0):.2f}s")


def test_lease_loss_deletes_every_instance_of_the_lease(flows: Flows) -> None:
    lid = lease()
    with flows.lease_kept(lid):
        flows.demand(lid)
        rec = flows.wait_ready(lid)
    t0 = time.monotonic()  # the agent "dies": nobody renews the lease any more
    bound = LEASE_TTL + REAP_PERIOD_S + SLACK
    done = flows.wait_gone(rec, timeout_s=bound)
    assert done.reason == "lease_expired"
    print(f"lease loss → deleted: {elapsed(t0):.1f}s (bound {bound:.0f}s)")


def test_lost_heartbeats_get_the_vm_deleted(flows: Flows) -> None:
    lid = lease()
    with flows.lease_kept(lid):
        flows.demand(lid)
        rec = flows.wait_ready(lid)
        pid = flows.vm(rec.provider_id or "")["pid"]  # type: ignore[index]
        os.killpg(os.getpgid(pid), signal.SIGSTOP)  # the VM hangs: its agent stops beating
        try:
            done = flows.wait_gone(rec, timeout_s=HB_TIMEOUT + REAP_PERIOD_S + SLACK)
        finally:
            if psutil.pid_exists(pid):
                os.killpg(os.getpgid(pid), signal.SIGCONT)
        assert done.reason == "heartbeat_lost"
        # The agent still holds the lease: the silent VM is replaced (it had beaten, so its boot worked).
        assert done.replaced_by is not None
        new = flows.wait_state(done.replaced_by, {State.READY}, timeout_s=60)
        assert new.replaces == rec.instance_id
        flows.release(lid)
        flows.wait_gone(new, timeout_s=30)


def test_a_vm_deleted_behind_our_back_is_replaced(flows: Flows) -> None:
    """`gcloud compute instances delete` by someone else while the agent holds the lease: the reaper sees the
    VM gone from the listing (vanished), launches a replacement and the old record names it."""
    lid = lease()
    with flows.lease_kept(lid):
        flows.demand(lid)
        rec = flows.wait_ready(lid)
        client = _compute_client(flows)
        client.delete_unary(project=flows.project, zone=rec.zone or flows.settings.zones[0],
                            instance=rec.provider_id or "")
        t0 = time.monotonic()
        done = flows.wait_gone(rec, timeout_s=HB_TIMEOUT + REAP_PERIOD_S + SLACK)
        assert done.reason in ("vanished", "heartbeat_lost"), done.reason  # the listing usually tells first
        assert done.replaced_by is not None, "the lost VM was not replaced"
        new = flows.wait_state(done.replaced_by, {State.READY}, timeout_s=60)
        print(f"deleted behind our back → replacement READY: {elapsed(t0):.1f}s ({done.reason})")
        assert new.replaces == rec.instance_id and new.lease_id == lid and new.lost_at is not None
        assert flows.vm(new.provider_id or "") is not None
        audit = [e["action"] for e in flows.audit(rec.instance_id)]
        assert "failover" in audit
        ready = wait_until(lambda: [e for e in flows.audit(new.instance_id) if e["action"] == "failover_ready"],
                           timeout_s=15, what="the replacement's phases in the audit")
        assert ready[0]["detection_s"] is not None and ready[0]["total_s"] is not None
        flows.release(lid)
        flows.wait_gone(new, timeout_s=30)


def test_max_runtime_passed_gets_the_vm_deleted(flows: Flows) -> None:
    lid = lease()
    with flows.lease_kept(lid):
        flows.demand(lid)
        rec = flows.wait_ready(lid)
        # Move the cap into the past, as if three hours had gone by.
        flows.store.update(rec.instance_id, lambda r: r.model_copy(update={"deadline": datetime.now(UTC)}))
        done = flows.wait_gone(rec, timeout_s=REAP_PERIOD_S + SLACK)
    assert done.reason == "max_runtime"


def _compute_client(flows: Flows) -> compute_v1.InstancesClient:
    return compute_v1.InstancesClient(client_options=ClientOptions(api_endpoint=flows.compute_url),
                                      credentials=AnonymousCredentials())


def _insert_vm(flows: Flows, name: str, labels: dict[str, str]) -> None:
    client = _compute_client(flows)
    zone = flows.settings.zones[0]
    inst = compute_v1.Instance(
        name=name, machine_type=f"zones/{zone}/machineTypes/e2-small", labels=labels,
        disks=[compute_v1.AttachedDisk(boot=True, auto_delete=True, initialize_params=compute_v1.AttachedDiskInitializeParams(
            source_image="projects/debian-cloud/global/images/family/debian-12"))],
        network_interfaces=[compute_v1.NetworkInterface(network="global/networks/default")],
    )
    op = client.insert_unary(project=flows.project, zone=zone, instance_resource=inst)
    ops = compute_v1.ZoneOperationsClient(client_options=ClientOptions(api_endpoint=flows.compute_url),
                                          credentials=AnonymousCredentials())
    ops.wait(project=flows.project, zone=zone, operation=op.name)


def test_an_unrecorded_vm_of_ours_is_reaped_and_a_foreign_vm_is_untouched(flows: Flows) -> None:
    ours, foreign = f"sl-orphan-{uuid.uuid4().hex[:8]}", f"someone-else-{uuid.uuid4().hex[:8]}"
    _insert_vm(flows, ours, ownership_labels("default", "nobody", ours))
    _insert_vm(flows, foreign, {"team": "ml"})
    try:
        grace = float(FAST_TIMINGS["SPOTLEASH_ORPHAN_GRACE_S"])
        wait_until(lambda: flows.vm(ours) is None, timeout_s=grace + REAP_PERIOD_S + SLACK,
                   what="the orphan to be deleted")
        entries = wait_until(lambda: [e for e in flows.store.audit_entries(ours) if e["action"] == "reap"],
                             timeout_s=30, what="the orphan's reap in the audit")
        assert entries[0]["reason"] == "orphan"
        time.sleep(REAP_PERIOD_S * 2)  # two more reaps: the foreign VM must survive them
        assert flows.vm(foreign) is not None, "a VM without our labels was touched"
    finally:
        _compute_client(flows).delete_unary(project=flows.project, zone=flows.settings.zones[0], instance=foreign)


def test_the_same_demand_delivered_three_times_makes_one_instance(flows: Flows) -> None:
    lid = lease()
    with flows.lease_kept(lid):
        event = flows.demand(lid)
        flows.publish(event)
        flows.publish(event)
        rec = flows.wait_ready(lid)
        time.sleep(2)  # let the duplicates land
        records = flows.records_of(lid)
        vms = [v for v in flows.vms() if v["labels"].get("spotleash-lease") == lid]
        assert len(records) == 1 and len(vms) == 1
        flows.release(lid)
        flows.wait_gone(rec, timeout_s=30)


def test_a_crash_between_create_and_record_leaves_nothing_behind(flows: Flows) -> None:
    """The state a launcher crash leaves — an intent still PROVISIONING, a labelled VM, no provider id
    recorded — is found by label and deleted by the reaper."""
    from spotleash.model import instance_id_for, new_record, transition
    from spotleash.providers import build_provider
    from spotleash.services.context import Context
    from spotleash.services.launch import build_spec
    from spotleash.wire.events import Component, DemandEvent

    lid = lease()
    event = DemandEvent(lease_id=lid, trigger="threshold", ram_percent=90,
                        components=[Component(name="vision", ram_gb=4)])
    now = datetime.now(UTC)
    iid = instance_id_for(event.event_id)
    intent = new_record(instance_id=iid, lease_id=lid, deployment_id="default", event_id=event.event_id,
                        provider="gce", now=now, max_runtime_s=3600)
    intent = transition(intent, State.PROVISIONING, now)
    flows.store.create_intent(intent)
    ctx = Context(settings=flows.settings, store=flows.store)
    made = build_provider("gce", flows.settings).create(build_spec(ctx, intent, "e2-highmem-2", now))
    assert flows.vm(made.provider_id) is not None
    # ... and the launcher "dies" here. Nothing renews the lease; the reaper must clean up.
    done = flows.wait_gone(intent, timeout_s=LEASE_TTL + REAP_PERIOD_S + SLACK)
    assert done.state == State.TERMINATED
    assert flows.vm(made.provider_id) is None


def test_a_malformed_event_is_acked_recorded_and_dead_lettered(flows: Flows) -> None:
    marker = uuid.uuid4().hex
    flows.publish_raw("demand", f'{{"not": "a demand", "marker": "{marker}"'.encode())
    found = wait_until(lambda: [r for r in flows.store.rejected() if marker.encode() in bytes(r["raw"])],
                       timeout_s=30, what="the rejected record")
    assert found[0]["reason"] == "bad_json" and found[0]["source"] == "demand"
    sub = pubsub_v1.SubscriberClient()
    path = sub.subscription_path(flows.project, "spotleash-dead-letter-hold")
    assert "spotleash-dead-letter-hold" in load_topology().subscriptions

    def dead_lettered() -> bool:
        resp = sub.pull(request={"subscription": path, "max_messages": 50}, timeout=5)
        if resp.received_messages:
            sub.acknowledge(request={"subscription": path, "ack_ids": [m.ack_id for m in resp.received_messages]})
        return any(marker.encode() in m.message.data for m in resp.received_messages)

    wait_until(dead_lettered, timeout_s=30, what="the dead-lettered copy")


def test_preemption_launches_a_replacement_and_records_the_old_one(flows: Flows) -> None:
    lid = lease()
    with flows.lease_kept(lid):
        flows.demand(lid)
        old = flows.wait_ready(lid)
        flows.compute("POST", f"instances/{old.zone}/{old.provider_id}/preempt")
        gone = flows.wait_gone(old, timeout_s=60)
        assert gone.preempted and gone.reason == "preempted"

        def replacement() -> object:
            return [r for r in flows.records_of(lid) if r.replaces == old.instance_id and r.state == State.READY]

        new = wait_until(replacement, timeout_s=60, what="a READY replacement")[0]  # type: ignore[index]
        assert flows.store.get(old.instance_id).replaced_by == new.instance_id  # type: ignore[union-attr]
        assert any(e["action"] == "failover" for e in flows.audit(old.instance_id))
        flows.release(lid)
        flows.wait_gone(new, timeout_s=30)


def test_budget_exhausted_refuses_launches_with_a_clear_reason(flows: Flows) -> None:
    """Last in this module: a spent budget also makes the reaper stop everything."""
    alert = {"budgetDisplayName": "spotleash", "costAmount": 120.0, "budgetAmount": 100.0,
             "alertThresholdExceeded": 1.0, "costIntervalStart": "2026-11-01T00:00:00Z", "currencyCode": "USD"}
    import json

    flows.publish_raw("budget", json.dumps(alert).encode())
    wait_until(lambda: (flows.store.get_budget() or {}).get("exceeded"), timeout_s=30, what="the budget record")
    lid = lease()
    try:
        with flows.lease_kept(lid):
            flows.demand(lid)
            rec = wait_until(lambda: flows.records_of(lid), timeout_s=30, what="the refused record")[0]
            assert rec.state == State.FAILED and rec.reason and rec.reason.startswith("budget_exceeded")
            assert [e["action"] for e in flows.audit(rec.instance_id)] == ["launch_refused"]
            assert not [v for v in flows.vms() if v["labels"].get("spotleash-lease") == lid]
    finally:
        flows.store.put_budget({"exceeded": False, "stop_all": False, "at": datetime.now(UTC)})
