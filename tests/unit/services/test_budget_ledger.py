"""The budget guard reads the cost ledger and the price book (in-process, fixed clock, figures by hand)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from tests.support.builders import MakeCtx, demand, open_lease, put_record, record_of
from tests.support.clock import FakeClock
from tests.support.memory_store import MemoryStore

from spotleash.decide.ledger import month_to_date
from spotleash.decide.policy import SPOT_PRICE, LaunchPlan, plan_launch
from spotleash.model import State
from spotleash.pricing.book import PriceBook
from spotleash.pricing.sheet import FamilyRate, PriceSheet
from spotleash.services.context import Context
from spotleash.services.launch import gather_facts, handle_demand


def book(store: MemoryStore, clock: FakeClock, region: str = "europe-west4") -> PriceBook:
    sheet = PriceSheet(source="catalog", fetched_at=clock.now,
                       rates={region: {"e2": FamilyRate(core=0.0075, ram=0.001)}})
    return PriceBook(store, lambda now: sheet.model_copy(update={"fetched_at": now}), clock)


def test_a_launch_is_priced_with_the_catalog_in_the_region_of_its_zones(make_ctx: MakeCtx, clock: FakeClock,
                                                                      store: MemoryStore) -> None:
    ctx = make_ctx(zones=["europe-west4-a", "europe-west4-b"])
    ctx.prices = book(store, clock)
    open_lease(ctx)
    plan = plan_launch(demand(ram_gb=8.0), gather_facts(ctx, "lease-1", clock.now), ctx.settings, clock.now)
    # e2-highmem-4 (the configured floor): 4 x 0.0075 + 32 x 0.001 = 0.062 $/h, not the us-central1 table's 0.0528
    assert isinstance(plan, LaunchPlan) and plan.machine == "e2-highmem-4"
    assert plan.price_cap == pytest.approx(0.062)
    cached = store.cached_price("e2-highmem-4", "europe-west4")  # what the next launch, anywhere, reads
    assert cached is not None and cached.usd_per_hour == pytest.approx(0.062) and cached.fetched_at == clock.now


def test_without_a_price_book_the_builtin_table_prices_the_launch(ctx: Context, clock: FakeClock) -> None:
    assert ctx.prices is None
    open_lease(ctx)
    plan = plan_launch(demand(ram_gb=8.0), gather_facts(ctx, "lease-1", clock.now), ctx.settings, clock.now)
    assert isinstance(plan, LaunchPlan) and plan.price_cap == SPOT_PRICE["e2-highmem-4"]


def test_the_guard_counts_the_ledger_month_to_date_and_refuses_past_the_budget(
        make_ctx: MakeCtx, store: MemoryStore, clock: FakeClock) -> None:
    clock.now = datetime(2026, 11, 2, 1, 0, tzinfo=UTC)
    ctx = make_ctx(monthly_budget_usd=1.0, max_runtime_s=3600, max_instances_per_lease=5)
    open_lease(ctx)
    open_lease(ctx, "lease-old")
    # Started on Oct 31 at 22:00 and still running: only November counts, Nov 1 00:00 -> now = 25 h x 0.02 = 0.50
    put_record(ctx, "sl-old", "lease-old", State.READY, age_s=27 * 3600, price_per_hour=0.02,
               running_at=clock.now - timedelta(hours=27), deadline=clock.now + timedelta(hours=1))
    # A VAST box that ran Nov 1 10:00-11:00 and was stopped an hour before deletion: gpu 1 h x 0.18 + storage 2 h x 0.02
    put_record(ctx, "sl-vast", "lease-old", State.TERMINATED, provider="vast", age_s=20 * 3600, price_per_hour=0.20,
               storage_per_hour=0.02, running_at=datetime(2026, 11, 1, 10, tzinfo=UTC),
               stopped_at=datetime(2026, 11, 1, 11, tzinfo=UTC), ended_at=datetime(2026, 11, 1, 12, tzinfo=UTC))
    facts = gather_facts(ctx, "lease-1", clock.now)
    assert facts.month_spend == pytest.approx(0.50 + 0.18 + 0.04)
    assert facts.month_spend == pytest.approx(month_to_date(store.billed_since(datetime(2026, 11, 1, tzinfo=UTC)),
                                                            clock.now).total)
    assert facts.month_committed == pytest.approx(0.02)  # sl-old: 1 h left at 0.02
    # This launch's worst case: 1 h of e2-highmem-4 at 0.0528 -> 0.72 + 0.02 + 0.0528 = 0.7928 <= 1.0: launched
    assert handle_demand(ctx, demand(event_id="ev-a")).state is State.RUNNING
    # Next launch, same instant, another lease: spend 0.72 + the new VM's first minute (60 s x 0.0528/3600 =
    # 0.00088); committed 0.02 + 1 h x 0.0528; this one's worst case 0.0528: 0.84648 > 0.78 -> refused
    open_lease(ctx, "lease-2")
    tight = make_ctx(monthly_budget_usd=0.78, max_runtime_s=3600, max_instances_per_lease=5)
    out = handle_demand(tight, demand("lease-2", event_id="ev-b"))
    assert out.state is State.FAILED and out.reason == "budget_exceeded"
    why = record_of(store, out.instance_id).reason or ""
    assert "month-to-date $0.72 + committed $0.07 + this launch's worst case $0.05" in why
