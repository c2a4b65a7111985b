"""reaper.decide_reaps: every reason exactly at its boundary, precedence, ownership, unknown listings, the guard.

All times are fixed: ``NOW`` is the reap's clock and every record is placed relative to it.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spotleash.config import ENV_PREFIX, Settings
from spotleash.decide.reap import (
    RELEASED_LEASE_HOLD,
    RETRY_DELETE_AFTER_S,
    Decision,
    ReapConfig,
    ReapPlan,
    candidate_cutoffs,
    decide_reaps,
    lease_retirable,
    recheck_lease,
)
from spotleash.model import LIVE, InstanceRecord, Lease, State
from spotleash.providers.base import (
    LABEL_DEPLOYMENT,
    LABEL_INSTANCE,
    LABEL_LEASE,
    LABEL_MANAGED,
    Inventory,
    ProviderInstance,
    ProviderStatus,
    ownership_labels,
)

NOW = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
DEP = "dep-a"
CFG = ReapConfig(DEP, heartbeat_timeout_s=180, provisioning_timeout_s=600, orphan_grace_s=300, max_deletions=20)
EPS = timedelta(microseconds=1)


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def rec(state: State = State.READY, iid: str = "sl-1", **kw: Any) -> InstanceRecord:
    """A healthy record in ``state``: fresh heartbeat, an hour left, provider id = instance id."""
    base: dict[str, Any] = {
        "instance_id": iid, "lease_id": "lease-1", "deployment_id": DEP, "event_id": "ev", "provider": "gce",
        "state": state, "created_at": ago(600), "updated_at": ago(10), "deadline": NOW + timedelta(hours=1),
        "provider_id": iid, "price_per_hour": 0.05,
    }
    if state in (State.RUNNING, State.READY):
        base |= {"running_at": ago(500), "last_heartbeat": ago(10)}
    return InstanceRecord(**{**base, **kw})


def pinst(iid: str | None = "sl-1", status: ProviderStatus = ProviderStatus.RUNNING, *, provider: str = "gce",
          deployment: str = DEP, owned: bool = True, created_at: datetime | None = None,
          native: str | None = None, pid: str | None = None) -> ProviderInstance:
    labels = ownership_labels(deployment, "lease-1", iid or "x") if owned else {"team": "ml", LABEL_DEPLOYMENT: deployment}
    if iid is None:
        labels.pop(LABEL_INSTANCE, None)
    elif not owned:
        labels[LABEL_INSTANCE] = iid  # looks like ours, but is not marked managed
    return ProviderInstance(provider, pid or iid or "anon", status, labels, created_at or ago(3600),
                            native_status=native)


def inv(*instances: ProviderInstance, provider: str = "gce", ok: bool = True) -> dict[str, Inventory]:
    return {provider: Inventory(provider, ok, instances, None if ok else "503 from the API")}


def lease(expires_in: float = 60, released: bool = False, lid: str = "lease-1") -> Lease:
    return Lease(lease_id=lid, deployment_id=DEP, expires_at=NOW + timedelta(seconds=expires_in), renewed_at=ago(30),
                 released=released)


def run(records: list[InstanceRecord], inventories: dict[str, Inventory] | None = None,
        leases: dict[str, Lease] | None = None, cfg: ReapConfig = CFG, **kw: Any) -> ReapPlan:
    if inventories is None:  # by default the provider lists every record's instance as running
        inventories = inv(*(pinst(r.instance_id) for r in records if r.provider == "gce"))
    return decide_reaps(records, leases or {}, inventories, NOW, cfg, **kw)


def reasons(plan: ReapPlan) -> list[str]:
    return [d.reason for d in plan.decisions]


def only(plan: ReapPlan) -> Decision:
    assert len(plan.decisions) == 1, plan.decisions
    return plan.decisions[0]


# --- healthy: nothing to do -----------------------------------------------------------------------


@pytest.mark.parametrize("state", [State.REQUESTED, State.PROVISIONING, State.RUNNING, State.READY,
                                   State.TERMINATING])
def test_a_healthy_record_is_left_alone(state: State) -> None:
    plan = run([rec(state)], leases={"lease-1": lease()})
    assert plan.decisions == () and not plan.blocked


def test_config_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(key)
    s = Settings(deployment_id="dep-x", reap_max_deletions=7, preemption_grace_s=12)
    assert ReapConfig.from_settings(s) == ReapConfig("dep-x", 180.0, 600.0, 300.0, 7, 30.0, 12.0)


# --- each reason at its boundary ------------------------------------------------------------------


@pytest.mark.parametrize("state", [State.REQUESTED, State.PROVISIONING, State.RUNNING, State.READY])
def test_budget_exceeded_stops_every_live_record(state: State) -> None:
    d = only(run([rec(state)], budget_exceeded=True))
    assert d.reason == "budget_exceeded" and d.instance_id == "sl-1" and d.provider_id == "sl-1"


@pytest.mark.parametrize("state", [State.REQUESTED, State.PROVISIONING, State.RUNNING, State.READY])
def test_max_runtime_at_the_deadline_and_not_before(state: State) -> None:
    assert run([rec(state, deadline=NOW + EPS)]).decisions == ()
    d = only(run([rec(state, deadline=NOW)]))
    assert d.reason == "max_runtime" and d.lease_id == "lease-1"


def test_lease_expired_at_expiry_and_not_before() -> None:
    assert run([rec()], leases={"lease-1": lease(expires_in=1e-6)}).decisions == ()
    d = only(run([rec()], leases={"lease-1": lease(expires_in=0)}))
    assert d.reason == "lease_expired" and "expired at" in d.detail


def test_lease_released_is_expired_at_once() -> None:
    d = only(run([rec()], leases={"lease-1": lease(expires_in=3600, released=True)}))
    assert d.reason == "lease_expired" and "released" in d.detail


def test_an_unknown_lease_or_another_lease_is_not_expiry() -> None:
    assert run([rec()], leases={}).decisions == ()
    assert run([rec()], leases={"lease-2": lease(expires_in=-100, lid="lease-2")}).decisions == ()


def test_the_recheck_finds_a_lease_still_expired_at_its_instant() -> None:
    check = recheck_lease(lease(expires_in=0), NOW)
    assert check.expired and "expired at" in check.detail
    released = recheck_lease(lease(expires_in=3600, released=True), NOW)
    assert released.expired and released.detail == "released"


def test_the_recheck_spares_a_lease_renewed_since_the_read() -> None:
    check = recheck_lease(lease(expires_in=1e-6), NOW)
    assert not check.expired and "renewed at" in check.detail


def test_the_recheck_of_a_gone_lease_lets_the_deletion_go_on() -> None:
    gone = recheck_lease(None, NOW)
    assert gone.expired and "gone" in gone.detail


@given(expires_in=st.floats(-1e5, 1e5), released=st.booleans())
def test_the_recheck_agrees_with_the_decision_rule(expires_in: float, released: bool) -> None:
    """Spared exactly when decide_reaps would not decide lease_expired at the same instant."""
    current = lease(expires_in=expires_in, released=released)
    decided = run([rec()], leases={"lease-1": current}).decisions
    assert recheck_lease(current, NOW).expired == any(d.reason == "lease_expired" for d in decided)


def test_a_lease_with_nothing_live_is_retirable_once_expired_or_released_long_enough() -> None:
    assert lease_retirable(lease(expires_in=0), NOW)
    assert not lease_retirable(lease(expires_in=1e-6), NOW)  # renewed: kept
    fresh = lease(expires_in=3600, released=True).model_copy(update={"renewed_at": NOW - RELEASED_LEASE_HOLD})
    assert not lease_retirable(fresh, NOW)  # a late renewal must find the release
    old = fresh.model_copy(update={"renewed_at": NOW - RELEASED_LEASE_HOLD - timedelta(microseconds=1)})
    assert lease_retirable(old, NOW)


@pytest.mark.parametrize("state", [State.REQUESTED, State.PROVISIONING])
def test_provisioning_timeout_strictly_after_the_timeout(state: State) -> None:
    assert run([rec(state, updated_at=ago(600))]).decisions == ()
    d = only(run([rec(state, updated_at=ago(600) - EPS)]))
    assert d.reason == "provisioning_timeout" and str(state) in d.detail


@pytest.mark.parametrize("state", [State.RUNNING, State.READY])
def test_running_records_never_time_out_provisioning(state: State) -> None:
    assert run([rec(state, updated_at=ago(10_000))]).decisions == ()


@pytest.mark.parametrize("state", [State.RUNNING, State.READY])
def test_heartbeat_lost_strictly_after_the_timeout(state: State) -> None:
    assert run([rec(state, last_heartbeat=ago(180))]).decisions == ()
    assert only(run([rec(state, last_heartbeat=ago(180) - EPS)])).reason == "heartbeat_lost"


def test_heartbeat_falls_back_to_running_at_then_updated_at() -> None:
    no_beat = {"last_heartbeat": None}
    assert run([rec(State.RUNNING, running_at=ago(180), **no_beat)]).decisions == ()
    assert only(run([rec(State.RUNNING, running_at=ago(181), **no_beat)])).reason == "heartbeat_lost"
    assert run([rec(State.RUNNING, running_at=None, updated_at=ago(180), **no_beat)]).decisions == ()
    assert only(run([rec(State.RUNNING, running_at=None, updated_at=ago(181), **no_beat)])).reason == "heartbeat_lost"


@pytest.mark.parametrize("state", [State.RUNNING, State.READY])
def test_vanished_when_an_ok_listing_lacks_it(state: State) -> None:
    d = only(run([rec(state)], inv()))
    assert d.reason == "vanished" and d.provider == "gce"


@pytest.mark.parametrize("state", [State.REQUESTED, State.PROVISIONING, State.TERMINATING])
def test_not_yet_running_or_terminating_records_do_not_vanish(state: State) -> None:
    assert run([rec(state)], inv()).decisions == ()


def test_a_failed_or_missing_listing_is_unknown_not_empty() -> None:
    assert run([rec()], inv(ok=False)).decisions == ()
    assert run([rec()], {}).decisions == ()  # the provider was not listed at all
    assert run([rec(provider="vast")], inv()).decisions == ()  # only gce was listed


@pytest.mark.parametrize("status", [ProviderStatus.STOPPED, ProviderStatus.TERMINATED])
def test_stopped_at_provider(status: ProviderStatus) -> None:
    d = only(run([rec()], inv(pinst(status=status, native="TERMINATED"))))
    assert d.reason == "stopped_at_provider" and "TERMINATED" in d.detail


@pytest.mark.parametrize("status", [ProviderStatus.RUNNING, ProviderStatus.PENDING, ProviderStatus.STOPPING,
                                    ProviderStatus.UNKNOWN])
def test_other_provider_states_are_not_stopped(status: ProviderStatus) -> None:
    assert run([rec()], inv(pinst(status=status))).decisions == ()


def test_a_failed_listing_contributes_no_facts_at_all() -> None:
    """Unknown is unknown: what a failed listing returned part-way drives no decision."""
    assert run([rec()], inv(pinst(status=ProviderStatus.STOPPED), ok=False)).decisions == ()


def test_an_unowned_copy_of_our_label_does_not_hide_a_vanished_instance() -> None:
    foreign = pinst(rec().instance_id, owned=False)
    assert only(run([rec()], inv(foreign))).reason == "vanished"


def test_retry_delete_strictly_after_its_delay() -> None:
    assert run([rec(State.TERMINATING, updated_at=ago(RETRY_DELETE_AFTER_S))]).decisions == ()
    d = only(run([rec(State.TERMINATING, updated_at=ago(RETRY_DELETE_AFTER_S) - EPS, reason="released")]))
    assert d.reason == "retry_delete" and "released" in d.detail


def test_a_fresh_delete_in_progress_is_left_to_its_owner() -> None:
    """TERMINATING within the retry delay: no budget, deadline, lease or vanished decision either."""
    r = rec(State.TERMINATING, updated_at=ago(5), deadline=ago(100))
    plan = run([r], inv(), leases={"lease-1": lease(released=True)}, budget_exceeded=True)
    assert plan.decisions == ()


def test_a_stalled_delete_is_retried_whatever_else_is_true() -> None:
    r = rec(State.TERMINATING, updated_at=ago(31), deadline=ago(100))
    plan = run([r], inv(), leases={"lease-1": lease(released=True)}, budget_exceeded=True)
    assert reasons(plan) == ["retry_delete"]


# --- precedence -----------------------------------------------------------------------------------


def test_precedence_order() -> None:
    """Peel the conditions off one by one: each time the next reason in the order takes over."""
    dead_lease = {"lease-1": lease(expires_in=-1)}
    everything = rec(State.RUNNING, deadline=ago(1), last_heartbeat=ago(10_000), running_at=ago(10_000))
    stopped = inv(pinst(status=ProviderStatus.STOPPED))
    assert reasons(run([everything], stopped, dead_lease, budget_exceeded=True)) == ["budget_exceeded"]
    assert reasons(run([everything], stopped, dead_lease)) == ["max_runtime"]
    alive = everything.model_copy(update={"deadline": NOW + timedelta(hours=1)})
    assert reasons(run([alive], stopped, dead_lease)) == ["lease_expired"]
    # The provider's own verdict beats our silence: an outbid box past the heartbeat timeout is still
    # stopped_at_provider, one deleted behind our back vanished; silence alone is heartbeat_lost.
    assert reasons(run([alive], stopped)) == ["stopped_at_provider"]
    assert reasons(run([alive], inv())) == ["vanished"]
    assert reasons(run([alive], inv(pinst()))) == ["heartbeat_lost"]
    beating = alive.model_copy(update={"last_heartbeat": ago(1)})
    assert reasons(run([beating], stopped)) == ["stopped_at_provider"]
    assert reasons(run([beating], inv())) == ["vanished"]
    assert reasons(run([beating], inv(pinst()))) == []


def test_provisioning_precedence() -> None:
    stuck = rec(State.PROVISIONING, updated_at=ago(10_000), deadline=ago(1))
    assert reasons(run([stuck], leases={"lease-1": lease(-1)})) == ["max_runtime"]
    stuck = stuck.model_copy(update={"deadline": NOW + timedelta(hours=1)})
    assert reasons(run([stuck], leases={"lease-1": lease(-1)})) == ["lease_expired"]
    assert reasons(run([stuck])) == ["provisioning_timeout"]


def test_one_decision_per_record() -> None:
    r = rec(State.RUNNING, deadline=ago(1), last_heartbeat=ago(10_000))
    plan = run([r], inv(pinst(status=ProviderStatus.STOPPED)), {"lease-1": lease(-1)}, budget_exceeded=True)
    assert len(plan.decisions) == 1


# --- ended records and other deployments ----------------------------------------------------------


@pytest.mark.parametrize("state", [State.TERMINATED, State.FAILED])
def test_ended_records_are_never_decided(state: State) -> None:
    r = rec(state, deadline=ago(100), updated_at=ago(100_000), ended_at=ago(100_000))
    plan = run([r], inv(), {"lease-1": lease(released=True)}, budget_exceeded=True)
    assert plan.decisions == ()


def test_records_of_another_deployment_are_ignored() -> None:
    theirs = rec(deployment_id="dep-b", deadline=ago(100))
    assert run([theirs], inv(), budget_exceeded=True).decisions == ()


# --- orphans --------------------------------------------------------------------------------------


def test_orphan_after_the_grace_and_not_a_second_before() -> None:
    assert run([], inv(pinst("sl-9", created_at=ago(300) + EPS))).decisions == ()
    d = only(run([], inv(pinst("sl-9", created_at=ago(300)))))
    assert (d.reason, d.provider, d.instance_id, d.provider_id, d.lease_id) == ("orphan", "gce", "sl-9", "sl-9",
                                                                                 "lease-1")
    assert "no record owns it" in d.detail


@pytest.mark.parametrize("state", [State.TERMINATED, State.FAILED])
def test_an_instance_outliving_its_ended_record_is_an_orphan(state: State) -> None:
    d = only(run([rec(state)], inv(pinst("sl-1"))))
    assert d.reason == "orphan" and f"record is {state}" in d.detail


def test_an_instance_of_a_live_record_is_not_an_orphan() -> None:
    assert run([rec(State.REQUESTED)], inv(pinst("sl-1", status=ProviderStatus.PENDING))).decisions == ()


def test_an_orphan_without_an_instance_label_is_named_by_provider_id() -> None:
    d = only(run([], inv(pinst(None, pid="vm-7"))))
    assert d.reason == "orphan" and d.instance_id is None and d.provider_id == "vm-7"


def test_an_orphan_of_unknown_age_counts_as_old() -> None:
    p = ProviderInstance("gce", "vm-x", ProviderStatus.RUNNING, ownership_labels(DEP, "l", "sl-x"), None)
    assert only(run([], inv(p))).reason == "orphan"


@pytest.mark.parametrize("native", [None, "DELETED"])
def test_an_instance_already_gone_is_not_an_orphan(native: str | None) -> None:
    assert run([], inv(pinst("sl-9", ProviderStatus.TERMINATED, native=native))).decisions == ()


def test_a_stopped_instance_is_still_an_orphan() -> None:
    """GCE's TERMINATED (a stopped VM) still bills for its disk."""
    assert only(run([], inv(pinst("sl-9", ProviderStatus.STOPPED, native="TERMINATED")))).reason == "orphan"
    assert only(run([], inv(pinst("sl-9", ProviderStatus.TERMINATED, native="exited")))).reason == "orphan"


