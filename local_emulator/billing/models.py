"""The Billing Catalog fake's state and rules: public services and Compute Engine SKUs, paged like the API.

The SKUs look like the real catalog's: descriptions such as ``Spot Preemptible E2 Instance Core running
in Americas``, categories (``Compute`` / ``CPU`` | ``RAM`` / ``Preemptible`` | ``OnDemand`` | ``Commit1Yr``),
service regions, and pricing expressions whose unit prices are ``google.type.Money`` (units + nanos).
Next to the Spot E2/N2 core and RAM SKUs that spotleash prices machines with, the catalog holds what
a naive match would take by mistake: on-demand and committed-use rates, custom and sole-tenant
machines, Spot GPUs, tiered network egress, and other services.

Rules kept from the real API: ``parent`` must name a known service (``services/ID``), page sizes
above 5000 are capped, a page token is only valid for the listing it came from, prices are in USD
unless asked otherwise (this fake serves USD only and says so), and historical prices
(``start_time``/``end_time``) are not served: such calls fail loudly instead of answering wrongly.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
from google.cloud import billing_v1
from google.type import money_pb2

from local_emulator.billing.errors import CatalogFault, invalid, not_found, unimplemented
from local_emulator.faults import FaultError, FaultPlan, grpc_code_name

MAX_PAGE_SIZE = 5000  # the real API's cap (and its default)
COMPUTE_ID = "6F81-5844-456A"  # Compute Engine's real service id
SERVICES = (  # (service id, display name): real ids of a few public services
    ("152E-C115-5142", "Cloud Run"),
    ("24E6-581D-38E5", "BigQuery"),
    ("6F81-5844-456A", "Compute Engine"),
    ("95FF-2EF5-5EA1", "Cloud Storage"),
    ("A1E8-BE35-7EBC", "Cloud Pub/Sub"),
    ("E505-1604-58F8", "Networking"),
)

# Where a SKU runs: the name its description uses -> the regions it serves.
LOCATIONS: dict[str, tuple[str, ...]] = {
    "Americas": ("us-central1", "us-east1", "us-west1"),
    "Virginia": ("us-east4",),
    "Sao Paulo": ("southamerica-east1",),
    "Belgium": ("europe-west1",),
    "Netherlands": ("europe-west4",),
    "Frankfurt": ("europe-west3",),
    "Japan": ("asia-northeast1",),
    "Singapore": ("asia-southeast1",),
}
# Spot prices move by region independently of list prices: one factor per location (Americas = 1).
SPOT_FACTOR = {"Americas": 1.0, "Virginia": 1.126, "Sao Paulo": 1.588, "Belgium": 1.099, "Netherlands": 1.094,
               "Frankfurt": 1.201, "Japan": 1.284, "Singapore": 1.233}
LIST_FACTOR = {"Americas": 1.0, "Virginia": 1.126, "Sao Paulo": 1.587, "Belgium": 1.1, "Netherlands": 1.098,
               "Frankfurt": 1.2, "Japan": 1.28, "Singapore": 1.232}
# USD per vCPU hour and per GiB hour in the Americas.
SPOT = {("E2", "Core"): 0.006543, ("E2", "Ram"): 0.000877, ("N2", "Core"): 0.007673, ("N2", "Ram"): 0.001029}
ON_DEMAND = {("E2", "Core"): 0.021811, ("E2", "Ram"): 0.002923, ("N2", "Core"): 0.031611, ("N2", "Ram"): 0.004237}
COMMIT_1Y = {("E2", "Core"): 0.013741, ("E2", "Ram"): 0.001842}
GPU_SPOT = {"Nvidia Tesla T4": 0.14, "Nvidia L4": 0.2240}


def _sku_id(description: str) -> str:
    h = hashlib.sha1(description.encode()).hexdigest().upper()
    return f"{h[0:4]}-{h[4:8]}-{h[8:12]}"


def _money(usd: float) -> money_pb2.Money:
    nanos_total = round(usd * 1e9)
    return money_pb2.Money(currency_code="USD", units=nanos_total // 1_000_000_000, nanos=nanos_total % 1_000_000_000)


@dataclass
class SkuSpec:
    """One SKU as plain data (what ``SetPrice`` edits); ``to_proto`` renders it for the wire."""

    description: str
    resource_family: str
    resource_group: str
    usage_type: str
    regions: tuple[str, ...]
    usage_unit: str  # "h", "GiBy.h", "GiBy"
    tiers: list[tuple[float, float]]  # (start usage amount, USD per usage unit)
    service_id: str = COMPUTE_ID
    service_name: str = "Compute Engine"

    @property
    def sku_id(self) -> str:
        return _sku_id(self.description)

    def to_proto(self, effective: datetime) -> billing_v1.Sku:
        unit_desc, base, base_desc, factor = {
            "h": ("hour", "s", "second", 3600.0),
            "GiBy.h": ("gibibyte hour", "By.s", "byte second", 3865470566400.0),
            "GiBy": ("gibibyte", "By", "byte", 1073741824.0),
            "GiBy.mo": ("gibibyte month", "By.s", "byte second", 2.8759101014016e15),
        }[self.usage_unit]
        expr = billing_v1.PricingExpression(
            usage_unit=self.usage_unit, usage_unit_description=unit_desc, base_unit=base,
            base_unit_description=base_desc, base_unit_conversion_factor=factor, display_quantity=1,
            tiered_rates=[billing_v1.PricingExpression.TierRate(start_usage_amount=start, unit_price=_money(usd))
                          for start, usd in self.tiers],
        )
        geo = billing_v1.GeoTaxonomy(
            type_=billing_v1.GeoTaxonomy.Type.MULTI_REGIONAL if len(self.regions) > 1
            else billing_v1.GeoTaxonomy.Type.REGIONAL if self.regions else billing_v1.GeoTaxonomy.Type.GLOBAL,
            regions=list(self.regions),
        )
        return billing_v1.Sku(
            name=f"services/{self.service_id}/skus/{self.sku_id}", sku_id=self.sku_id, description=self.description,
            category=billing_v1.Category(service_display_name=self.service_name, resource_family=self.resource_family,
                                         resource_group=self.resource_group, usage_type=self.usage_type),
            service_regions=list(self.regions), service_provider_name="Google", geo_taxonomy=geo,
            pricing_info=[billing_v1.PricingInfo(
                effective_time=effective, summary="", pricing_expression=expr, currency_conversion_rate=1.0,
                aggregation_info=billing_v1.AggregationInfo(
                    aggregation_level=billing_v1.AggregationInfo.AggregationLevel.ACCOUNT,
                    aggregation_interval=billing_v1.AggregationInfo.AggregationInterval.MONTHLY,
                    aggregation_count=1),
            )],
        )


def build_catalog() -> list[SkuSpec]:
    """Every SKU the fake serves, in a stable order (the real API's order is by SKU id too)."""
    skus: list[SkuSpec] = []
    unit = {"Core": "h", "Ram": "GiBy.h"}
    group = {"Core": "CPU", "Ram": "RAM"}
    for loc, regions in LOCATIONS.items():
        s, lp = SPOT_FACTOR[loc], LIST_FACTOR[loc]
        for (fam, kind), usd in SPOT.items():
            skus.append(SkuSpec(f"Spot Preemptible {fam} Instance {kind} running in {loc}", "Compute", group[kind],
                                "Preemptible", regions, unit[kind], [(0.0, round(usd * s, 9))]))
            # decoys: custom machines, and sole-tenant nodes, priced differently
            skus.append(SkuSpec(f"Spot Preemptible {fam} Custom Instance {kind} running in {loc}", "Compute",
                                group[kind], "Preemptible", regions, unit[kind], [(0.0, round(usd * s * 1.05, 9))]))
            skus.append(SkuSpec(f"Spot Preemptible {fam} Sole Tenancy Instance {kind} running in {loc}", "Compute",
                                group[kind], "Preemptible", regions, unit[kind], [(0.0, round(usd * s * 1.1, 9))]))
        for (fam, kind), usd in ON_DEMAND.items():
            skus.append(SkuSpec(f"{fam} Instance {kind} running in {loc}", "Compute", group[kind], "OnDemand",
                                regions, unit[kind], [(0.0, round(usd * lp, 9))]))
        for (fam, kind), usd in COMMIT_1Y.items():
            what = "Cpu" if kind == "Core" else "Ram"
            skus.append(SkuSpec(f"Commitment v1: {fam} {what} in {loc} for 1 Year", "Compute", group[kind],
                                "Commit1Yr", regions, unit[kind], [(0.0, round(usd * lp, 9))]))
        for gpu, usd in GPU_SPOT.items():
            skus.append(SkuSpec(f"Spot Preemptible {gpu} GPU running in {loc}", "Compute", "GPU", "Preemptible",
                                regions, "h", [(0.0, round(usd * s, 9))]))
        skus.append(SkuSpec(f"Storage PD Capacity in {loc}", "Storage", "PDStandard", "OnDemand", regions,
                            "GiBy.mo", [(0.0, round(0.04 * lp, 9))]))
        skus.append(SkuSpec(f"Network Internet Egress from {loc} to Americas", "Network", "PremiumInternetEgress",
                            "OnDemand", regions, "GiBy", [(0.0, 0.0), (1.0, 0.12), (1024.0, 0.11), (10240.0, 0.08)]))
    skus.append(SkuSpec("Storage Standard Americas", "Storage", "RegionalStorage", "OnDemand", ("us-central1",),
                        "GiBy.mo", [(0.0, 0.0), (5.0, 0.02)], service_id="95FF-2EF5-5EA1", service_name="Cloud Storage"))
    skus.append(SkuSpec("Streaming Insert", "ApplicationServices", "Streaming", "OnDemand", (), "GiBy",
                        [(0.0, 0.05)], service_id="24E6-581D-38E5", service_name="BigQuery"))
    return sorted(skus, key=lambda k: (k.service_id, k.sku_id))


def _token(listing: str, offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"l": listing, "o": offset}).encode()).decode()


