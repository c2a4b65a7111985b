"""The Billing Catalog fake, driven by the official google-cloud-billing client over gRPC, and the pricing
adapter reading Spot prices from it. In-process servers on loopback (no emulator, no stack)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.api_core import exceptions as gexc
from google.cloud import billing_v1

from local_emulator.billing import BillingServer, catalog_client, control_call
from local_emulator.billing.models import COMPUTE_ID
from local_emulator.procs import free_port, spawn, wait_ready
from spotleash.errors import ProviderPermanent, ProviderTransient
from spotleash.pricing.catalog import fetch_sheet

pytestmark = pytest.mark.emulator
NOW = datetime(2026, 11, 3, 12, 0, tzinfo=UTC)
COMPUTE = f"services/{COMPUTE_ID}"


@pytest.fixture()
def fake() -> Iterator[BillingServer]:
    with BillingServer() as server:
        yield server


@pytest.fixture()
def client(fake: BillingServer) -> Iterator[Any]:
    c = catalog_client(fake.address)
    try:
        yield c
    finally:
        c.transport.close()


def test_services_are_listed_and_compute_engine_has_its_real_id(client: Any) -> None:
    services = list(client.list_services())
    names = {s.display_name: s.name for s in services}
    assert names["Compute Engine"] == COMPUTE and "Cloud Storage" in names
    assert all(s.business_entity_name == "businessEntities/GCP" for s in services)


def test_skus_carry_realistic_categories_regions_and_prices(client: Any) -> None:
    skus = {s.description: s for s in client.list_skus(parent=COMPUTE)}
    core = skus["Spot Preemptible E2 Instance Core running in Americas"]
    assert core.category.resource_family == "Compute" and core.category.resource_group == "CPU"
    assert core.category.usage_type == "Preemptible" and list(core.service_regions) == ["us-central1", "us-east1",
                                                                                          "us-west1"]
    expr = core.pricing_info[0].pricing_expression
    assert expr.usage_unit == "h" and expr.base_unit == "s" and expr.base_unit_conversion_factor == 3600
    price = expr.tiered_rates[0].unit_price
    assert (price.currency_code, price.units, price.nanos) == ("USD", 0, 6_543_000)
    ram = skus["Spot Preemptible E2 Instance Ram running in Belgium"]
    assert ram.pricing_info[0].pricing_expression.usage_unit == "GiBy.h"
    assert list(ram.service_regions) == ["europe-west1"]
    egress = skus["Network Internet Egress from Americas to Americas"]
    assert len(egress.pricing_info[0].pricing_expression.tiered_rates) == 4  # tiered, as the real one
    assert "E2 Instance Core running in Americas" in skus  # the on-demand decoy is there too
    assert all(s.name == f"{COMPUTE}/skus/{s.sku_id}" for s in skus.values())


def test_skus_page_and_the_pager_reads_every_page(fake: BillingServer, client: Any) -> None:
    everything = [s.sku_id for s in client.list_skus(parent=COMPUTE)]
    control_call(fake.address, "Configure", {"max_page_size": 7})
    pages = list(client.list_skus(parent=COMPUTE).pages)
    assert len(pages) == -(-len(everything) // 7) and [s.sku_id for p in pages for s in p.skus] == everything
    tokens = [c["page_token"] for c in control_call(fake.address, "Calls") if c["method"] == "ListSkus"]
    assert tokens[0] == "" and tokens[-1] != "" and len(tokens) == 1 + len(pages)


def test_bad_requests_fail_loudly(client: Any) -> None:
    with pytest.raises(gexc.NotFound, match="not found"):
        list(client.list_skus(parent="services/0000-0000-0000"))
    with pytest.raises(gexc.InvalidArgument, match="parent"):
        list(client.list_skus(parent="projects/p"))
    with pytest.raises(gexc.InvalidArgument, match="page token"):
        list(client.list_skus(request={"parent": COMPUTE, "page_token": "forged"}))
    with pytest.raises(gexc.MethodNotImplemented, match="USD only"):
        list(client.list_skus(request={"parent": COMPUTE, "currency_code": "EUR"}))
    with pytest.raises(gexc.MethodNotImplemented, match="current prices only"):
        list(client.list_skus(request={"parent": COMPUTE, "start_time": NOW - timedelta(days=30)}))


def test_methods_the_fake_lacks_answer_unimplemented(fake: BillingServer) -> None:
    from google.cloud.billing_v1.services.cloud_billing.transports import CloudBillingGrpcTransport

    other = billing_v1.CloudBillingClient(transport=CloudBillingGrpcTransport(channel=grpc.insecure_channel(fake.address)))
    try:
        with pytest.raises(gexc.MethodNotImplemented):
            other.get_billing_account(name="billingAccounts/000000-000000-000000")
    finally:
        other.transport.close()


# ------------------------------------------------------------------------------ the adapter
def test_the_adapter_reads_spot_rates_for_every_region(client: Any) -> None:
    sheet = fetch_sheet(client, NOW)
    assert sheet.fetched_at == NOW and sheet.label == "catalog 2026-11-03"
    assert set(sheet.rates) >= {"us-central1", "us-east1", "us-west1", "us-east4", "europe-west1", "europe-west4",
                                "europe-west3", "asia-northeast1", "asia-southeast1", "southamerica-east1"}
    assert sheet.rates["us-central1"]["e2"].core == pytest.approx(0.006543)  # not the custom / sole-tenant decoys
    assert sheet.rates["us-central1"]["e2"].ram == pytest.approx(0.000877)
    assert sheet.rates["europe-west1"]["n2"].core == pytest.approx(0.007673 * 1.099)


def test_the_adapter_translates_errors(fake: BillingServer, client: Any) -> None:
    control_call(fake.address, "AddFault", {"operation": "ListSkus", "status": 503, "count": 5})
    with pytest.raises(ProviderTransient, match="Billing Catalog"):
        fetch_sheet(client, NOW)
    control_call(fake.address, "Reset")
    control_call(fake.address, "AddFault", {"operation": "ListServices", "status": 403})
    with pytest.raises(ProviderPermanent, match="Billing Catalog"):
        fetch_sheet(client, NOW)


def test_the_fake_runs_as_its_own_process(tmp_path: Path) -> None:
    port = free_port()
    proc = spawn("billing", [sys.executable, "-m", "local_emulator.billing", "--port", str(port)],
                 log_path=tmp_path / "billing.log", port=port)
    try:
        address = f"127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                return bool(control_call(address, "Health", timeout=1.0)["ok"])
            except grpc.RpcError:
                return False

        wait_ready(proc, timeout=30.0, check=healthy)
        c = catalog_client(address)
        try:
            assert fetch_sheet(c, NOW).rates["us-east4"]["e2"].core == pytest.approx(0.006543 * 1.126)
        finally:
            c.transport.close()
    finally:
        proc.stop()
