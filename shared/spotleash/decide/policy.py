"""Launch policy: a pure function deciding whether and what to launch for a demand.

No I/O: the launcher gathers the facts (live instances, month-to-date spend, last launch) and
this module decides. Refusals carry a reason the audit log and the user can read.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from spotleash.config import Settings
from spotleash.model import InstanceRecord
from spotleash.providers import ProviderName, provider_for, provider_info
from spotleash.wire.events import DemandEvent

# e2-highmem: 8 GB per vCPU. Spot prices (us-central1, USD/h) as published; the cap, not a bill.
HIGHMEM = (("e2-highmem-2", 16, 0.0264), ("e2-highmem-4", 32, 0.0528), ("e2-highmem-8", 64, 0.1056),
           ("e2-highmem-16", 128, 0.2112))
SPOT_PRICE = {name: price for name, _, price in HIGHMEM}
DEFAULT_SPOT_PRICE = 0.0528


@dataclass(frozen=True)
class LaunchPlan:
    provider: ProviderName
    machine: str
    price_cap: float  # worst-case $/h used by the budget guard
    max_run_s: int


@dataclass(frozen=True)
class Refusal:
    reason: str  # short code: budget_exceeded, lease_limit, global_limit, cooldown, lease_released, lease_expired
    detail: str


@dataclass(frozen=True)
class LaunchFacts:
    lease_live: list[InstanceRecord]
    total_live: int
    month_spend: float  # this month's spend so far: spotleash.decide.ledger's total, month to date
    month_committed: float  # worst-case remaining cost of the live instances (spotleash.decide.ledger.committed)
    budget_alert_exceeded: bool
    lease_released: bool
    lease_expired: bool = False
    # USD/h of a Spot machine type where we launch (the Billing Catalog's, via spotleash.pricing);
    # None: the built-in us-central1 table below
    spot_price: Callable[[str], float] | None = None


def machine_for(ram_gb: float, configured: str) -> str:
    """Smallest e2-highmem that holds ``ram_gb`` with headroom, never smaller than configured.

    A configured type outside the e2-highmem table is used as is: we cannot size it, and silently
    swapping the operator's choice for an e2 would be worse.
    """
    floor = next((gb for name, gb, _ in HIGHMEM if name == configured), None)
    if floor is None:
        return configured
    need = math.ceil(ram_gb * 1.25)
    for name, gb, _ in HIGHMEM:
        if gb >= need and gb >= floor:
            return name
    return HIGHMEM[-1][0]


def choose_provider(event: DemandEvent) -> ProviderName:
    if event.provider is not None:
        return event.provider
    return provider_for(gpu=event.needs_gpu)


def plan_launch(event: DemandEvent, facts: LaunchFacts, settings: Settings, now: datetime) -> LaunchPlan | Refusal:
    if facts.lease_released:
        return Refusal("lease_released", f"lease {event.lease_id} was released; a new agent must renew it first")
    if facts.lease_expired:
        return Refusal("lease_expired", f"lease {event.lease_id} expired: its agent is gone")
    if len(facts.lease_live) >= settings.max_instances_per_lease:
        return Refusal("lease_limit", f"lease {event.lease_id} already has {len(facts.lease_live)} live "
                       f"instance(s); limit is {settings.max_instances_per_lease}")
    if facts.total_live >= settings.max_instances_total:
        return Refusal("global_limit", f"{facts.total_live} live instances; limit is {settings.max_instances_total}")
    recent = [r for r in facts.lease_live if (now - r.created_at).total_seconds() < settings.demand_cooldown_s]
    if recent and event.trigger != "failover":  # a replacement for a preempted instance skips the cooldown
        return Refusal("cooldown", f"instance {recent[0].instance_id} was launched for this lease "
                       f"less than {settings.demand_cooldown_s:.0f}s ago")
    provider = choose_provider(event)
    if provider_info(provider).gpu:  # a GPU box: priced at the most we pay for one
        machine, price = "gpu", settings.gpu_max_dph
    else:  # a VM sized to the demand, priced at its Spot price
        machine = machine_for(event.ram_gb, settings.machine_type)
        price = facts.spot_price(machine) if facts.spot_price else SPOT_PRICE.get(machine, DEFAULT_SPOT_PRICE)
    worst = price * settings.max_runtime_s / 3600
    if facts.budget_alert_exceeded:
        return Refusal("budget_exceeded", "the billing budget alert says the monthly budget is spent")
    projected = facts.month_spend + facts.month_committed + worst
    if projected > settings.monthly_budget_usd:
        return Refusal("budget_exceeded", f"month-to-date ${facts.month_spend:.2f} + committed "
                       f"${facts.month_committed:.2f} + this launch's worst case ${worst:.2f} would pass the "
                       f"${settings.monthly_budget_usd:.2f} budget")
    return LaunchPlan(provider, machine, price, settings.max_runtime_s)
