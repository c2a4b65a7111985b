"""A lost instance's replacement carries on with its state, on the local stack (issue 14: failover → restore).

The app (``tests/e2e/state_app.py``) keeps ``notes.bin`` in ``/workspace``, which its ``notes`` component
finds through ``SPOTLEASH_STATE_PATHS`` and whose sha256 at its start it serves. Every instance is real: a
Compute fake VM or a VAST fake box runs the startup script, the bootstrap, the instance agent, the
package's components; snapshots go to Cloud Storage's emulator through signed URLs and are verified and
recorded in Firestore by on_heartbeat.

1. VAST: box 1 outbid (its processes paused, as on VAST) → the reaper replaces it from another offer → box 2
   restores the verified snapshot before ``notes`` starts; the old record says why it ended and names box 2.
2. GCE preemption: a file written after the last periodic snapshot is in the snapshot the agent takes on
   the notice, which the control plane still verifies during the preemption grace; the replacement
   restores that one.
3. The latest snapshot corrupted in the bucket → the next instance restores the one before, and the
   audit says so.

A VM deleted behind our back while its lease lives is replaced: ``test_control_plane.py`` covers it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.flows import Flows
from tests.e2e.state_app import (
    STATE_PATH,
    actions_of,
    box,
    notes_demand,
    notes_state,
    published,
    request_snapshot,
    set_launcher_env,
    vast_control,
    verified_of,
    wait_ready,
    write_state,
)
from tests.support import snapshot_objects

from spotleash.adapters.storage import Storage
from spotleash.model import SnapshotState, State
from spotleash.polling import wait_until
from spotleash.topology import load_topology

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NOTICE_S = 30  # test 2: GCE's (and the Compute fake's) preemption notice
PERIODIC_S = 15  # test 2: long enough that no periodic snapshot comes between the second write and the notice


@pytest.fixture(scope="module")
def app(local_stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    # GPUs as bids, so a box can be outbid; no periodic snapshots unless a test asks for them.
    settings = {"SPOTLEASH_VAST_INTERRUPTIBLE": "true", "SPOTLEASH_SNAPSHOT_INTERVAL_S": "0"}
    with published(local_stack.state_dir, tmp_path_factory.mktemp("state-app"), settings) as result:
        yield result


@pytest.fixture
def flows(app: dict[str, Any]) -> Flows:
    return Flows()


def test_a_vast_box_outbid_is_replaced_from_another_offer_with_its_workspace(flows: Flows) -> None:
    lease = "lease-outbid-restore"
    with flows.lease_kept(lease):
        flows.publish(notes_demand(lease, gpu=True))
        first = wait_ready(flows, lease)
        assert first.provider == "vast" and notes_state(first)["sha256_at_start"] is None
        paths = notes_state(first)["state_paths"]
        assert [Path(p).relative_to(box(flows, first)["root"]).as_posix() for p in paths] == [STATE_PATH.lstrip("/")]
        want = write_state(flows, first)
        saved = request_snapshot(lease, first.instance_id)
        offer = box(flows, first)["offer_id"]

        vast_control(f"outbid/{first.provider_id}")
        second = wait_ready(flows, lease, replaces=first.instance_id)
        assert second.provider == "vast" and second.provider_id != first.provider_id
        assert box(flows, second)["offer_id"] != offer  # the higher bidder has box 1's
        assert notes_state(second)["sha256_at_start"] == want  # restored before its component started
        restored = actions_of(flows, second.instance_id, "restored")
        assert [e["snapshot_id"] for e in restored] == [saved["snapshot_id"]]

        old = flows.wait_gone(first, timeout_s=60)
        assert (old.state, old.reason, old.replaced_by) == (State.TERMINATED, "stopped_at_provider", second.instance_id)
        ready = wait_until(lambda: actions_of(flows, second.instance_id, "failover_ready"), timeout_s=15,
                           what="the replacement's phases")[0]
        assert ready["restore_s"] is not None and ready["restore_s"] >= 0 and ready["total_s"] is not None
        print("VAST outbid failover phases:", {k: ready[k] for k in ready if k.endswith("_s")})
        flows.release(lease)
        flows.wait_gone(second, timeout_s=60)


def test_the_snapshot_taken_on_a_preemption_notice_is_verified_and_restored_by_the_replacement(
        flows: Flows, local_stack: Any) -> None:
    lease = "lease-preempt-restore"
    set_launcher_env(local_stack.state_dir, {"SPOTLEASH_SNAPSHOT_INTERVAL_S": str(PERIODIC_S)})
    advanced = False
    try:
        with flows.lease_kept(lease):
            flows.publish(notes_demand(lease))
            first = wait_ready(flows, lease)
            assert first.provider == "gce"
            older = write_state(flows, first)
            periodic = wait_until(lambda: [s for s in verified_of(flows, lease, first.instance_id)
                                           if s.trigger == "periodic"], timeout_s=PERIODIC_S * 3, interval_s=0.5,
                                  what="a verified periodic snapshot")[-1]
            newer = write_state(flows, first)  # after the last periodic snapshot: only the notice's can save it
            assert newer != older

            flows.compute("POST", f"instances/{first.zone}/{first.provider_id}/preempt")
            on_notice = wait_until(lambda: [s for s in verified_of(flows, lease, first.instance_id)
                                            if s.trigger == "preempted"], timeout_s=30, interval_s=0.25,
                                   what="the preemption snapshot verified")[0]
            assert on_notice.created_at > periodic.created_at and on_notice.raw_bytes >= 300_000

            second = wait_ready(flows, lease, replaces=first.instance_id)
            assert notes_state(second)["sha256_at_start"] == newer
            restored = actions_of(flows, second.instance_id, "restored")
            assert [e["snapshot_id"] for e in restored] == [on_notice.snapshot_id]
            # the replacement serves within the notice: the rest of it proves nothing more, so the Compute
            # fake's clock (its deadlines' only) jumps to its end, and the VM is taken away now
            flows.compute("POST", "clock", advance_s=NOTICE_S)
            advanced = True
            old = flows.wait_gone(first, timeout_s=60)
            assert (old.reason, old.preempted, old.replaced_by) == ("preempted", True, second.instance_id)
            assert old.preempted_at is not None and on_notice.verified_at is not None
            print(f"preemption notice → its snapshot verified: {(on_notice.verified_at - old.preempted_at).total_seconds():.1f}s")
            assert [e["grace_s"] for e in actions_of(flows, first.instance_id, "preempted")][:1] == [30.0]
            flows.release(lease)
            flows.wait_gone(second, timeout_s=60)
    finally:
        if advanced:  # the fake's clock back beside the wall's, for the tests after this one
            flows.compute("POST", "clock", advance_s=-NOTICE_S)
        set_launcher_env(local_stack.state_dir, {"SPOTLEASH_SNAPSHOT_INTERVAL_S": "0"})  # the module's setting


def test_a_corrupt_latest_snapshot_makes_the_next_instance_restore_the_one_before(flows: Flows) -> None:
    lease = "lease-corrupt-restore"
    storage = Storage(load_topology().package_bucket, project=flows.project)
    with flows.lease_kept(lease):
        flows.publish(notes_demand(lease))
        first = wait_ready(flows, lease)
        kept = write_state(flows, first)
        good = request_snapshot(lease, first.instance_id)
        write_state(flows, first)
        bad = request_snapshot(lease, first.instance_id)
        snapshot_objects.corrupt(storage, snapshot_objects.part_name(lease, bad["snapshot_id"]))
        flows.release(lease, first.instance_id)
        flows.wait_gone(first, timeout_s=60)

        flows.publish(notes_demand(lease))
        second = wait_ready(flows, lease, besides=frozenset({first.instance_id}))
        assert notes_state(second)["sha256_at_start"] == kept
        assert [e["snapshot_id"] for e in actions_of(flows, second.instance_id, "restored")] == [good["snapshot_id"]]
        [corrupt] = actions_of(flows, second.instance_id, "snapshot_corrupt")
        assert corrupt["snapshot_id"] == bad["snapshot_id"] and "falling back" in corrupt["detail"]
        fell_back = [e for e in actions_of(flows, second.instance_id, "restore_granted") if e["reason"] == "fallback"]
        assert [(e["snapshot_id"], e["fell_back_from"]) for e in fell_back] == [(good["snapshot_id"],
                                                                                 [bad["snapshot_id"]])]
        assert flows.store.get_snapshot(bad["snapshot_id"]).state is SnapshotState.CORRUPT  # type: ignore[union-attr]
        flows.release(lease)
        flows.wait_gone(second, timeout_s=60)

