"""What a preempted instance's grace decides, as pure functions: when it is over, and whether its
replacement's restore waits for the snapshot the preempted instance is taking."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from spotleash.decide.preemption import grace_over, restore_hold
from spotleash.model import InstanceRecord, SnapshotRecord, SnapshotState, State

NOW = datetime(2026, 11, 30, 1, 0, tzinfo=UTC)
GRACE = 30.0
V, U, F = SnapshotState.VERIFIED, SnapshotState.UPLOADING, SnapshotState.FAILED


def ago(s: float) -> datetime:
    return NOW - timedelta(seconds=s)


def inst(iid: str, *, preempted_s: float | None = None, state: State = State.READY) -> InstanceRecord:
    return InstanceRecord(instance_id=iid, lease_id="lease-1", deployment_id="dep", event_id="ev", provider="gce",
                          state=state, created_at=ago(600), updated_at=ago(1), deadline=NOW + timedelta(hours=1),
                          preempted=preempted_s is not None,
                          preempted_at=ago(preempted_s) if preempted_s is not None else None)


def snap(sid: str, state: SnapshotState, *, by: str = "old", age_s: float = 100, **kw: Any) -> SnapshotRecord:
    return SnapshotRecord(snapshot_id=sid, lease_id="lease-1", instance_id=by, deployment_id="dep", state=state,
                          created_at=ago(age_s), updated_at=ago(age_s), **kw)


def hold(records: list[InstanceRecord], snaps: list[SnapshotRecord]) -> str | None:
    got = restore_hold("new", records, snaps, NOW, GRACE)
    return got.waiting_for if got else None


PERIODIC = snap("periodic", V, trigger="periodic")


def test_the_grace_runs_from_the_notice() -> None:
    assert not grace_over(inst("old", preempted_s=29.9), NOW, GRACE)
    assert grace_over(inst("old", preempted_s=30), NOW, GRACE)
    assert not grace_over(inst("old"), NOW, GRACE)  # never preempted


def test_the_replacement_waits_while_the_preempted_one_may_still_save_newer_state() -> None:
    old, new = inst("old", preempted_s=5), inst("new", state=State.PROVISIONING)
    assert hold([old, new], [PERIODIC]) == "old"  # notice seen, its snapshot not even asked for yet
    assert hold([old, new], [PERIODIC, snap("pre", U, age_s=2, trigger="preempted")]) == "old"  # uploading


@pytest.mark.parametrize("verdict", [V, F, SnapshotState.CORRUPT])
def test_a_verdict_on_the_preemption_snapshot_ends_the_wait(verdict: SnapshotState) -> None:
    old = inst("old", preempted_s=5)
    assert hold([old], [PERIODIC, snap("pre", verdict, age_s=2, trigger="preempted")]) is None


def test_a_periodic_snapshot_finishing_after_the_notice_does_not_end_the_wait() -> None:
    old = inst("old", preempted_s=5)
    assert hold([old], [PERIODIC, snap("late-periodic", V, age_s=2, trigger="periodic")]) == "old"


def test_the_wait_ends_with_the_grace_and_is_bounded_by_it() -> None:
    assert hold([inst("old", preempted_s=30)], [PERIODIC]) is None
    got = restore_hold("new", [inst("old", preempted_s=29)], [PERIODIC], NOW, GRACE)
    assert got is not None and got.until == ago(29) + timedelta(seconds=GRACE)
    assert got.retry_after_s(NOW) == 1.0  # never past the grace's end
    assert restore_hold("new", [inst("old", preempted_s=1)], [PERIODIC], NOW, GRACE).retry_after_s(NOW) == 2.0  # type: ignore[union-attr]


def test_no_wait_for_a_lease_that_keeps_no_state_or_a_predecessor_already_gone() -> None:
    assert hold([inst("old", preempted_s=5)], []) is None  # no snapshot ever: no state paths to save
    assert hold([inst("old", preempted_s=5, state=State.TERMINATED)], [PERIODIC]) is None
    assert hold([inst("old")], [PERIODIC]) is None  # not preempted
    assert restore_hold("old", [inst("old", preempted_s=5)], [PERIODIC], NOW, GRACE) is None  # not for itself
