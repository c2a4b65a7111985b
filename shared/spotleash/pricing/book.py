"""The price book: Spot quotes for the budget guard and the ledger, from a dated cache of the catalog.

``PriceBook.quote(machine, region)`` always answers, and says where the figure comes from:
1. the cached sheet (``STATE_DIR/prices.json``) while younger than ``max_age``;
2. else a fresh read of the Cloud Billing Catalog, written back to the cache;
3. if the catalog cannot be read: the stale cache, however old (its date is in the label);
4. if there is no cache either: the built-in us-central1 table, labelled ``builtin``.
A failed read is not retried within ``retry_after`` (a launch must not wait on it every time).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from spotleash.errors import SpotleashError
from spotleash.log import get_logger
from spotleash.pricing.sheet import PriceSheet, Quote, builtin_quote, quote

log = get_logger("spotleash.pricing")

CACHE_NAME = "prices.json"
MAX_AGE = timedelta(hours=24)  # Spot prices change at most about once a month
RETRY_AFTER = timedelta(minutes=10)

Fetch = Callable[[datetime], PriceSheet]


def read_cache(path: Path) -> PriceSheet | None:
    try:
        return PriceSheet.model_validate_json(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, ValidationError) as e:
        log.warning("price cache unreadable; ignored", path=str(path), reason=str(e)[:200])
        return None


def write_cache(path: Path, sheet: PriceSheet) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(sheet.model_dump(mode="json"), indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError as e:  # a read-only disk costs a re-read later, nothing else
        log.warning("price cache not written", path=str(path), reason=str(e))


class PriceBook:
    def __init__(self, cache_path: Path, fetch: Fetch, clock: Callable[[], datetime], *,
                 max_age: timedelta = MAX_AGE, retry_after: timedelta = RETRY_AFTER) -> None:
        self.cache_path = cache_path
        self._fetch = fetch
        self._clock = clock
        self.max_age = max_age
        self.retry_after = retry_after
        self._sheet: PriceSheet | None = None
        self._failed_at: datetime | None = None
        self.last_error: str | None = None

    @classmethod
    def from_settings(cls, settings: Any, clock: Callable[[], datetime]) -> PriceBook:
        """The catalog at ``settings.billing_endpoint`` (unset: the real API), cached in the state dir."""
        from spotleash.pricing.catalog import catalog_client, fetch_sheet

        def fetch(now: datetime) -> PriceSheet:
            client = catalog_client(settings.billing_endpoint)
            try:
                return fetch_sheet(client, now)
            finally:
                client.transport.close()

        return cls(Path(settings.state_dir) / CACHE_NAME, fetch, clock)

    def _fresh(self, sheet: PriceSheet | None, now: datetime) -> bool:
        return sheet is not None and now - sheet.fetched_at < self.max_age

    def sheet(self) -> PriceSheet | None:
        """The newest sheet we can have now (see the module's order), or None: use the built-in table."""
        now = self._clock()
        if self._fresh(self._sheet, now):
            return self._sheet
        cached = read_cache(self.cache_path)
        if cached is not None and (self._sheet is None or cached.fetched_at > self._sheet.fetched_at):
            self._sheet = cached
        if self._fresh(self._sheet, now):
            return self._sheet
        if self._failed_at is not None and now - self._failed_at < self.retry_after:
            return self._sheet
        try:
            fetched = self._fetch(now)
        except SpotleashError as e:
            self._failed_at, self.last_error = now, str(e)
            log.warning("Billing Catalog unreadable; using the last prices known", reason=str(e),
                        fallback=self._sheet.label if self._sheet else "builtin table")
            return self._sheet
        self._sheet, self._failed_at, self.last_error = fetched, None, None
        write_cache(self.cache_path, fetched)
        log.info("Spot prices read from the Billing Catalog", regions=len(fetched.rates))
        return fetched

    def quote(self, machine: str, region: str) -> Quote:
        sheet = self.sheet()
        found = quote(sheet, machine, region) if sheet is not None else None
        return found or builtin_quote(machine, region)

    def lookup(self, machine: str, region: str) -> tuple[float, str] | None:
        """``spotleash.ledger.PriceLookup``: what a GCE record launched without a price costs."""
        q = self.quote(machine, region)
        return q.usd_per_hour, q.source
