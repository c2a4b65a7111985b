"""``spotleash publish --gc``'s decision: mark from pointers, the newest and the young; sweep the rest."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from spotleash.decide.package_gc import Listed, plan_gc

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def _l(char: str, age: timedelta = timedelta(days=10), size: int = 100) -> Listed:
    return Listed(char * 64, size, NOW - age)


def test_an_old_manifest_no_pointer_names_goes_with_the_blobs_only_it_named() -> None:
    m1, m2 = _l("1", timedelta(days=9)), _l("2", timedelta(days=5))
    blobs = {b.sha256: b for b in (_l("a"), _l("b"), _l("c"))}
    plan = plan_gc(pointers={"main": m2.sha256}, manifests={m1.sha256: m1, m2.sha256: m2},
                   names={m1.sha256: frozenset({"a" * 64, "b" * 64}), m2.sha256: frozenset({"b" * 64, "c" * 64})},
                   blobs=blobs, now=NOW, keep_recent=0, grace_s=3600)
    assert set(plan.delete_manifests) == {m1.sha256} and set(plan.delete_blobs) == {"a" * 64}
    assert plan.keep_manifests == {m2.sha256} and plan.bytes_freed == 200


def test_the_newest_and_the_young_are_kept_and_so_are_young_blobs_of_a_publish_in_progress() -> None:
    old, recent, young = _l("1", timedelta(days=9)), _l("2", timedelta(days=3)), _l("3", timedelta(minutes=5))
    blobs = {b.sha256: b for b in (_l("a"), _l("b", timedelta(minutes=1)), _l("c"))}
    plan = plan_gc(pointers={}, manifests={m.sha256: m for m in (old, recent, young)},
                   names={old.sha256: frozenset({"a" * 64}), recent.sha256: frozenset({"c" * 64}),
                          young.sha256: None},
                   blobs=blobs, now=NOW, keep_recent=2, grace_s=3600)
    assert plan.keep_manifests == {young.sha256, recent.sha256}  # the two newest
    assert set(plan.delete_manifests) == {old.sha256}
    assert set(plan.delete_blobs) == {"a" * 64}  # b is young (a publish in progress), c is named


def test_a_pointer_naming_a_manifest_keeps_it_whatever_its_age() -> None:
    m = _l("1", timedelta(days=400))
    plan = plan_gc(pointers={"main": m.sha256}, manifests={m.sha256: m}, names={m.sha256: frozenset({"a" * 64})},
                   blobs={"a" * 64: _l("a", timedelta(days=400))}, now=NOW, keep_recent=0, grace_s=0)
    assert plan.delete_manifests == {} and plan.delete_blobs == {}