@pytest.mark.parametrize(
    "p",
    [
        pinst("sl-9", owned=False),  # our instance label, but not marked managed
        pinst("sl-9", deployment="dep-b"),  # another deployment's
        ProviderInstance("gce", "vm-1", ProviderStatus.RUNNING, {}, ago(10**6)),  # no labels at all
        ProviderInstance("gce", "vm-2", ProviderStatus.RUNNING, {LABEL_MANAGED: "TRUE", LABEL_DEPLOYMENT: DEP},
                         ago(10**6)),  # almost our marker
        ProviderInstance("gce", "vm-3", ProviderStatus.RUNNING, {LABEL_MANAGED: "true"}, ago(10**6)),  # no deployment
    ],
)
def test_never_touch_what_is_not_ours(p: ProviderInstance) -> None:
    plan = run([], inv(p), budget_exceeded=True, force=True)
    assert plan.decisions == ()


def test_an_unowned_twin_does_not_hide_a_vanished_record_from_the_orphan_rule() -> None:
    """Another deployment's VM with the same instance label is never deleted as an orphan."""
    plan = run([rec(State.TERMINATED)], inv(pinst("sl-1", deployment="dep-b")))
    assert plan.decisions == ()


# --- unknown listings ---------------------------------------------------------------------------


def test_a_failed_listing_blocks_orphans_and_vanished_for_that_provider_only() -> None:
    records = [rec(iid="sl-g"), rec(iid="sl-v", provider="vast")]
    inventories = {
        "gce": Inventory("gce", False, (pinst("sl-orphan-g", pid="g-1"),), "deadline exceeded"),
        "vast": Inventory("vast", True, (pinst("sl-orphan-v", provider="vast", pid="v-1"),)),
    }
    plan = decide_reaps(records, {}, inventories, NOW, CFG)
    got = {(d.reason, d.provider, d.instance_id) for d in plan.decisions}
    assert got == {("vanished", "vast", "sl-v"), ("orphan", "vast", "sl-orphan-v")}
    assert any("gce" in n and "listing failed" in n and "deadline exceeded" in n for n in plan.notes)


