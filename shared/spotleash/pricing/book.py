"""The price book: Spot quotes for the budget guard and the ledger, from a dated cache of the catalog.

The cache is one document per (machine type, region) — ``CachedPrice``: the price and the date it was
read — kept by a ``PriceCache`` (Firestore's ``prices`` collection, ``FirestoreStore``), so every function
instance and every command shares it. ``PriceBook.quote(machine, region)`` always answers, and says where
the figure comes from:
1. the cached price while younger than ``max_age`` (a day);
2. else a fresh read of the Cloud Billing Catalog (one read prices every machine and region; the sheet is
   kept in memory for the day), whose price is written back to the cache;
3. if the catalog cannot be read: the stale cached price, however old (its date is in the label);
4. if there is no cached price either (or the catalog has no rate for that machine there): the built-in
   us-central1 table, labelled ``builtin``.
A failed catalog read is not retried within ``retry_after`` (a launch must not wait on it every time); a
cache that cannot be read or written costs a catalog read, nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from spotleash.errors import SpotleashError
from spotleash.log import get_logger
from spotleash.pricing.sheet import CachedPrice, PriceSheet, Quote, builtin_quote, quote

log = get_logger(__name__)

MAX_AGE = timedelta(hours=24)  # Spot prices change at most about once a month
RETRY_AFTER = timedelta(minutes=10)

Fetch = Callable[[datetime], PriceSheet]


@runtime_checkable
class PriceCache(Protocol):
    """Where cached prices live (``FirestoreStore``; the in-memory store in tests). May raise ``Transient``."""

    def cached_price(self, machine: str, region: str) -> CachedPrice | None: ...
    def put_price(self, price: CachedPrice) -> None: ...


class PriceBook:
    def __init__(self, cache: PriceCache | None, fetch: Fetch, clock: Callable[[], datetime], *,
                 max_age: timedelta = MAX_AGE, retry_after: timedelta = RETRY_AFTER) -> None:
        self.cache = cache
        self._fetch = fetch
        self._clock = clock
        self.max_age = max_age
        self.retry_after = retry_after
        self._known: dict[tuple[str, str], CachedPrice] = {}  # what this process read or wrote
        self._sheet: PriceSheet | None = None
        self._failed_at: datetime | None = None
        self.last_error: str | None = None

    @classmethod
    def from_settings(cls, settings: Any, clock: Callable[[], datetime], cache: PriceCache | None) -> PriceBook:
        """The catalog at ``settings.billing_endpoint`` (unset: the real API), cached in ``cache``."""
        from spotleash.pricing.catalog import catalog_client, fetch_sheet

        def fetch(now: datetime) -> PriceSheet:
            client = catalog_client(settings.billing_endpoint)
            try:
                return fetch_sheet(client, now)
            finally:
                client.transport.close()

        return cls(cache, fetch, clock)

    def _fresh(self, when: datetime | None, now: datetime) -> bool:
        return when is not None and now - when < self.max_age

    def _cached(self, machine: str, region: str) -> CachedPrice | None:
        if self.cache is None:
            return None
        try:
            return self.cache.cached_price(machine, region)
        except SpotleashError as e:
            log.warning("price cache unreadable; asking the catalog", machine=machine, region=region, reason=str(e))
            return None

    def _remember(self, price: CachedPrice) -> None:
        self._known[(price.machine, price.region)] = price
        if self.cache is None:
            return
        try:
            self.cache.put_price(price)
        except SpotleashError as e:  # costs another catalog read later, nothing else
            log.warning("price cache not written", machine=price.machine, region=price.region, reason=str(e))

    def _catalog(self, now: datetime) -> PriceSheet | None:
        """The catalog's sheet: the one read today, or a fresh read; None while it cannot be read."""
        if self._sheet is not None and self._fresh(self._sheet.fetched_at, now):
            return self._sheet
        if self._failed_at is not None and now - self._failed_at < self.retry_after:
            return None
        try:
            self._sheet = self._fetch(now)
        except SpotleashError as e:
            self._failed_at, self.last_error = now, str(e)
            log.warning("Billing Catalog unreadable; using the last prices known", reason=str(e))
            return None
        self._failed_at, self.last_error = None, None
        log.info("Spot prices read from the Billing Catalog", regions=len(self._sheet.rates))
        return self._sheet

    def quote(self, machine: str, region: str) -> Quote:
        now = self._clock()
        known = self._known.get((machine, region))
        if known is None or not self._fresh(known.fetched_at, now):
            stored = self._cached(machine, region)
            if stored is not None and (known is None or stored.fetched_at > known.fetched_at):
                known = self._known[(machine, region)] = stored
        if known is not None and self._fresh(known.fetched_at, now):
            return known.quote()
        sheet = self._catalog(now)
        found = quote(sheet, machine, region) if sheet is not None else None
        if sheet is not None and found is not None:
            self._remember(CachedPrice(machine=machine, region=region, usd_per_hour=found.usd_per_hour,
                                       fetched_at=sheet.fetched_at))
            return found
        if known is not None:
            return known.quote()
        older = quote(self._sheet, machine, region) if self._sheet is not None else None  # a stale read of ours
        return older or builtin_quote(machine, region)

    def lookup(self, machine: str, region: str) -> tuple[float, str] | None:
        """``spotleash.decide.ledger.PriceLookup``: what a GCE record launched without a price costs."""
        q = self.quote(machine, region)
        return q.usd_per_hour, q.source
