"""GCE Spot prices: the Cloud Billing Catalog (``catalog``, the adapter), read into dated sheets
(``sheet``, pure) and cached with a labelled fallback (``book``). See ``spotleash.decide.ledger`` for their use."""

from __future__ import annotations

from spotleash.pricing.book import PriceBook, PriceCache
from spotleash.pricing.sheet import CachedPrice, PriceSheet, Quote, builtin_quote, machine_shape, quote

__all__ = ["CachedPrice", "PriceBook", "PriceCache", "PriceSheet", "Quote", "builtin_quote", "machine_shape", "quote"]
