"""Launch policy: every refusal, its order, provider choice and machine sizing."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from spotleash.config import ENV_PREFIX, Settings
from spotleash.decide.policy import (
    DEFAULT_SPOT_PRICE,
    HIGHMEM,
    SPOT_PRICE,
    LaunchFacts,
    LaunchPlan,
    Refusal,
    choose_provider,
    machine_for,
    plan_launch,
)
from spotleash.model import InstanceRecord, State, new_record
from spotleash.wire.events import Component, DemandEvent

NOW = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(key)


def cfg(**kw: Any) -> Settings:
    base: dict[str, Any] = {"max_instances_per_lease": 2, "max_instances_total": 5, "demand_cooldown_s": 120,
                            "monthly_budget_usd": 50.0, "max_runtime_s": 3 * 3600, "gpu_max_dph": 1.0}
    return Settings(**{**base, **kw})


def demand(trigger: str = "threshold", ram: float = 8.0, gpu: bool = False, provider: str | None = None) -> DemandEvent:
    return DemandEvent(lease_id="lease-1", trigger=trigger, ram_percent=90, provider=provider,  # type: ignore[arg-type]
                       components=[Component(name="vision", ram_gb=ram, gpu=gpu)])


def live(age_s: float, iid: str = "sl-old") -> InstanceRecord:
    r = new_record(instance_id=iid, lease_id="lease-1", deployment_id="default", event_id="e", provider="gce",
                   now=NOW - timedelta(seconds=age_s), max_runtime_s=3 * 3600)
    return r.model_copy(update={"state": State.RUNNING})


def facts(**kw: Any) -> LaunchFacts:
    base: dict[str, Any] = {"lease_live": [], "total_live": 0, "month_spend": 0.0, "month_committed": 0.0,
                            "budget_alert_exceeded": False, "lease_released": False}
    return LaunchFacts(**{**base, **kw})


def refused(out: LaunchPlan | Refusal, reason: str) -> Refusal:
    assert isinstance(out, Refusal), out
    assert out.reason == reason, out
    assert out.detail
    return out


def test_a_plain_demand_gets_a_gce_plan() -> None:
    out = plan_launch(demand(), facts(), cfg(), NOW)
    assert out == LaunchPlan("gce", "e2-highmem-4", SPOT_PRICE["e2-highmem-4"], 3 * 3600)


def test_lease_released() -> None:
    out = refused(plan_launch(demand(), facts(lease_released=True), cfg(), NOW), "lease_released")
    assert "lease-1" in out.detail


@pytest.mark.parametrize(("n", "ok"), [(0, True), (1, True), (2, False), (3, False)])
def test_lease_limit(n: int, ok: bool) -> None:
    recs = [live(3600, f"sl-{i}") for i in range(n)]
    out = plan_launch(demand(), facts(lease_live=recs, total_live=n), cfg(), NOW)
    if ok:
        assert isinstance(out, LaunchPlan)
    else:
        assert "limit is 2" in refused(out, "lease_limit").detail


def test_lease_limit_applies_to_failover_too() -> None:
    recs = [live(3600, f"sl-{i}") for i in range(2)]
    refused(plan_launch(demand("failover"), facts(lease_live=recs, total_live=2), cfg(), NOW), "lease_limit")


@pytest.mark.parametrize(("total", "ok"), [(4, True), (5, False), (9, False)])
def test_global_limit(total: int, ok: bool) -> None:
    out = plan_launch(demand(), facts(total_live=total), cfg(), NOW)
    if ok:
        assert isinstance(out, LaunchPlan)
    else:
        assert "limit is 5" in refused(out, "global_limit").detail


@pytest.mark.parametrize(("age_s", "ok"), [(0, False), (119.999, False), (120, True), (500, True)])
def test_cooldown_boundary(age_s: float, ok: bool) -> None:
    out = plan_launch(demand(), facts(lease_live=[live(age_s)], total_live=1), cfg(), NOW)
    if ok:
        assert isinstance(out, LaunchPlan)
    else:
        assert "sl-old" in refused(out, "cooldown").detail


@pytest.mark.parametrize("trigger", ["threshold", "predictive", "manual"])
def test_every_trigger_but_failover_respects_the_cooldown(trigger: str) -> None:
    refused(plan_launch(demand(trigger), facts(lease_live=[live(5)], total_live=1), cfg(), NOW), "cooldown")


def test_failover_skips_the_cooldown() -> None:
    out = plan_launch(demand("failover"), facts(lease_live=[live(5)], total_live=1), cfg(), NOW)
    assert isinstance(out, LaunchPlan)


def test_zero_cooldown_never_refuses() -> None:
    assert isinstance(plan_launch(demand(), facts(lease_live=[live(0)], total_live=1), cfg(demand_cooldown_s=0),
                                  NOW), LaunchPlan)


def test_budget_alert_refuses_even_a_failover() -> None:
    out = refused(plan_launch(demand("failover"), facts(budget_alert_exceeded=True), cfg(), NOW), "budget_exceeded")
    assert "alert" in out.detail


def test_budget_projection_boundary() -> None:
    worst = SPOT_PRICE["e2-highmem-4"] * 3  # 3 h of the default machine
    s = cfg(monthly_budget_usd=10.0)
    at_limit = facts(month_spend=6.0, month_committed=4.0 - worst)
    assert isinstance(plan_launch(demand(), at_limit, s, NOW), LaunchPlan)  # exactly the budget is allowed
    over = facts(month_spend=6.0, month_committed=4.0 - worst + 0.01)
    out = refused(plan_launch(demand(), over, s, NOW), "budget_exceeded")
    assert "$6.00" in out.detail and "$10.00" in out.detail


def test_budget_counts_the_gpu_price_cap() -> None:
    s = cfg(monthly_budget_usd=10.0, gpu_max_dph=2.0)  # 3 h x $2 = $6 worst case
    assert isinstance(plan_launch(demand(gpu=True), facts(month_spend=4.0), s, NOW), LaunchPlan)
    refused(plan_launch(demand(gpu=True), facts(month_spend=4.01), s, NOW), "budget_exceeded")
    assert isinstance(plan_launch(demand(), facts(month_spend=4.01), s, NOW), LaunchPlan)  # the cheap CPU box fits


def test_budget_uses_the_max_runtime() -> None:
    s = cfg(monthly_budget_usd=1.0, max_runtime_s=3600, gpu_max_dph=0.9)
    plan = plan_launch(demand(gpu=True), facts(), s, NOW)
    assert plan == LaunchPlan("vast", "gpu", 0.9, 3600)
    refused(plan_launch(demand(gpu=True), facts(), cfg(monthly_budget_usd=1.0, max_runtime_s=7200,
                                                            gpu_max_dph=0.9), NOW), "budget_exceeded")


def test_refusal_order() -> None:
    """Released beats limits beats cooldown beats budget: the first true reason is the one reported."""
    recs = [live(1, "sl-a"), live(1, "sl-b")]
    every = facts(lease_live=recs, total_live=9, lease_released=True, budget_alert_exceeded=True)
    refused(plan_launch(demand(), every, cfg(), NOW), "lease_released")
    refused(plan_launch(demand(), facts(lease_live=recs, total_live=9, budget_alert_exceeded=True), cfg(), NOW),
            "lease_limit")
    refused(plan_launch(demand(), facts(lease_live=recs[:1], total_live=9, budget_alert_exceeded=True), cfg(), NOW),
            "global_limit")
    refused(plan_launch(demand(), facts(lease_live=recs[:1], total_live=1, budget_alert_exceeded=True), cfg(), NOW),
            "cooldown")
    refused(plan_launch(demand("failover"), facts(lease_live=recs[:1], total_live=1, budget_alert_exceeded=True),
                        cfg(), NOW), "budget_exceeded")


# --- provider choice -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gpu", "provider", "expected"),
    [(False, None, "gce"), (True, None, "vast"), (False, "vast", "vast"), (True, "gce", "gce"), (False, "gce", "gce")],
)
def test_choose_provider(gpu: bool, provider: str | None, expected: str) -> None:
    ev = demand(gpu=gpu, provider=provider)
    assert choose_provider(ev) == expected
    plan = plan_launch(ev, facts(), cfg(), NOW)
    assert isinstance(plan, LaunchPlan) and plan.provider == expected
    assert (plan.machine == "gpu") is (expected == "vast")


def test_one_gpu_component_among_many_makes_it_vast() -> None:
    ev = DemandEvent(lease_id="l", trigger="manual", ram_percent=90,
                     components=[Component(name="a"), Component(name="b", gpu=True), Component(name="c")])
    assert choose_provider(ev) == "vast"


# --- machine sizing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ram_gb", "expected"),
    [
        (0.5, "e2-highmem-2"), (12.8, "e2-highmem-2"), (12.81, "e2-highmem-4"),  # 12.8 x 1.25 = 16
        (25.6, "e2-highmem-4"), (25.61, "e2-highmem-8"),
        (51.2, "e2-highmem-8"), (51.21, "e2-highmem-16"),
        (102.4, "e2-highmem-16"),
    ],
)
def test_machine_for_headroom_boundaries(ram_gb: float, expected: str) -> None:
    assert machine_for(ram_gb, "e2-highmem-2") == expected


def test_machine_for_never_below_the_configured_floor() -> None:
    assert machine_for(1, "e2-highmem-4") == "e2-highmem-4"
    assert machine_for(1, "e2-highmem-8") == "e2-highmem-8"
    assert machine_for(30, "e2-highmem-4") == "e2-highmem-8"  # grows past the floor when the demand needs it


def test_machine_for_caps_at_the_largest() -> None:
    assert machine_for(500, "e2-highmem-2") == HIGHMEM[-1][0]


def test_machine_for_keeps_an_unknown_configured_type() -> None:
    """An operator's n2 choice is not silently replaced by an e2; it is priced at the default cap."""
    assert machine_for(4, "n2-highmem-8") == "n2-highmem-8"
    plan = plan_launch(demand(ram=4), facts(), cfg(machine_type="n2-highmem-8"), NOW)
    assert plan == LaunchPlan("gce", "n2-highmem-8", DEFAULT_SPOT_PRICE, 3 * 3600)


