"""In-process service tests: a Context on the in-memory store, fake providers and a fake clock.

    def test_x(ctx, store, gce, clock):      # ctx.store is store, ctx.provider("gce") is gce
        open_lease(ctx, "lease-1")           # builders: tests/support/builders.py
        handle_demand(ctx, demand("lease-1"))

``make_ctx(**settings)`` builds another Context on the same store, fakes and clock with other settings.
No test here does I/O or waits: the clock only moves when a test (or a retry's backoff) moves it.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from tests.support.builders import DEP, MakeCtx
from tests.support.clock import FakeClock
from tests.support.fake_provider import FakeProvider, FakeSshProvider
from tests.support.memory_store import MemoryStore

from spotleash.config import ENV_PREFIX, Settings
from spotleash.services import terminate as terminate_module
from spotleash.services.context import Context
from spotleash.services.launch import handle_demand

BASE_SETTINGS: dict[str, Any] = {
    "deployment_id": DEP, "heartbeat_signing_key": "k" * 32, "heartbeat_url": "http://127.0.0.1:9/beat",
    "vast_api_key": "vast-key", "launch_retry_s": 60.0, "confirm_delete_s": 5.0, "demand_cooldown_s": 120.0,
    "max_instances_per_lease": 2, "max_instances_total": 10, "monthly_budget_usd": 50.0,
    "heartbeat_timeout_s": 180.0, "provisioning_timeout_s": 600.0, "orphan_grace_s": 300.0,
    "reap_max_deletions": 20, "lease_ttl_s": 90.0, "max_runtime_s": 3600,
}


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(key)
    # terminate() polls the provider every CONFIRM_POLL_S (real time, bounded by confirm_delete_s): poll at once.
    monkeypatch.setattr(terminate_module, "CONFIRM_POLL_S", 0.001)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore(DEP)


@pytest.fixture
def gce(clock: FakeClock) -> FakeProvider:
    return FakeProvider("gce", clock)


@pytest.fixture
def vast(clock: FakeClock) -> FakeSshProvider:
    return FakeSshProvider("vast", clock)


@pytest.fixture
def make_ctx(store: MemoryStore, gce: FakeProvider, vast: FakeSshProvider, clock: FakeClock) -> MakeCtx:
    def make(**overrides: Any) -> Context:
        ctx = Context(settings=Settings(**{**BASE_SETTINGS, **overrides}), store=store, clock=clock,
                      providers={"gce": gce, "vast": vast}, sleep=clock.sleep, ticks=clock.ticks)
        ctx.demand_bus = lambda event: handle_demand(ctx, event)  # on_demand, in this process
        return ctx

    return make


@pytest.fixture
def ctx(make_ctx: MakeCtx) -> Context:
    return make_ctx()
