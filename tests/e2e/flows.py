"""Helpers for whole-flow tests on the local stack: publish events, read state, wait with deadlines.

These act only through the real interfaces: Pub/Sub publishes, Firestore reads, the official
Compute client and the fakes' control APIs. Nothing of spotleash's own is mocked.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from google.cloud import pubsub_v1

from local_emulator.routed_app import RoutedApp
from spotleash.adapters.firestore import FirestoreStore
from spotleash.config import Settings, load_settings
from spotleash.model import ENDED, InstanceRecord, State
from spotleash.polling import wait_until
from spotleash.providers import build_provider
from spotleash.topology import load_topology
from spotleash.wire.events import Component, DemandEvent, Event, LeaseEvent, ReleaseEvent


class Flows:
    def __init__(self) -> None:
        self.settings: Settings = load_settings()
        self.store = FirestoreStore.from_settings(self.settings)
        self.publisher = pubsub_v1.PublisherClient()
        self.project = self.settings.project
        self.compute_url = os.environ["SPOTLEASH_COMPUTE_ENDPOINT"]

    # ---- publishing
    def publish_raw(self, kind: str, data: bytes) -> str:
        topic = self.publisher.topic_path(self.project, load_topology().topic_of(kind))
        return str(self.publisher.publish(topic, data).result(timeout=10))

    def publish(self, event: Event) -> str:
        return self.publish_raw(event.KIND, event.to_bytes())

    def renew(self, lease_id: str, ttl_s: float | None = None) -> None:
        self.publish(LeaseEvent(lease_id=lease_id, ttl_s=ttl_s or self.settings.lease_ttl_s, holder="test"))

    def demand(self, lease_id: str, *, gpu: bool = False, ram_gb: float = 8.0) -> DemandEvent:
        event = DemandEvent(lease_id=lease_id, trigger="threshold", ram_percent=91.0,
                            components=[Component(name="vision", ram_gb=ram_gb, gpu=gpu)])
        self.publish(event)
        return event

    def release(self, lease_id: str, instance_id: str | None = None) -> None:
        self.publish(ReleaseEvent(lease_id=lease_id, instance_id=instance_id, reason="test release"))

    @contextmanager
    def lease_kept(self, lease_id: str) -> Iterator[None]:
        """Renew the lease in the background, as a live agent does."""
        stop = threading.Event()
        self.renew(lease_id)

        def beat() -> None:
            while not stop.wait(self.settings.lease_renew_s):
                self.renew(lease_id)

        t = threading.Thread(target=beat, daemon=True)
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join(timeout=5)

    # ---- reading
    def records_of(self, lease_id: str) -> list[InstanceRecord]:
        return self.store.instances_of_lease(lease_id, live_only=False)

    def wait_state(self, instance_id: str, states: set[State], timeout_s: float = 60) -> InstanceRecord:
        def check() -> InstanceRecord | None:
            r = self.store.get(instance_id)
            return r if r is not None and r.state in states else None

        return wait_until(check, timeout_s=timeout_s, interval_s=0.25, what=f"{instance_id} in {states}")

    def wait_ready(self, lease_id: str, timeout_s: float = 60) -> InstanceRecord:
        def check() -> InstanceRecord | None:
            ready = [r for r in self.records_of(lease_id) if r.state == State.READY]
            return ready[0] if ready else None

        return wait_until(check, timeout_s=timeout_s, interval_s=0.25, what=f"a READY instance of {lease_id}")

    def wait_first_ready(self, lease_id: str, timeout_s: float) -> InstanceRecord:
        """The lease's READY instance; fails at once when one of its instances ended (a launch that failed
        is not waited out to the timeout)."""
        def check() -> InstanceRecord | None:
            recs = self.records_of(lease_id)
            for r in recs:
                if r.state in ENDED:
                    raise AssertionError(f"{r.instance_id} ended {r.state}: {r.reason}")
            return next((r for r in recs if r.state == State.READY), None)

        got: InstanceRecord = wait_until(check, timeout_s=timeout_s, interval_s=0.5,
                                         what=f"a READY instance for {lease_id}")
        return got

    def wait_gone(self, rec: InstanceRecord, timeout_s: float = 60) -> InstanceRecord:
        """The record ended and the provider confirms the instance no longer exists."""
        provider = build_provider(rec.provider, self.settings)

        def check() -> InstanceRecord | None:
            r = self.store.get(rec.instance_id)
            if r is None or r.state not in ENDED:
                return None
            pid = r.provider_id or rec.provider_id
            return r if pid is None or provider.get(pid) is None else None

        return wait_until(check, timeout_s=timeout_s, interval_s=0.25, what=f"{rec.instance_id} deleted")

    def audit(self, instance_id: str) -> list[dict[str, Any]]:
        return self.store.audit_entries(instance_id)

    # ---- the compute fake
    def compute(self, method: str, path: str, **body: Any) -> Any:
        r = httpx.request(method, f"{self.compute_url}/_control/{path}", json=body or None, timeout=30)
        r.raise_for_status()
        return r.json()

    def vms(self) -> list[dict[str, Any]]:
        return list(self.compute("GET", "instances")["instances"])

    def vm(self, name: str) -> dict[str, Any] | None:
        return next((v for v in self.vms() if v["name"] == name), None)


def elapsed(t0: float) -> float:
    return time.monotonic() - t0


@contextmanager
def running(app: RoutedApp, flows: Flows) -> Iterator[RoutedApp]:
    """``app`` started; afterwards its agent stopped and every live instance of its lease released and gone."""
    try:
        app.start()
        yield app
    finally:
        app.stop()
        for r in flows.records_of(app.lease_id):
            if r.live:
                flows.release(app.lease_id)
                flows.wait_gone(r, timeout_s=60)