def test_machine_sizing_sums_the_components() -> None:
    ev = DemandEvent(lease_id="l", trigger="manual", ram_percent=90,
                     components=[Component(name="a", ram_gb=20), Component(name="b", ram_gb=20)])
    plan = plan_launch(ev, facts(), cfg(), NOW)
    assert isinstance(plan, LaunchPlan) and plan.machine == "e2-highmem-8"  # 40 GB x 1.25 = 50 > 32
    assert plan.price_cap == SPOT_PRICE["e2-highmem-8"]


def test_prices_grow_with_size() -> None:
    sizes = [gb for _, gb, _ in HIGHMEM]
    prices = [p for _, _, p in HIGHMEM]
    assert sizes == sorted(sizes) and prices == sorted(prices)


def test_an_expired_lease_refuses_the_launch() -> None:
    from datetime import UTC, datetime

    from spotleash.config import load_settings
    from spotleash.decide.policy import LaunchFacts, Refusal, plan_launch
    from spotleash.wire.events import Component, DemandEvent

    event = DemandEvent(lease_id="l1", trigger="threshold", ram_percent=90, components=[Component(name="vision")])
    facts = LaunchFacts(lease_live=[], total_live=0, month_spend=0.0, month_committed=0.0,
                        budget_alert_exceeded=False, lease_released=False, lease_expired=True)
    decision = plan_launch(event, facts, load_settings(), datetime.now(UTC))
    assert isinstance(decision, Refusal) and decision.reason == "lease_expired"
