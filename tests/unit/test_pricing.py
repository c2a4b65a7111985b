"""Spot prices: machine shapes, the SKUs that count, quotes, and the price book's cache and fallbacks."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from spotleash.errors import ProviderPermanent, ProviderTransient
from spotleash.policy import SPOT_PRICE
from spotleash.pricing.book import CACHE_NAME, PriceBook, read_cache
from spotleash.pricing.sheet import (
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


def test_the_book_reads_the_catalog_once_and_caches_it_with_its_date(tmp_path: Path) -> None:
    clock, cat = Clock(), Catalog(sheet())
    book = PriceBook(tmp_path / CACHE_NAME, cat, clock)
    # e2-highmem-4: 4 x 0.01 + 32 x 0.001 = 0.072
    assert book.quote("e2-highmem-4", "us-central1").usd_per_hour == pytest.approx(0.072)
    clock.now += timedelta(hours=23)
    assert book.quote("e2-highmem-2", "us-central1").usd_per_hour == pytest.approx(0.036)
    assert cat.calls == 1
    cached = read_cache(tmp_path / CACHE_NAME)
    assert cached is not None and cached.fetched_at == T0
    assert json.loads((tmp_path / CACHE_NAME).read_text())["fetched_at"].startswith("2026-11-03")
    # another process (a new book) uses the cache without asking the catalog
    other = PriceBook(tmp_path / CACHE_NAME, Catalog(), clock)
    assert other.quote("e2-highmem-4", "us-central1").source == "catalog 2026-11-03"


def test_a_stale_cache_is_refreshed(tmp_path: Path) -> None:
    clock, cat = Clock(), Catalog(sheet(), sheet(e2=FamilyRate(core=0.02, ram=0.002)))
    book = PriceBook(tmp_path / CACHE_NAME, cat, clock)
    book.quote("e2-highmem-4", "us-central1")
    clock.now += timedelta(hours=25)
    q = book.quote("e2-highmem-4", "us-central1")
    assert cat.calls == 2 and q.usd_per_hour == pytest.approx(0.144) and q.source == "catalog 2026-11-04"


def test_an_unreadable_catalog_falls_back_to_the_stale_cache_then_waits_before_asking_again(tmp_path: Path) -> None:
    clock = Clock()
    PriceBook(tmp_path / CACHE_NAME, Catalog(sheet()), clock).quote("e2-highmem-4", "us-central1")
    clock.now += timedelta(days=40)
    cat = Catalog(ProviderTransient("Billing Catalog: 503"), sheet())
    book = PriceBook(tmp_path / CACHE_NAME, cat, clock)
    q = book.quote("e2-highmem-4", "us-central1")
    assert q.source == "catalog 2026-11-03" and q.usd_per_hour == pytest.approx(0.072)  # dated: 40 days old
    assert book.last_error == "Billing Catalog: 503"
    clock.now += timedelta(minutes=5)
    book.quote("e2-highmem-4", "us-central1")
    assert cat.calls == 1  # within retry_after: not asked again
    clock.now += timedelta(minutes=6)
    assert book.quote("e2-highmem-4", "us-central1").source == "catalog 2026-12-13" and cat.calls == 2


def test_no_catalog_and_no_cache_means_the_labelled_builtin_table(tmp_path: Path) -> None:
    book = PriceBook(tmp_path / CACHE_NAME, Catalog(ProviderPermanent("no credentials")), Clock())
    q = book.quote("e2-highmem-4", "europe-west1")
    assert q.usd_per_hour == SPOT_PRICE["e2-highmem-4"] and q.source.startswith("builtin table")
    assert book.lookup("e2-highmem-4", "europe-west1") == (q.usd_per_hour, q.source)


def test_a_region_the_catalog_lacks_is_priced_by_the_builtin_table(tmp_path: Path) -> None:
    book = PriceBook(tmp_path / CACHE_NAME, Catalog(sheet()), Clock())
    assert book.quote("e2-highmem-4", "me-central2").source == "builtin table (us-central1, used for me-central2)"


def test_a_corrupt_cache_is_ignored_and_rewritten(tmp_path: Path) -> None:
    path = tmp_path / CACHE_NAME
    path.write_text("{not json")
    book = PriceBook(path, Catalog(sheet()), Clock())
    assert book.quote("e2-highmem-4", "us-central1").from_catalog
    assert read_cache(path) is not None


def test_an_unwritable_cache_costs_nothing_but_a_reread(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    cat = Catalog(sheet())
    book = PriceBook(blocker / CACHE_NAME, cat, Clock())  # its parent is a file: cannot be written
    assert book.quote("e2-highmem-4", "us-central1").from_catalog and cat.calls == 1
