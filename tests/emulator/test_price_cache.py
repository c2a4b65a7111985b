"""The Spot price cache in Firestore: the price book against Google's Firestore emulator and the Billing
Catalog fake, both through the official clients (in-process fake, one emulator for the module)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import TEST_PROJECT
from tests.emulator.emulator_fixtures import firestore_emulator

from local_emulator.billing import BillingServer, control_call
from spotleash.adapters.firestore import FirestoreStore
from spotleash.config import Settings
from spotleash.decide.policy import SPOT_PRICE
from spotleash.pricing.book import PriceBook

pytestmark = pytest.mark.emulator
NOW = datetime(2026, 11, 3, 12, 0, tzinfo=UTC)
# e2-highmem-4 in us-central1 on the fake: 4 x 0.006543 + 32 x 0.000877
US_PRICE = 4 * 0.006543 + 32 * 0.000877


@pytest.fixture(scope="module")
def firestore_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with firestore_emulator(tmp_path_factory.mktemp("firestore-emulator")) as host:
        yield host


@pytest.fixture()
def store(firestore_host: str, monkeypatch: pytest.MonkeyPatch) -> FirestoreStore:
    from google.cloud import firestore

    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_host)
    client = firestore.Client(project=TEST_PROJECT)
    for doc in client.collection("prices").stream():  # the cache is the project's: start each test empty
        doc.reference.delete()
    return FirestoreStore(client, f"prices-{uuid.uuid4().hex[:8]}")


@pytest.fixture()
def billing() -> Iterator[BillingServer]:
    with BillingServer() as server:
        yield server


def catalog_reads(billing: BillingServer) -> int:
    return [c["method"] for c in control_call(billing.address, "Calls")].count("ListSkus")


def book(billing: BillingServer, store: FirestoreStore | None, clock: list[datetime], tmp_path: Path) -> PriceBook:
    return PriceBook.from_settings(Settings(billing_endpoint=billing.address, state_dir=tmp_path), lambda: clock[0],
                                   store)


def test_one_document_per_machine_and_region_with_its_date_shared_by_every_process(
        store: FirestoreStore, billing: BillingServer, tmp_path: Path) -> None:
    clock = [NOW]
    q = book(billing, store, clock, tmp_path).quote("e2-highmem-4", "us-central1")
    assert q.usd_per_hour == pytest.approx(US_PRICE, abs=1e-6) and q.source == "catalog 2026-11-03"
    docs = {d.id: d.to_dict() for d in store.client.collection("prices").stream()}
    assert set(docs) == {"e2-highmem-4@us-central1"}
    assert docs["e2-highmem-4@us-central1"]["fetched_at"] == NOW
    assert docs["e2-highmem-4@us-central1"]["usd_per_hour"] == pytest.approx(US_PRICE, abs=1e-6)
    # another process (a new book and a new store client): the cache answers, the catalog is not asked
    again = book(billing, FirestoreStore(store.client, "another-deployment"), clock, tmp_path)
    clock[0] += timedelta(hours=23)
    assert again.quote("e2-highmem-4", "us-central1").source == "catalog 2026-11-03"
    assert catalog_reads(billing) == 1


def test_a_cached_price_older_than_a_day_is_read_again_from_the_catalog(
        store: FirestoreStore, billing: BillingServer, tmp_path: Path) -> None:
    clock = [NOW]
    book(billing, store, clock, tmp_path).quote("e2-highmem-4", "us-central1")
    control_call(billing.address, "SetPrice", {"description": "Spot Preemptible E2 Instance Core running in Americas",
                                               "usd": 0.01})
    clock[0] += timedelta(days=1, seconds=1)
    q = book(billing, store, clock, tmp_path).quote("e2-highmem-4", "us-central1")
    assert q.usd_per_hour == pytest.approx(4 * 0.01 + 32 * 0.000877, abs=1e-6) and q.source == "catalog 2026-11-04"
    cached = store.cached_price("e2-highmem-4", "us-central1")
    assert cached is not None and cached.fetched_at == clock[0] and cached.usd_per_hour == pytest.approx(q.usd_per_hour)
    assert catalog_reads(billing) == 2


def test_an_unreachable_catalog_uses_the_stale_cache_and_without_one_the_labelled_table(
        store: FirestoreStore, billing: BillingServer, tmp_path: Path) -> None:
    clock = [NOW]
    book(billing, store, clock, tmp_path).quote("e2-highmem-4", "us-central1")
    clock[0] += timedelta(days=30)
    control_call(billing.address, "AddFault", {"operation": "ListServices", "status": 503, "count": 100})
    down = book(billing, store, clock, tmp_path)
    stale = down.quote("e2-highmem-4", "us-central1")
    assert stale.source == "catalog 2026-11-03" and stale.usd_per_hour == pytest.approx(US_PRICE, abs=1e-6)
    assert "Billing Catalog" in str(down.last_error)
    fallback = down.quote("e2-highmem-4", "europe-west4")  # never cached, catalog down: the table, labelled
    assert fallback.usd_per_hour == SPOT_PRICE["e2-highmem-4"]
    assert fallback.source == "builtin table (us-central1, used for europe-west4)"
    assert store.cached_price("e2-highmem-4", "europe-west4") is None


def test_the_ledger_and_the_budget_guard_read_the_cache(store: FirestoreStore, billing: BillingServer,
                                                        tmp_path: Path) -> None:
    """The book the services get (Context.from_settings) and the one `spotleash cost` builds both use Firestore."""
    from spotleash.services.context import Context

    settings = Settings(billing_endpoint=billing.address, state_dir=tmp_path, project=TEST_PROJECT,
                        deployment_id=store.deployment_id)
    ctx: Any = Context.from_settings(settings)
    assert isinstance(ctx.store, FirestoreStore) and ctx.prices is not None and ctx.prices.cache is ctx.store
    ctx.prices.quote("e2-highmem-8", "europe-west1")
    cached = store.cached_price("e2-highmem-8", "europe-west1")
    assert cached is not None and cached.source == "catalog"