# --- the mass-deletion guard ----------------------------------------------------------------------


def orphans(n: int) -> dict[str, Inventory]:
    return inv(*(pinst(f"sl-{i}") for i in range(n)))


def test_guard_allows_exactly_max_deletions() -> None:
    cfg = ReapConfig(DEP, 180, 600, 300, max_deletions=3)
    plan = run([], orphans(3), cfg=cfg)
    assert len(plan.decisions) == 3 and not plan.blocked
    assert not any("REFUSED" in n for n in plan.notes)


def test_guard_blocks_beyond_max_and_says_so() -> None:
    cfg = ReapConfig(DEP, 180, 600, 300, max_deletions=3)
    plan = run([], orphans(4), cfg=cfg)
    assert plan.blocked and len(plan.decisions) == 4  # the decisions are kept, for the audit
    assert any("REFUSED" in n and "4" in n and "force" in n for n in plan.notes)


def test_guard_counts_record_and_orphan_decisions_together() -> None:
    cfg = ReapConfig(DEP, 180, 600, 300, max_deletions=3)
    plan = run([rec(iid=f"sl-r{i}") for i in range(2)], orphans(2), cfg=cfg, budget_exceeded=True)
    assert plan.blocked and sorted(reasons(plan)) == ["budget_exceeded"] * 2 + ["orphan"] * 2