def _offset(listing: str, token: str) -> int:
    if not token:
        return 0
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        if data["l"] != listing or not isinstance(data["o"], int) or data["o"] < 0:
            raise ValueError("token of another listing")
        return int(data["o"])
    except (ValueError, KeyError, TypeError) as e:
        raise invalid(f"Invalid page token {token!r}") from e


@dataclass
class Catalog:
    """The whole fake: SKUs, paging, injected faults and a record of every call (for tests)."""

    effective: datetime = field(default_factory=lambda: datetime(2026, 11, 1, tzinfo=UTC))
    max_page_size: int = MAX_PAGE_SIZE
    skus: list[SkuSpec] = field(default_factory=build_catalog)
    faults: FaultPlan = field(default_factory=FaultPlan)  # local_emulator.faults rules on the RPC name
    calls: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock)

    def reset(self) -> None:
        with self.lock:
            self.max_page_size = MAX_PAGE_SIZE
            self.skus = build_catalog()
            self.faults.reset()
            self.calls.clear()

    def _enter(self, method: str, **what: Any) -> None:
        with self.lock:
            self.calls.append({"method": method, **what})
        fault = self.faults.take(method, path=str(what.get("parent", "")))
        if fault is None:
            return
        if fault.latency_s:
            time.sleep(fault.latency_s)
        if fault.status:
            raise CatalogFault(grpc.StatusCode[grpc_code_name(fault.status)],
                               fault.message or "injected by the billing fake")

    def _page_size(self, asked: int) -> int:
        if asked < 0:
            raise invalid(f"page_size must not be negative (got {asked})")
        return min(asked or MAX_PAGE_SIZE, MAX_PAGE_SIZE, self.max_page_size)

    # ------------------------------------------------------------------ the API
    def list_services(self, req: billing_v1.ListServicesRequest) -> billing_v1.ListServicesResponse:
        self._enter("ListServices", page_token=req.page_token)
        start, size = _offset("services", req.page_token), self._page_size(req.page_size)
        page = SERVICES[start:start + size]
        nxt = _token("services", start + size) if start + size < len(SERVICES) else ""
        return billing_v1.ListServicesResponse(
            services=[billing_v1.Service(name=f"services/{sid}", service_id=sid, display_name=name,
                                         business_entity_name="businessEntities/GCP") for sid, name in page],
            next_page_token=nxt,
        )

    def list_skus(self, req: billing_v1.ListSkusRequest) -> billing_v1.ListSkusResponse:
        self._enter("ListSkus", parent=req.parent, page_token=req.page_token, currency_code=req.currency_code)
        m = re.fullmatch(r"services/([A-Z0-9]{4}-[A-Z0-9]{4}-[A-Z0-9]{4})", req.parent)
        if m is None:
            raise invalid(f"parent must be services/SERVICE_ID (got {req.parent!r})")
        if m.group(1) not in {sid for sid, _ in SERVICES}:
            raise not_found(f"Service {req.parent} not found")
        if req.currency_code not in ("", "USD"):
            raise unimplemented(f"this fake serves prices in USD only (asked for {req.currency_code!r})")
        if "start_time" in req or "end_time" in req:
            raise unimplemented("this fake serves current prices only (start_time/end_time given)")
        with self.lock:
            rows = [k for k in self.skus if k.service_id == m.group(1)]
        start, size = _offset(req.parent, req.page_token), self._page_size(req.page_size)
        nxt = _token(req.parent, start + size) if start + size < len(rows) else ""
        return billing_v1.ListSkusResponse(skus=[k.to_proto(self.effective) for k in rows[start:start + size]],
                                           next_page_token=nxt)

    # ------------------------------------------------------------------ control
    def set_price(self, description: str, usd: float) -> dict[str, Any]:
        with self.lock:
            for k in self.skus:
                if k.description == description:
                    k.tiers = [(0.0, usd)]
                    return {"ok": True, "sku_id": k.sku_id}
        raise not_found(f"no SKU described {description!r}")

    def fault_control(self, verb: str, body: Any) -> dict[str, Any]:
        """The control API every fake shares (local_emulator.faults): POST adds, GET shows, DELETE forgets."""
        try:
            return self.faults.control(verb, body)
        except FaultError as e:
            raise invalid(str(e)) from e
