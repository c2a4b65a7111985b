"""Spot prices: machine shapes, the SKUs that count, quotes, and the price book's cache and fallbacks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from tests.support.memory_store import MemoryStore

from spotleash.decide.policy import SPOT_PRICE
from spotleash.errors import ProviderPermanent, ProviderTransient, Transient
from spotleash.pricing.book import PriceBook
from spotleash.pricing.sheet import (
    CachedPrice,
    FamilyRate,
    PriceSheet,
    Shape,
    SkuRow,
    builtin_quote,
    machine_shape,
    quote,
    rates_from_skus,
)

T0 = datetime(2026, 11, 3, 12, 0, tzinfo=UTC)
US = ("us-central1", "us-east1")


def row(desc: str, usd: float, *, usage: str = "Preemptible", regions: tuple[str, ...] = US,
        unit: str | None = None) -> SkuRow:
    return SkuRow(desc, usage, regions, unit or ("h" if " Core " in desc else "GiBy.h"), usd)


def sheet(at: datetime = T0, **rates: FamilyRate) -> PriceSheet:
    return PriceSheet(source="catalog", fetched_at=at, rates={"us-central1": rates or {"e2": FamilyRate(core=0.01, ram=0.001)}})


def test_machine_shapes() -> None:
    assert machine_shape("e2-highmem-4") == Shape("e2", 4, 32)
    assert machine_shape("e2-standard-8") == Shape("e2", 8, 32)
    assert machine_shape("n2-highcpu-16") == Shape("n2", 16, 16)
    assert machine_shape("e2-medium") == Shape("e2", 1.0, 4.0)
    assert machine_shape("n2-custom-6-24576") == Shape("n2", 6, 24)
    for unknown in ("n1-standard-4", "c3-highmem-8", "e2-highmem-0", "g2-standard-4", "", "e2-custom-0-1024"):
        assert machine_shape(unknown) is None, unknown


def test_only_the_spot_e2_and_n2_core_and_ram_skus_count() -> None:
    rows = [
        row("Spot Preemptible E2 Instance Core running in Americas", 0.006543),
        row("Spot Preemptible E2 Instance Ram running in Americas", 0.000877),
        row("Spot Preemptible N2 Instance Core running in Americas", 0.007673),  # N2 without RAM: left out
        row("E2 Instance Core running in Americas", 0.021811, usage="OnDemand"),
        row("Spot Preemptible E2 Custom Instance Core running in Americas", 0.5),
        row("Spot Preemptible E2 Sole Tenancy Instance Core running in Americas", 0.5),
        row("Commitment v1: E2 Cpu in Americas for 1 Year", 0.5, usage="Commit1Yr"),
        row("Spot Preemptible E2 Instance Core running in Americas", 0.5, usage="OnDemand"),  # wrong usage type
        row("Spot Preemptible E2 Instance Ram running in Americas", 0.5, unit="GiBy.mo"),  # wrong unit
        row("Spot Preemptible Nvidia Tesla T4 GPU running in Americas", 0.14),
        row("Spot Preemptible E2 Instance Core running in Belgium", 0.00719, regions=("europe-west1",)),
    ]
    rates = rates_from_skus(rows)
    assert rates == {r: {"e2": FamilyRate(core=0.006543, ram=0.000877)} for r in US}


def test_a_quote_is_cores_times_core_rate_plus_gib_times_ram_rate() -> None:
    # e2-highmem-4 in us-central1: 4 x 0.006543 + 32 x 0.000877 = 0.026172 + 0.028064 = 0.054236
    s = sheet(e2=FamilyRate(core=0.006543, ram=0.000877))
    q = quote(s, "e2-highmem-4", "us-central1")
    assert q is not None and q.usd_per_hour == pytest.approx(0.054236) and q.source == "catalog 2026-11-03"
    assert q.from_catalog
    assert quote(s, "e2-highmem-4", "europe-west1") is None  # region not in the sheet
    assert quote(s, "n2-standard-4", "us-central1") is None  # family not in the sheet
    assert quote(s, "a2-highgpu-1g", "us-central1") is None  # shape unknown


def test_the_builtin_table_is_labelled_and_says_when_it_is_a_guess() -> None:
    home = builtin_quote("e2-highmem-4", "us-central1")
    assert home.usd_per_hour == SPOT_PRICE["e2-highmem-4"] and home.source == "builtin table (us-central1)"
    away = builtin_quote("e2-highmem-4", "europe-west4")
    assert away.source == "builtin table (us-central1, used for europe-west4)" and not away.from_catalog
    assert "no table entry" in builtin_quote("n2-standard-2", "us-central1").source


# ------------------------------------------------------------------------------ the price book
class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


class Catalog:
    """A scripted fetch: the sheets (or errors) it returns, in order; counts its calls."""

    def __init__(self, *answers: PriceSheet | Exception) -> None:
        self.answers = list(answers)
        self.calls = 0

    def __call__(self, now: datetime) -> PriceSheet:
        self.calls += 1
        a = self.answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return a.model_copy(update={"fetched_at": now})


def test_the_book_reads_the_catalog_once_and_caches_each_price_with_its_date() -> None:
    clock, cat, store = Clock(), Catalog(sheet()), MemoryStore()
    book = PriceBook(store, cat, clock)
    # e2-highmem-4: 4 x 0.01 + 32 x 0.001 = 0.072
    assert book.quote("e2-highmem-4", "us-central1").usd_per_hour == pytest.approx(0.072)
    clock.now += timedelta(hours=23)
    assert book.quote("e2-highmem-2", "us-central1").usd_per_hour == pytest.approx(0.036)
    assert cat.calls == 1  # one catalog read prices every machine and region for the day
    assert store.cached_price("e2-highmem-4", "us-central1") == CachedPrice(
        machine="e2-highmem-4", region="us-central1", usd_per_hour=0.072, fetched_at=T0)
    two = store.cached_price("e2-highmem-2", "us-central1")
    assert two is not None and two.fetched_at == T0 and two.label == "catalog 2026-11-03"
    # another process (a new book on the same store) uses the cache without asking the catalog
    other = PriceBook(store, Catalog(), clock)
    assert other.quote("e2-highmem-4", "us-central1").source == "catalog 2026-11-03"
    reads = store.reads
    other.quote("e2-highmem-4", "us-central1")
    assert store.reads == reads  # and keeps what it read while it is fresh


def test_a_stale_cache_is_refreshed() -> None:
    clock, store = Clock(), MemoryStore()
    PriceBook(store, Catalog(sheet()), clock).quote("e2-highmem-4", "us-central1")
    clock.now += timedelta(hours=25)
    cat = Catalog(sheet(e2=FamilyRate(core=0.02, ram=0.002)))
    q = PriceBook(store, cat, clock).quote("e2-highmem-4", "us-central1")
    assert cat.calls == 1 and q.usd_per_hour == pytest.approx(0.144) and q.source == "catalog 2026-11-04"
    cached = store.cached_price("e2-highmem-4", "us-central1")
    assert cached is not None and cached.fetched_at == clock.now and cached.usd_per_hour == pytest.approx(0.144)


def test_an_unreadable_catalog_falls_back_to_the_stale_cache_then_waits_before_asking_again() -> None:
    clock, store = Clock(), MemoryStore()
    PriceBook(store, Catalog(sheet()), clock).quote("e2-highmem-4", "us-central1")
    clock.now += timedelta(days=40)
    cat = Catalog(ProviderTransient("Billing Catalog: 503"), sheet())
    book = PriceBook(store, cat, clock)
    q = book.quote("e2-highmem-4", "us-central1")
    assert q.source == "catalog 2026-11-03" and q.usd_per_hour == pytest.approx(0.072)  # dated: 40 days old
    assert book.last_error == "Billing Catalog: 503"
    clock.now += timedelta(minutes=5)
    book.quote("e2-highmem-4", "us-central1")
    assert cat.calls == 1  # within retry_after: not asked again
    clock.now += timedelta(minutes=6)
    assert book.quote("e2-highmem-4", "us-central1").source == "catalog 2026-12-13" and cat.calls == 2


def test_no_catalog_and_no_cache_means_the_labelled_builtin_table() -> None:
    store = MemoryStore()
    book = PriceBook(store, Catalog(ProviderPermanent("no credentials")), Clock())
    q = book.quote("e2-highmem-4", "europe-west1")
    assert q.usd_per_hour == SPOT_PRICE["e2-highmem-4"] and q.source.startswith("builtin table")
    assert book.lookup("e2-highmem-4", "europe-west1") == (q.usd_per_hour, q.source)
    assert store.cached_price("e2-highmem-4", "europe-west1") is None  # the fallback is never cached


def test_a_region_the_catalog_lacks_is_priced_by_the_builtin_table() -> None:
    book = PriceBook(MemoryStore(), Catalog(sheet()), Clock())
    assert book.quote("e2-highmem-4", "me-central2").source == "builtin table (us-central1, used for me-central2)"


def test_a_cache_that_cannot_be_read_or_written_costs_a_catalog_read_nothing_else() -> None:
    store, cat = MemoryStore(), Catalog(sheet())
    store.fail("cached_price", Transient("firestore: 503"))
    store.fail("put_price", Transient("firestore: 503"))
    book = PriceBook(store, cat, Clock())
    assert book.quote("e2-highmem-4", "us-central1").from_catalog and cat.calls == 1
    assert store.cached_price("e2-highmem-4", "us-central1") is None  # the write failed, the quote did not


def test_without_a_cache_the_book_keeps_the_sheet_in_memory() -> None:
    clock, cat = Clock(), Catalog(sheet(), ProviderTransient("503"))
    book = PriceBook(None, cat, clock)
    assert book.quote("e2-highmem-4", "us-central1").from_catalog
    clock.now += timedelta(days=2)  # stale, and the catalog is down: the old read, dated, beats the table
    assert book.quote("e2-highmem-4", "us-central1").source == "catalog 2026-11-03" and cat.calls == 2