def test_force_passes_the_guard() -> None:
    cfg = ReapConfig(DEP, 180, 600, 300, max_deletions=3)
    plan = run([], orphans(50), cfg=cfg, force=True)
    assert not plan.blocked and len(plan.decisions) == 50


def test_candidate_cutoffs() -> None:
    cut = candidate_cutoffs(NOW, CFG)
    assert cut["heartbeat"] == ago(2 * CFG.heartbeat_interval_s)  # two missed beats: vanished is seen early
    assert candidate_cutoffs(NOW, ReapConfig(DEP, 50, 600, 300, 20, heartbeat_interval_s=30))["heartbeat"] == ago(50)
    assert cut["pending"] == ago(min(600, RETRY_DELETE_AFTER_S))


# --- property: invariants over random worlds ----------------------------------------------------

POOL = [f"sl-{i}" for i in range(8)]
# Seconds before NOW, clustered on the boundaries (30 s retry, 180 s heartbeat, 300 s grace, 600 s provisioning).
offsets = st.one_of(
    st.sampled_from([0.0, 1.0, 29.0, 30.0, 31.0, 179.0, 180.0, 181.0, 299.0, 300.0, 301.0, 599.0, 600.0, 601.0,
                     -1.0, -3600.0, 7200.0]),
    st.integers(-20_000, 20_000).map(float),
)
states = st.sampled_from(list(State))


