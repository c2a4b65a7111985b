"""The snapshot decisions, as pure functions: retention, the restore choice, the hibernation guard,
the manifest check; and the state paths an instance snapshots."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest

from spotleash.decide.snapshots import (
    check_manifest,
    choose_restore,
    may_destroy_for_hibernation,
    retention_plan,
)
from spotleash.instance_agent.snapshot.common import SnapshotError, state_paths_for
from spotleash.model import InstanceRecord, SnapshotRecord, SnapshotState, State, new_record, transition
from spotleash.wire.package import AppSpec
from spotleash.wire.snapshot import ManifestObject, SnapshotManifest, object_names

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
V, U, F, C, D = (SnapshotState.VERIFIED, SnapshotState.UPLOADING, SnapshotState.FAILED, SnapshotState.CORRUPT,
                 SnapshotState.DELETED)


def snap(sid: str, age_s: float, state: SnapshotState, *, instance: str = "sl-a", lease: str = "lease-1",
         parts: int = 1) -> SnapshotRecord:
    at = NOW - timedelta(seconds=age_s)
    return SnapshotRecord(snapshot_id=sid, lease_id=lease, instance_id=instance, deployment_id="dep",
                          state=state, created_at=at, updated_at=at, parts=parts)


def box(*, deadline_in_s: float = 3600) -> InstanceRecord:
    rec = new_record(instance_id="sl-a", lease_id="lease-1", deployment_id="dep", event_id="ev", provider="vast",
                     now=NOW - timedelta(hours=1), max_runtime_s=3600 + deadline_in_s)
    return transition(transition(rec, State.PROVISIONING, NOW), State.READY, NOW)


STALE = timedelta(hours=1)


def ids(snaps: list[SnapshotRecord]) -> list[str]:
    return [s.snapshot_id for s in snaps]


# ---------------------------------------------------------------------------------------- retention


def test_retention_keeps_the_newest_n_verified() -> None:
    snaps = [snap(f"s{i}", 1000 - i * 100, V) for i in range(6)]  # s5 newest
    assert ids(retention_plan(snaps, 3, NOW, STALE)) == ["s0", "s1", "s2"]
    assert retention_plan(snaps, 6, NOW, STALE) == []


def test_retention_never_deletes_the_newest_verified_even_with_keep_zero() -> None:
    snaps = [snap("old", 500, V), snap("new", 100, V)]
    assert ids(retention_plan(snaps, 0, NOW, STALE)) == ["old"]


def test_retention_drops_failed_and_corrupt_older_than_the_newest_verified_only() -> None:
    snaps = [snap("bad-old", 900, F), snap("rot", 800, C), snap("good", 500, V), snap("bad-new", 100, F)]
    assert ids(retention_plan(snaps, 3, NOW, STALE)) == ["bad-old", "rot"]
    # no verified one at all: failed ones stay (they are the only evidence), nothing is deleted
    assert retention_plan([snap("f", 900, F), snap("c", 800, C)], 3, NOW, STALE) == []


def test_retention_cleans_an_upload_abandoned_past_the_timeout_but_not_a_running_one() -> None:
    snaps = [snap("killed", 7200, U), snap("running", 60, U), snap("good", 3000, V)]
    assert ids(retention_plan(snaps, 3, NOW, STALE)) == ["killed"]


def test_retention_ignores_what_is_deleted_already() -> None:
    snaps = [snap("gone", 900, D), snap("a", 500, V), snap("b", 100, V)]
    assert retention_plan(snaps, 1, NOW, STALE) == [snaps[1]]


# ---------------------------------------------------------------------------------------- restore choice


def test_restore_picks_the_newest_verified_and_falls_back_past_the_excluded() -> None:
    snaps = [snap("s1", 900, V), snap("s2", 500, V), snap("s3", 300, U), snap("s4", 200, F), snap("s5", 100, C)]
    chosen = choose_restore(snaps)
    assert chosen is not None and chosen.snapshot_id == "s2"
    fallback = choose_restore(snaps, exclude={"s2"})
    assert fallback is not None and fallback.snapshot_id == "s1"
    assert choose_restore(snaps, exclude={"s1", "s2"}) is None
    assert choose_restore([]) is None


def test_restore_ties_are_broken_by_id_deterministically() -> None:
    a, b = snap("aaa", 100, V), snap("bbb", 100, V)
    assert choose_restore([a, b]) == choose_restore([b, a]) == b


# ---------------------------------------------------------------------------------------- hibernation guard


def test_no_destroy_before_any_snapshot() -> None:
    v = may_destroy_for_hibernation(box(), [], NOW)
    assert (v.destroy, v.reason, v.alert) == (False, "no_snapshot", False)


def test_no_destroy_while_the_snapshot_is_uploading() -> None:
    v = may_destroy_for_hibernation(box(), [snap("old", 900, V), snap("s", 10, U)], NOW)
    assert (v.destroy, v.reason, v.snapshot_id) == (False, "snapshot_in_progress", "s")


def test_a_failed_snapshot_keeps_the_box_and_alerts_even_with_an_older_verified_one() -> None:
    for bad in (F, C, D):
        v = may_destroy_for_hibernation(box(), [snap("old", 900, V), snap("s", 10, bad)], NOW)
        assert (v.destroy, v.reason, v.alert) == (False, "snapshot_failed", True)


def test_destroy_once_the_newest_snapshot_is_verified() -> None:
    v = may_destroy_for_hibernation(box(), [snap("old", 900, F), snap("s", 10, V)], NOW)
    assert (v.destroy, v.reason, v.snapshot_id, v.alert) == (True, "snapshot_verified", "s", False)


def test_only_this_instances_snapshots_taken_since_the_decision_count() -> None:
    others = [snap("other-box", 10, V, instance="sl-b"), snap("other-lease", 10, V, lease="lease-2")]
    assert may_destroy_for_hibernation(box(), others, NOW).reason == "no_snapshot"
    before = [snap("before", 600, V)]
    v = may_destroy_for_hibernation(box(), before, NOW, requested_at=NOW - timedelta(seconds=300))
    assert (v.destroy, v.reason) == (False, "no_snapshot")


@pytest.mark.parametrize(("snaps", "alert"), [([], True), ([snap("s", 10, F)], True), ([snap("s", 10, U)], True),
                                              ([snap("s", 10, V)], False)])
def test_the_max_runtime_cap_wins(snaps: list[SnapshotRecord], alert: bool) -> None:
    v = may_destroy_for_hibernation(box(deadline_in_s=0), snaps, NOW)
    assert (v.destroy, v.reason, v.alert) == (True, "max_runtime_cap", alert)


# ---------------------------------------------------------------------------------------- manifest check


def manifest(parts: int = 2, **kw: object) -> SnapshotManifest:
    objs = [ManifestObject(name=n, size=10, sha256="a" * 64, md5="A" * 22 + "==") for n in object_names(parts)[:-1]]
    fields: dict[str, object] = {"snapshot_id": "s", "lease_id": "lease-1", "instance_id": "sl-a", "created_at": NOW,
                                 "roots": ["/workspace"], "objects": objs, "files": 3, "raw_bytes": 30, **kw}
    return SnapshotManifest.model_validate(fields)


def test_check_manifest_accepts_exactly_the_reported_one() -> None:
    data = manifest().model_dump_json().encode()
    rec = snap("s", 10, U, parts=2)
    assert check_manifest(data, hashlib.sha256(data).hexdigest(), rec).files == 3
    with pytest.raises(ValueError, match="sha256"):
        check_manifest(data, "0" * 64, rec)
    with pytest.raises(ValueError, match="2 parts, the upload was for 3"):
        check_manifest(data, hashlib.sha256(data).hexdigest(), snap("s", 10, U, parts=3))
    other = manifest(lease_id="lease-2").model_dump_json().encode()
    with pytest.raises(ValueError, match="another snapshot, lease or instance"):
        check_manifest(other, hashlib.sha256(other).hexdigest(), rec)
    junk = b'{"format": 1}'
    with pytest.raises(ValueError, match="not a snapshot manifest"):
        check_manifest(junk, hashlib.sha256(junk).hexdigest(), rec)


# ---------------------------------------------------------------------------------------- state paths


def test_state_paths_default_per_provider_and_configured_ones_win() -> None:
    assert [str(p) for p in state_paths_for("vast", [])] == ["/workspace"]
    assert state_paths_for("gce", []) == []
    assert [str(p) for p in state_paths_for("gce", ["/var/lib/app"])] == ["/var/lib/app"]
    for bad in (["relative"], ["/a/../etc"], ["/a", "/a"]):
        with pytest.raises(SnapshotError):
            state_paths_for("gce", bad)


def test_app_spec_state_paths_must_be_absolute() -> None:
    base = {"name": "app", "components": [{"name": "web", "command": ["x"], "port": 8000}]}
    assert AppSpec.model_validate({**base, "state_paths": ["/data"]}).state_paths == ["/data"]
    with pytest.raises(ValueError, match="state_paths"):
        AppSpec.model_validate({**base, "state_paths": ["data"]})
