"""run_reap, in-process: each reason carried out, unknown listings, the mass-deletion guard, dry runs.

reaper.decide itself is tested exhaustively in tests/unit/test_reaper.py; here the service around it:
what it gathers from the store and the providers, what it deletes, and what it writes down.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from tests.support.builders import DEP, MakeCtx, actions, launched, open_lease, put_record, record_of
from tests.support.clock import FakeClock
from tests.support.fake_provider import FakeProvider, FakeSshProvider
from tests.support.memory_store import MemoryStore

from spotleash.cli.app import reap_json
from spotleash.decide.reap import RELEASED_LEASE_HOLD, Decision
from spotleash.errors import ProviderTransient, Transient
from spotleash.model import Lease, State, transition
from spotleash.services.context import Context
from spotleash.services.reap import ReapReport, _execute, run_reap
from spotleash.wire.events import ReapTick


def reap(ctx: Context, *, dry_run: bool = False, force: bool = False) -> ReapReport:
    return run_reap(ctx, ReapTick(event_id="tick-1", dry_run=dry_run, force=force))


def reasons(report: ReapReport) -> list[tuple[str, str | None]]:
    return sorted((d.reason, d.instance_id) for d in report.plan.decisions)


def assert_reaped(store: MemoryStore, provider: FakeProvider, instance_id: str, reason: str) -> None:
    done = record_of(store, instance_id)
    assert done.state is State.TERMINATED and done.reason == reason
    assert provider.by_instance_id(instance_id) is None
    acts = actions(store, instance_id)
    assert ("reap_decision", reason) in acts and acts[-1] == ("reap", reason)


# ------------------------------------------------------------------ every reason, carried out
def test_nothing_due_means_no_decision_and_no_write(ctx: Context, store: MemoryStore, gce: FakeProvider,
                                                    vast: FakeSshProvider) -> None:
    rec = launched(ctx)
    before = len(store.audit_entries())
    report = reap(ctx)
    assert report.plan.decisions == () and report.done == [] and not report.dry_run
    assert len(store.audit_entries()) == before and record_of(store, rec.instance_id).state is State.RUNNING
    assert gce.calls_of("list_owned") == vast.calls_of("list_owned") == [DEP]
    assert gce.calls_of("delete") == []


def test_heartbeat_lost(ctx: Context, store: MemoryStore, gce: FakeProvider, clock: FakeClock) -> None:
    rec = launched(ctx)
    clock.advance(181)
    open_lease(ctx)  # the agent is alive; only the instance went silent
    report = reap(ctx)
    assert reasons(report) == [("heartbeat_lost", rec.instance_id)] and report.done == list(report.plan.decisions)
    assert_reaped(store, gce, rec.instance_id, "heartbeat_lost")


def test_lease_expired(ctx: Context, store: MemoryStore, gce: FakeProvider, clock: FakeClock) -> None:
    rec = launched(ctx)
    clock.advance(91)
    report = reap(ctx)
    assert reasons(report) == [("lease_expired", rec.instance_id)] and report.saved == []
    assert_reaped(store, gce, rec.instance_id, "lease_expired")
    assert store.get_lease("lease-1") is not None  # kept while it still owned something; retired next time
    reap(ctx)
    assert store.get_lease("lease-1") is None


# ------------------------------------------------------------------ lease_expired: the re-check at the deletion
def test_a_lease_renewed_between_the_read_and_the_deletion_is_spared(
        ctx: Context, store: MemoryStore, gce: FakeProvider, clock: FakeClock) -> None:
    rec = launched(ctx)
    clock.advance(91)
    # The agent's renewal is handled after the reap read the expired lease, just before it deletes.
    store.on("update_many", lambda: open_lease(ctx))  # the transaction that starts it
    report = reap(ctx)
    assert reasons(report) == [("lease_expired", rec.instance_id)]
    assert report.saved == list(report.plan.decisions) and report.done == [] and report.failed == []
    kept = record_of(store, rec.instance_id)
    assert kept.state is State.RUNNING and gce.by_instance_id(rec.instance_id) is not None
    assert gce.calls_of("delete") == []
    lease = store.get_lease("lease-1")
    assert lease is not None and not lease.released and lease.expires_at > clock.now
    assert actions(store, rec.instance_id)[-2:] == [("reap_decision", "lease_expired"), ("reap_saved", "lease_renewed")]
    saved = [e for e in store.audit_entries(rec.instance_id) if e["action"] == "reap_saved"][0]
    assert saved["lease_id"] == "lease-1" and "renewed at" in saved["detail"] and "expired at" in saved["detail"]
    shown = json.loads(json.dumps(reap_json(report)))  # what ``spotleash reap --json`` prints
    assert shown["saved"] == [{"reason": "lease_expired", "provider": "gce", "instance_id": rec.instance_id,
                               "provider_id": rec.provider_id, "detail": report.saved[0].detail}]
    assert shown["decisions"] == shown["saved"] and shown["failed"] == []
    assert reap(ctx).plan.decisions == ()  # and the next reap has nothing to say


def test_a_released_lease_reopened_before_the_deletion_spares_its_instance(
        ctx: Context, store: MemoryStore, gce: FakeProvider, clock: FakeClock) -> None:
    rec = launched(ctx)
    store.update_lease("lease-1", lambda cur: cur.model_copy(update={"released": True, "renewed_at": clock.now})
                       if cur else None)
    clock.advance(1)
    store.on("update_many", lambda: open_lease(ctx))  # a new term: a renewal sent after the release
    report = reap(ctx)
    assert [d.instance_id for d in report.saved] == [rec.instance_id] and report.done == []
    assert record_of(store, rec.instance_id).state is State.RUNNING


def test_a_renewal_after_the_recheck_finds_the_deletion_under_way(
        ctx: Context, store: MemoryStore, gce: FakeProvider, clock: FakeClock) -> None:
    """Once the re-check's transaction has moved the instance to TERMINATING, the deletion goes on: a renewal
    handled then (before terminate's last write) extends the lease for the agent's next demand."""
    rec = launched(ctx)
    clock.advance(91)
    # the deletions' second transaction (the one that ends the records, after the provider confirmed)
    store.on("update_many", lambda: store.on("update_many", lambda: open_lease(ctx)))
    report = reap(ctx)
    assert report.done == list(report.plan.decisions) and report.saved == []
    assert_reaped(store, gce, rec.instance_id, "lease_expired")
    lease = store.get_lease("lease-1")
    assert lease is not None and not lease.released and lease.expires_at > clock.now


def test_two_instances_of_one_expired_lease_are_both_reaped(ctx: Context, store: MemoryStore, gce: FakeProvider,
                                                            clock: FakeClock) -> None:
    a = launched(ctx)
    b = put_record(ctx, "sl-second", age_s=60)
    clock.advance(91)
    report = reap(ctx)
    assert sorted(d.instance_id or "" for d in report.done) == sorted([a.instance_id, b.instance_id])
    assert report.saved == [] and not [e for e in store.audit_entries() if e["action"] == "reap_saved"]


def test_max_runtime(ctx: Context, store: MemoryStore, gce: FakeProvider, clock: FakeClock) -> None:
    rec = launched(ctx)
    clock.advance(3600)
    open_lease(ctx)
    assert reasons(reap(ctx)) == [("max_runtime", rec.instance_id)]
    assert_reaped(store, gce, rec.instance_id, "max_runtime")


def test_budget_exceeded_stops_everything(ctx: Context, store: MemoryStore, gce: FakeProvider,
                                          vast: FakeSshProvider) -> None:
    a = launched(ctx)
    b = launched(ctx, "lease-2", gpu=True)
    store.put_budget({"exceeded": True, "stop_all": True})
    # Healthy records are not "due" by any query: the budget stop reaches them through the listings.
    assert reasons(reap(ctx)) == sorted([("budget_exceeded", a.instance_id), ("budget_exceeded", b.instance_id)])
    assert_reaped(store, gce, a.instance_id, "budget_exceeded")
    assert_reaped(store, vast, b.instance_id, "budget_exceeded")


def test_provisioning_timeout(ctx: Context, store: MemoryStore, gce: FakeProvider) -> None:
    open_lease(ctx)
    put_record(ctx, "sl-stuck", state=State.PROVISIONING, age_s=601)
    assert reasons(reap(ctx)) == [("provisioning_timeout", "sl-stuck")]
    done = record_of(store, "sl-stuck")
    assert done.state is State.TERMINATED and done.reason == "provisioning_timeout"
    assert gce.calls_of("find") == ["sl-stuck"]  # no provider id yet: looked up by label


def test_stopped_at_provider_is_replaced(ctx: Context, store: MemoryStore, vast: FakeSshProvider) -> None:
    rec = launched(ctx, gpu=True)
    vast.take_back(rec.provider_id or "", native_status="outbid")
    report = reap(ctx)
    assert reasons(report) == [("stopped_at_provider", rec.instance_id)]
    assert_reaped(store, vast, rec.instance_id, "stopped_at_provider")
    old = record_of(store, rec.instance_id)
    assert old.replaced_by is not None and ("failover", "stopped_at_provider") in actions(store, rec.instance_id)
    assert old.stopped_at is not None and old.ended_at is not None and old.stopped_at <= old.ended_at
    new = record_of(store, old.replaced_by)
    assert new.state is State.RUNNING and new.provider == "vast" and new.replaces == rec.instance_id


def test_vanished_is_decided_for_a_record_the_reap_reads(ctx: Context, store: MemoryStore, gce: FakeProvider,
                                                        clock: FakeClock) -> None:
    # The reap reads only records that may be due. One read at its heartbeat cut-off (silent for exactly
    # the timeout: not yet heartbeat_lost) whose instance the listing no longer has is "vanished".
    rec = launched(ctx)
    gce.vanish(rec.provider_id or "")
    clock.advance(ctx.settings.heartbeat_timeout_s)
    open_lease(ctx)
    assert reasons(reap(ctx)) == [("vanished", rec.instance_id)]
    done = record_of(store, rec.instance_id)
    assert done.state is State.TERMINATED and done.reason == "vanished"


def test_retry_delete_finishes_a_stalled_delete(ctx: Context, store: MemoryStore, gce: FakeProvider,
                                                clock: FakeClock) -> None:
    rec = launched(ctx)
    store.update(rec.instance_id, lambda r: transition(r, State.TERMINATING, clock.now, reason="release: x"))
    clock.advance(31)
    open_lease(ctx)
    assert reasons(reap(ctx)) == [("retry_delete", rec.instance_id)]
    done = record_of(store, rec.instance_id)
    assert done.state is State.TERMINATED and done.reason == "release: x" and gce.instances == {}


def test_orphans_are_deleted_after_their_grace_and_audited(ctx: Context, store: MemoryStore,
                                                           gce: FakeProvider) -> None:
    no_record = gce.plant("sl-ghost", deployment_id=DEP, age_s=301)
    no_label = gce.plant(None, deployment_id=DEP, age_s=301)
    put_record(ctx, "sl-ended", state=State.TERMINATED)
    ended_record = gce.plant("sl-ended", deployment_id=DEP, age_s=301)
    young = gce.plant("sl-young", deployment_id=DEP, age_s=299)
    stranger = gce.plant("sl-x", deployment_id=DEP, owned=False)
    other_dep = gce.plant("sl-y", deployment_id="dep-other")
    report = reap(ctx)
    assert sorted(d.provider_id or "" for d in report.done) == sorted(
        [no_record.provider_id, no_label.provider_id, ended_record.provider_id])
    assert {d.reason for d in report.done} == {"orphan"}
    assert sorted(gce.instances) == sorted([young.provider_id, stranger.provider_id, other_dep.provider_id])
    reaped = [e for e in store.audit_entries() if e["action"] == "reap"]
    assert sorted(e["provider_id"] for e in reaped) == sorted(d.provider_id or "" for d in report.done)
    assert record_of(store, "sl-ended").state is State.TERMINATED  # an ended record is not touched again


# ------------------------------------------------------------------ unknown listings, failures
@pytest.mark.parametrize("error", [ProviderTransient("list: 503"), OSError("connection reset")])
def test_a_failed_listing_contributes_nothing(error: Exception, ctx: Context, store: MemoryStore,
                                             gce: FakeProvider, clock: FakeClock) -> None:
    rec = launched(ctx)
    orphan = gce.plant("sl-ghost", deployment_id=DEP, age_s=3600)
    gce.vanish(rec.provider_id or "")
    clock.advance(ctx.settings.heartbeat_timeout_s)
    open_lease(ctx)
    gce.fail("list_owned", error)
    report = reap(ctx)
    # Neither the orphan nor the vanished instance: an unknown listing is not an empty one.
    assert report.plan.decisions == () and gce.calls_of("delete") == []
    assert gce.by_instance_id("sl-ghost") == orphan and record_of(store, rec.instance_id).state is State.RUNNING
    assert any(n.startswith("gce: listing failed") for n in report.plan.notes)


def test_a_failed_listing_still_lets_record_reasons_through(ctx: Context, store: MemoryStore,
                                                           gce: FakeProvider, clock: FakeClock,
                                                           vast: FakeSshProvider) -> None:
    rec = launched(ctx)
    vast_orphan = vast.plant("sl-gpu-ghost", deployment_id=DEP, age_s=3600)
    clock.advance(181)
    open_lease(ctx)
    gce.fail("list_owned", ProviderTransient("503"))
    report = reap(ctx)
    assert reasons(report) == sorted([("heartbeat_lost", rec.instance_id), ("orphan", "sl-gpu-ghost")])
    assert_reaped(store, gce, rec.instance_id, "heartbeat_lost")
    assert vast_orphan.provider_id not in vast.instances


def test_one_failed_deletion_does_not_stop_the_others(make_ctx: MakeCtx, store: MemoryStore,
                                                      gce: FakeProvider) -> None:
    ctx = make_ctx(confirm_delete_s=0.02)
    stuck = gce.plant("sl-a", deployment_id=DEP, age_s=3600)
    refused = gce.plant("sl-b", deployment_id=DEP, age_s=3600)
    fine = gce.plant("sl-c", deployment_id=DEP, age_s=3600)
    gce.fail("delete", ProviderTransient("503"), target=refused.provider_id)
    gce.fail("get", ProviderTransient("503"), target=stuck.provider_id, times=10_000)
    report = reap(ctx)
    assert [d.provider_id for d in report.done] == [fine.provider_id]
    failed = {d.provider_id: why for d, why in report.failed}
    assert set(failed) == {stuck.provider_id, refused.provider_id}
    assert failed[refused.provider_id] == "503"
    assert sorted(gce.instances) == sorted([refused.provider_id])  # stuck's delete went through, unconfirmed
    assert [e["provider_id"] for e in store.audit_entries() if e["action"] == "reap"] == [fine.provider_id]


def test_records_deleted_together_one_refused_by_its_provider_stays_terminating(
        ctx: Context, store: MemoryStore, gce: FakeProvider, clock: FakeClock) -> None:
    a, b = launched(ctx, "lease-a"), launched(ctx, "lease-b")
    clock.advance(3600)
    open_lease(ctx, "lease-a")
    open_lease(ctx, "lease-b")
    gce.fail("delete", ProviderTransient("503"), target=b.provider_id)
    report = reap(ctx)
    assert [d.instance_id for d in report.done] == [a.instance_id]
    assert [(d.instance_id, why) for d, why in report.failed] == [(b.instance_id, "503")]
    assert_reaped(store, gce, a.instance_id, "max_runtime")
    assert record_of(store, b.instance_id).state is State.TERMINATING and gce.by_instance_id(b.instance_id)
    clock.advance(31)  # the next reap carries the stalled deletion on
    open_lease(ctx, "lease-b")
    assert reasons(reap(ctx)) == [("retry_delete", b.instance_id)]
    assert record_of(store, b.instance_id).state is State.TERMINATED and gce.by_instance_id(b.instance_id) is None


@pytest.mark.parametrize("failing", ["start", "end"])
def test_a_failed_transaction_of_the_deletions_leaves_nothing_orphaned(
        failing: str, ctx: Context, store: MemoryStore, gce: FakeProvider, clock: FakeClock) -> None:
    """The deletions' first transaction fails: nothing is deleted, every decision failed, the next reap does it.
    Their last one fails (a crash after the providers confirmed): the records stay TERMINATING, never ended
    before their deletion was confirmed, and the next reap's retry_delete ends them."""
    recs = [launched(ctx, f"lease-{i}") for i in range(3)]
    clock.advance(3600)
    for i in range(3):
        open_lease(ctx, f"lease-{i}")
    if failing == "start":
        store.fail("update_many", Transient("firestore: unavailable"))
    else:
        store.on("update_many", lambda: store.on("update_many", lambda: store.fail(
            "update_many", Transient("firestore: unavailable"))))  # the second call: the one that ends them
    report = reap(ctx)
    assert report.done == [] and len(report.failed) == 3
    left = {r.instance_id: record_of(store, r.instance_id).state for r in recs}
    if failing == "start":
        assert set(left.values()) == {State.RUNNING} and all(gce.by_instance_id(r.instance_id) for r in recs)
    else:
        assert set(left.values()) == {State.TERMINATING} and all(gce.by_instance_id(r.instance_id) is None
                                                                for r in recs)
        clock.advance(31)
    for i in range(3):
        open_lease(ctx, f"lease-{i}")
    again = reap(ctx)
    assert len(again.done) == 3 and again.failed == []
    assert all(record_of(store, r.instance_id).state is State.TERMINATED for r in recs) and gce.instances == {}


def test_an_orphan_whose_deletion_is_not_confirmed_is_a_failure(make_ctx: MakeCtx, store: MemoryStore,
                                                                gce: FakeProvider) -> None:
    ctx = make_ctx(confirm_delete_s=0.02)
    orphan = gce.plant("sl-a", deployment_id=DEP, age_s=3600)
    gce.never_delete = True
    report = reap(ctx)
    [(decision, why)] = report.failed
    assert decision.provider_id == orphan.provider_id and "has not confirmed" in why
    assert [e for e in store.audit_entries() if e["action"] == "reap"] == []


def test_an_orphan_decision_without_a_provider_id_is_refused(ctx: Context, gce: FakeProvider) -> None:
    with pytest.raises(Transient, match="orphan without a provider id"):
        _execute(ctx, Decision("orphan", "gce", "sl-a", None, None, "no record owns it"))
    assert gce.calls == []


# ------------------------------------------------------------------ blast radius
def test_the_mass_deletion_guard_refuses_and_force_overrides(make_ctx: MakeCtx, store: MemoryStore,
                                                             gce: FakeProvider) -> None:
    ctx = make_ctx(reap_max_deletions=2)
    planted = [gce.plant(f"sl-{i}", deployment_id=DEP, age_s=3600) for i in range(3)]
    report = reap(ctx)
    assert report.plan.blocked and report.done == [] and report.failed == []
    assert len(gce.instances) == 3 and gce.calls_of("delete") == []
    blocked = [e for e in store.audit_entries() if e["action"] == "reap_blocked"]
    assert [(e["reason"], e["count"]) for e in blocked] == [("mass_deletion_guard", 3)]
    decisions = [e for e in store.audit_entries() if e["action"] == "reap_decision"]
    assert len(decisions) == 3 and all(e["blocked"] for e in decisions)
    forced = reap(ctx, force=True)
    assert not forced.plan.blocked and len(forced.done) == 3 and gce.instances == {}
    assert sorted(gce.calls_of("delete")) == sorted(p.provider_id for p in planted)


@pytest.mark.parametrize("how", ["tick", "settings"])
def test_a_dry_run_decides_and_audits_but_deletes_nothing(how: str, make_ctx: MakeCtx, store: MemoryStore,
                                                          gce: FakeProvider, clock: FakeClock) -> None:
    ctx = make_ctx(reap_dry_run=how == "settings")
    rec = launched(ctx)
    gce.plant("sl-ghost", deployment_id=DEP, age_s=3600)
    clock.advance(181)
    open_lease(ctx)
    report = reap(ctx, dry_run=how == "tick")
    assert report.dry_run and reasons(report) == sorted([("heartbeat_lost", rec.instance_id), ("orphan", "sl-ghost")])
    assert report.done == [] and gce.calls_of("delete") == [] and len(gce.instances) == 2
    assert record_of(store, rec.instance_id).state is State.RUNNING
    decisions = [e for e in store.audit_entries() if e["action"] == "reap_decision"]
    assert len(decisions) == 2 and all(e["dry_run"] for e in decisions)
    assert [e for e in store.audit_entries() if e["action"] == "reap"] == []


# ------------------------------------------------------------------ what the reap reads and keeps
def test_leases_with_nothing_live_are_retired_but_a_fresh_release_is_kept_a_while(
        ctx: Context, store: MemoryStore, clock: FakeClock) -> None:
    def lease(lid: str, *, released: bool, renewed_ago: timedelta) -> None:
        store.put_lease(Lease(lease_id=lid, deployment_id=DEP, expires_at=clock.now - timedelta(seconds=1),
                              renewed_at=clock.now - renewed_ago, released=released))

    lease("l-expired", released=False, renewed_ago=timedelta(minutes=5))
    lease("l-released-now", released=True, renewed_ago=timedelta(minutes=5))
    lease("l-released-long-ago", released=True, renewed_ago=RELEASED_LEASE_HOLD + timedelta(seconds=1))
    reap(ctx)
    assert store.get_lease("l-expired") is None and store.get_lease("l-released-long-ago") is None
    assert store.get_lease("l-released-now") is not None  # a late renewal must not reopen it


def test_a_lease_renewed_between_the_read_and_its_retirement_is_kept(
        ctx: Context, store: MemoryStore, gce: FakeProvider, clock: FakeClock) -> None:
    """The reap reads an expired lease with nothing live; the agent's renewal is handled before the deletion:
    the deleting transaction re-reads the lease and keeps it, so the agent's next demand launches."""
    from tests.support.builders import demand

    from spotleash.services.launch import handle_demand

    open_lease(ctx)
    clock.advance(91)
    store.on("retire_lease_if", lambda: open_lease(ctx))
    report = reap(ctx)
    assert report.plan.decisions == ()
    lease = store.get_lease("lease-1")
    assert lease is not None and not lease.released and lease.expires_at > clock.now
    kept = [e for e in store.audit_entries() if e["action"] == "lease_saved"]
    assert [(e["reason"], e["lease_id"]) for e in kept] == [("lease_renewed", "lease-1")]
    assert "retirable on the read" in kept[0]["detail"] and "at the deletion" in kept[0]["detail"]
    assert handle_demand(ctx, demand("lease-1", event_id="ev-after")).state is State.RUNNING


def test_a_lease_still_expired_at_its_retirement_is_deleted_without_a_save(
        ctx: Context, store: MemoryStore, clock: FakeClock) -> None:
    open_lease(ctx)
    clock.advance(91)
    reap(ctx)
    assert store.get_lease("lease-1") is None
    assert not [e for e in store.audit_entries() if e["action"] == "lease_saved"]


def test_without_a_vast_key_only_gce_is_listed(make_ctx: MakeCtx, gce: FakeProvider,
                                               vast: FakeSshProvider) -> None:
    reap(make_ctx(vast_api_key=None))
    assert gce.calls_of("list_owned") == [DEP] and vast.calls == []


def test_the_report_counts_the_documents_read(ctx: Context, store: MemoryStore, clock: FakeClock) -> None:
    launched(ctx)
    clock.advance(181)
    open_lease(ctx)
    before = store.reads
    report = reap(ctx)
    assert report.reads == store.reads - before > 0


def test_expired_leases_are_read_together_and_reads_follow_what_is_due(
        ctx: Context, store: MemoryStore, clock: FakeClock) -> None:
    """Many released leases, each owning a live record: one batched read finds their records (no query per
    lease), every one is decided ``lease_expired``, and healthy records of open leases cost no read."""
    def reads_of_a_dry_run() -> int:
        return reap(ctx, dry_run=True).reads

    released = [f"lease-r{i:02d}" for i in range(13)]
    for lid in released:
        store.put_lease(Lease(lease_id=lid, deployment_id=DEP, expires_at=clock.now - timedelta(seconds=1),
                              renewed_at=clock.now - timedelta(minutes=2), released=True))
        put_record(ctx, f"sl-{lid}", lid, last_heartbeat=clock.now)
    asked: list[str] = []
    store.on("instances_of_lease", lambda: asked.append("instances_of_lease"))
    report = reap(ctx, dry_run=True)
    assert reasons(report) == [("lease_expired", f"sl-{lid}") for lid in released] and asked == []
    alone = reads_of_a_dry_run()
    open_lease(ctx, "lease-healthy", ttl_s=3600)
    for i in range(40):
        put_record(ctx, f"sl-healthy-{i:02d}", "lease-healthy", last_heartbeat=clock.now)
    assert reads_of_a_dry_run() == alone