@st.composite
def worlds(draw: st.DrawFn) -> dict[str, Any]:
    ids = draw(st.lists(st.sampled_from(POOL), unique=True, max_size=6))
    records = []
    for iid in ids:
        state = draw(states)
        started = state in (State.RUNNING, State.READY) or draw(st.booleans())
        records.append(InstanceRecord(
            instance_id=iid, lease_id=draw(st.sampled_from(["l1", "l2", "l3"])),
            deployment_id=draw(st.sampled_from([DEP, DEP, "dep-b"])), event_id="e",
            provider=draw(st.sampled_from(["gce", "vast"])), state=state, created_at=ago(draw(offsets)),
            updated_at=ago(draw(offsets)), deadline=NOW + timedelta(seconds=draw(offsets)),
            provider_id=f"p-{iid}", running_at=ago(draw(offsets)) if started else None,
            last_heartbeat=ago(draw(offsets)) if draw(st.integers(0, 3)) else None,
        ))
    leases = {lid: Lease(lease_id=lid, deployment_id=DEP, expires_at=NOW + timedelta(seconds=draw(offsets)),
                         renewed_at=ago(1), released=draw(st.booleans()))
              for lid in draw(st.lists(st.sampled_from(["l1", "l2", "l3"]), unique=True))}
    inventories = {}
    serial = 0
    for name in draw(st.sampled_from([["gce", "vast"], ["gce", "vast"], ["gce"], ["vast"], []])):
        instances = []
        for _ in range(draw(st.integers(0, 6))):
            serial += 1
            labels: dict[str, str] = {}
            if draw(st.booleans()):
                labels[LABEL_MANAGED] = draw(st.sampled_from(["true", "true", "false", "TRUE"]))
            if draw(st.booleans()):
                labels[LABEL_DEPLOYMENT] = draw(st.sampled_from([DEP, DEP, "dep-b"]))
            if draw(st.booleans()):
                labels[LABEL_INSTANCE] = draw(st.sampled_from(POOL))
            if draw(st.booleans()):
                labels[LABEL_LEASE] = "l1"
            instances.append(ProviderInstance(
                name, f"{name}-vm-{serial}", draw(st.sampled_from(list(ProviderStatus))), labels,
                draw(st.none() | offsets.map(ago)), native_status=draw(st.sampled_from([None, "DELETED", "X"])),
            ))
        for r in records:  # most records' instances are listed, as their own (or in a changed state)
            if r.provider == name and draw(st.integers(0, 3)):
                serial += 1
                status = draw(st.sampled_from([ProviderStatus.RUNNING] * 3 + list(ProviderStatus)))
                instances.append(ProviderInstance(name, r.provider_id or "", status,
                                                  ownership_labels(r.deployment_id, r.lease_id, r.instance_id),
                                                  r.created_at))
        inventories[name] = Inventory(name, draw(st.integers(0, 4)) > 0, tuple(instances))
    return {"records": records, "leases": leases, "inventories": inventories, "budget": draw(st.booleans()),
            "force": draw(st.booleans()), "max": draw(st.integers(1, 10))}


