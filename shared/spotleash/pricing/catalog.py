"""The Cloud Billing Catalog adapter: the only module that imports ``google.cloud.billing``.

List the public services, find Compute Engine, list its SKUs (every page), and keep the Spot E2/N2
core and RAM rates of every region (``spotleash.pricing.sheet`` decides which SKUs those are).
The official client talks gRPC; ``SPOTLEASH_BILLING_ENDPOINT`` (``Settings.billing_endpoint``,
HOST:PORT) points it at a local server without TLS or credentials, unset it reaches the real API
with the application default credentials.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from google.api_core import exceptions as gexc

from spotleash.adapters.google_errors import TRANSIENT_ERRORS
from spotleash.errors import ProviderPermanent, ProviderTransient
from spotleash.pricing.sheet import PriceSheet, SkuRow, rates_from_skus

COMPUTE_SERVICE = "Compute Engine"
PAGE_SIZE = 5000  # the API's largest page: Compute Engine has tens of thousands of SKUs
TIMEOUT_S = 30.0


def catalog_client(endpoint: str | None = None) -> Any:
    """The official ``CloudCatalogClient``: over an insecure gRPC channel to ``endpoint``, or the real API."""
    from google.auth.exceptions import DefaultCredentialsError
    from google.cloud import billing_v1

    if not endpoint:
        try:
            return billing_v1.CloudCatalogClient()
        except DefaultCredentialsError as e:
            raise ProviderPermanent(f"no Google credentials to read the Billing Catalog with: {e}") from e
    import grpc  # type: ignore[import-untyped]  # no stubs; used for one insecure local channel
    from google.cloud.billing_v1.services.cloud_catalog.transports import CloudCatalogGrpcTransport

    host = endpoint.removeprefix("http://").removeprefix("grpc://").rstrip("/")
    return billing_v1.CloudCatalogClient(transport=CloudCatalogGrpcTransport(channel=grpc.insecure_channel(host)))


def _usd(money: Any) -> float:
    return float(money.units) + float(money.nanos) / 1e9


def sku_row(sku: Any) -> SkuRow | None:
    """A SKU message as plain data: its current price, first tier (None if it carries no price)."""
    if not sku.pricing_info:
        return None
    expr = sku.pricing_info[0].pricing_expression
    if not expr.tiered_rates:
        return None
    tier = min(expr.tiered_rates, key=lambda r: r.start_usage_amount)
    currency = tier.unit_price.currency_code or "USD"
    if currency != "USD":
        raise ProviderPermanent(f"Billing Catalog answered in {currency}, asked for USD ({sku.description})")
    return SkuRow(description=sku.description, usage_type=sku.category.usage_type,
                  regions=tuple(sku.service_regions), usage_unit=expr.usage_unit, usd=_usd(tier.unit_price))


def fetch_sheet(client: Any, now: datetime) -> PriceSheet:
    """Read the Spot rates from the catalog. Raises ProviderTransient / ProviderPermanent."""
    try:
        services = client.list_services(request={"page_size": PAGE_SIZE}, timeout=TIMEOUT_S)
        compute = next((s for s in services if s.display_name == COMPUTE_SERVICE), None)
        if compute is None:
            raise ProviderPermanent(f"the Billing Catalog lists no {COMPUTE_SERVICE!r} service")
        skus = client.list_skus(request={"parent": compute.name, "currency_code": "USD", "page_size": PAGE_SIZE},
                                timeout=TIMEOUT_S)
        rows = [row for row in (sku_row(s) for s in skus) if row is not None]
    except TRANSIENT_ERRORS as e:
        raise ProviderTransient(f"Billing Catalog: {e}") from e
    except gexc.GoogleAPICallError as e:
        raise ProviderPermanent(f"Billing Catalog: {e}") from e
    rates = rates_from_skus(rows)
    if not rates:
        raise ProviderPermanent(f"the Billing Catalog's {len(rows)} Compute Engine SKUs hold no Spot E2/N2 rate")
    return PriceSheet(source="catalog", fetched_at=now, rates=rates)
