"""What a service needs: settings, the store, providers, a clock. Built once per process.

Everything a service touches outside itself comes through here, so a test builds a ``Context`` on an
in-memory store, fake providers and a fake clock (``tests/support``) and runs the service in-process.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from spotleash.adapters.firestore import FirestoreStore, Store
from spotleash.clock import utcnow
from spotleash.config import Settings
from spotleash.errors import ConfigError
from spotleash.pricing.book import PriceBook
from spotleash.providers import build_provider
from spotleash.providers.base import Provider

if TYPE_CHECKING:
    from spotleash.adapters.pubsub import Publisher
    from spotleash.adapters.storage import Storage
    from spotleash.wire.events import DemandEvent

PUBLISH_TIMEOUT_S = 10.0


@dataclass
class Context:
    settings: Settings
    store: Store
    clock: Callable[[], datetime] = utcnow
    providers: dict[str, Provider] = field(default_factory=dict)
    sleep: Callable[[float], None] = time.sleep  # backoff between retries (a test's fake clock advances instead)
    # What bounds a wait that ``sleep`` paces (a deletion's confirmation): a clock that only moves forward, as a
    # step of the wall clock would end such a wait early or hold it late. A test's fake clock stands in with its sleep.
    ticks: Callable[[], float] = time.monotonic
    prices: PriceBook | None = None  # Spot prices for the budget guard; None: the built-in table
    storage: Storage | None = None  # the package bucket (packages, snapshots); built when first used
    # Where a failover demand goes: None publishes it to the demand topic (on_demand launches it); a test
    # in one process hands it to ``handle_demand`` directly.
    demand_bus: Callable[[DemandEvent], None] | None = None
    _publisher: Publisher | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Context:
        store = FirestoreStore.from_settings(settings)
        return cls(settings=settings, store=store, prices=PriceBook.from_settings(settings, utcnow, store))

    def provider(self, name: str) -> Provider:
        if name not in self.providers:
            self.providers[name] = build_provider(name, self.settings)
        return self.providers[name]

    def bucket(self) -> Storage:
        """The package bucket (imported late: most services never touch Cloud Storage)."""
        if self.storage is None:
            from spotleash.adapters.storage import Storage

            self.storage = Storage(self.settings.package_bucket or "", project=self.settings.project)
        return self.storage

    def package_storage(self) -> Storage | None:
        """The package bucket, or None when no bucket is configured (instances then only beat)."""
        if self.storage is None and not self.settings.package_bucket:
            return None
        return self.bucket()

    def publish_demand(self, event: DemandEvent) -> None:
        """Publish ``event`` and wait for Pub/Sub's confirmation (Transient when it does not come)."""
        if self.demand_bus is not None:
            self.demand_bus(event)
            return
        if self._publisher is None:  # Pub/Sub's client only where a demand is published
            from spotleash.adapters.pubsub import Publisher

            self._publisher = Publisher(self.settings)
        self._publisher.publish_and_wait(event, timeout_s=PUBLISH_TIMEOUT_S)

    def now(self) -> datetime:
        return self.clock()

    # Heartbeat tokens are derived, not stored: HMAC(signing key, instance id). A redelivered demand
    # re-derives the same token, and Firestore keeps only its sha256.
    def heartbeat_token(self, instance_id: str) -> str:
        key = self.settings.heartbeat_signing_key
        if key is None:
            raise ConfigError("SPOTLEASH_HEARTBEAT_SIGNING_KEY is not set: the launcher needs it to give each "
                              "instance a heartbeat token (terraform stores it in Secret Manager)")
        return hmac.new(key.get_secret_value().encode(), instance_id.encode(), hashlib.sha256).hexdigest()


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(token: str, stored_hash: str | None) -> bool:
    """Constant-time comparison of a presented token against the stored hash."""
    if not stored_hash:
        return False
    return hmac.compare_digest(token_hash(token), stored_hash)