def ours(p: ProviderInstance) -> bool:
    return p.labels.get(LABEL_MANAGED) == "true" and p.labels.get(LABEL_DEPLOYMENT) == DEP


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_invariants(w: dict[str, Any]) -> None:
    cfg = ReapConfig(DEP, 180, 600, 300, w["max"])
    plan = decide_reaps(w["records"], w["leases"], w["inventories"], NOW, cfg, budget_exceeded=w["budget"],
                  force=w["force"])
    live = {r.instance_id: r for r in w["records"] if r.deployment_id == DEP and r.state in LIVE}
    owned_ok = {(p.provider, p.provider_id) for inv_ in w["inventories"].values() if inv_.ok
                for p in inv_.instances if ours(p)}

    record_decisions = [d for d in plan.decisions if d.reason != "orphan"]
    for d in plan.decisions:
        if d.reason == "orphan":  # only an owned instance of ours, from a listing that worked
            assert (d.provider, d.provider_id) in owned_ok, d
        else:  # only a live record of ours, and the instance its record names
            assert d.instance_id in live, d
            r = live[d.instance_id]
            assert (d.provider, d.provider_id, d.lease_id) == (r.provider, r.provider_id, r.lease_id)
    assert len({d.instance_id for d in record_decisions}) == len(record_decisions)  # one per record
    assert len(plan.decisions) <= len(live) + len(owned_ok)
    assert plan.blocked == (len(plan.decisions) > w["max"] and not w["force"])

    if not w["budget"]:
        listed = {p.instance_id: p for inv_ in w["inventories"].values() if inv_.ok
                  for p in inv_.instances if p.instance_id and ours(p)}
        for r in live.values():
            lease_ = w["leases"].get(r.lease_id)
            last = r.last_heartbeat or r.running_at or r.updated_at
            seen = listed.get(r.instance_id)
            healthy = (
                r.state in (State.RUNNING, State.READY)
                and NOW < r.deadline
                and (lease_ is None or not lease_.expired(NOW))
                and (NOW - last).total_seconds() <= 180
                and seen is not None and seen.status in (ProviderStatus.RUNNING, ProviderStatus.PENDING)
            )
            if healthy:
                assert r.instance_id not in {d.instance_id for d in record_decisions}, r


