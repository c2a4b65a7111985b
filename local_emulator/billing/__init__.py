"""Cloud Billing Catalog fake: the CloudCatalog gRPC subset the official ``google-cloud-billing`` client
calls to price machines (ListServices, ListSkus), with realistic Compute Engine SKUs for several regions.

    with BillingServer() as fake:
        client = catalog_client(fake.address)       # the official CloudCatalogClient, over gRPC
        [compute] = [s for s in client.list_services() if s.display_name == "Compute Engine"]

Run standalone: ``python -m local_emulator.billing --host 127.0.0.1 --port PORT``. spotleash's pricing
adapter reaches it through ``SPOTLEASH_BILLING_ENDPOINT=HOST:PORT``.
"""

from __future__ import annotations

from local_emulator.billing.models import Catalog, SkuSpec
from local_emulator.billing.server import BillingServer, control_call
from spotleash.pricing.catalog import catalog_client

__all__ = ["BillingServer", "Catalog", "SkuSpec", "catalog_client", "control_call"]