@st.composite
def healthy_records(draw: st.DrawFn) -> InstanceRecord:
    state = draw(st.sampled_from([State.REQUESTED, State.PROVISIONING, State.RUNNING, State.READY]))
    running = state in (State.RUNNING, State.READY)
    return InstanceRecord(
        instance_id="sl-healthy", lease_id="l-healthy", deployment_id=DEP, event_id="e",
        provider=draw(st.sampled_from(["gce", "vast"])), state=state, created_at=ago(draw(st.integers(0, 9000))),
        updated_at=ago(draw(st.floats(-60, 600))), deadline=NOW + timedelta(seconds=draw(st.floats(1e-3, 20_000))),
        provider_id="p-healthy", running_at=ago(draw(st.floats(-60, 9000))) if running else None,
        last_heartbeat=ago(draw(st.floats(-60, 180))) if running else None,
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds(), healthy_records(), st.booleans(), st.floats(1e-3, 3600))
def test_a_healthy_record_is_never_decided_in_any_world(
    w: dict[str, Any], r: InstanceRecord, with_lease: bool, lease_left_s: float
) -> None:
    """Fresh heartbeat (or young launch), before its deadline, lease alive, listed as running: never touched."""
    inventories = dict(w["inventories"])
    mine = ProviderInstance(r.provider, "p-healthy", ProviderStatus.RUNNING,
                            ownership_labels(DEP, r.lease_id, r.instance_id), r.created_at)
    old = inventories.get(r.provider, Inventory(r.provider, True))
    inventories[r.provider] = Inventory(r.provider, old.ok, (*old.instances, mine), old.error)
    leases = dict(w["leases"])
    if with_lease:
        leases[r.lease_id] = Lease(lease_id=r.lease_id, deployment_id=DEP, renewed_at=ago(1),
                                   expires_at=NOW + timedelta(seconds=lease_left_s))
    plan = decide_reaps([*w["records"], r], leases, inventories, NOW, ReapConfig(DEP, 180, 600, 300, w["max"]),
                  force=w["force"])
    assert "sl-healthy" not in {d.instance_id for d in plan.decisions}
    assert "p-healthy" not in {d.provider_id for d in plan.decisions}


# --- preempted: replaced at the notice, alive for its grace only ---------------------------------------------
def test_a_preempted_instance_within_its_grace_is_left_alone() -> None:
    assert run([rec(preempted=True, preempted_at=ago(29))]).decisions == ()


@pytest.mark.parametrize(("preempted_s", "listed", "why"), [
    (30, ProviderStatus.RUNNING, "its grace of 30s is over"),
    (5, None, "the provider took it"),
    (5, ProviderStatus.TERMINATED, "the provider took it"),
])
def test_a_preempted_instance_ends_as_preempted(preempted_s: float, listed: ProviderStatus | None, why: str) -> None:
    r = rec(preempted=True, preempted_at=ago(preempted_s))
    d = only(run([r], inv(pinst(r.instance_id, listed)) if listed else inv()))
    assert d.reason == "preempted" and why in d.detail


def test_a_preempted_instance_silent_past_the_timeout_ends_as_preempted_even_with_a_long_grace() -> None:
    cfg = ReapConfig(DEP, heartbeat_timeout_s=180, provisioning_timeout_s=600, orphan_grace_s=300, max_deletions=20,
                     preemption_grace_s=300)
    assert only(run([rec(preempted=True, preempted_at=ago(200), last_heartbeat=ago(190))], cfg=cfg)).reason \
        == "preempted"
