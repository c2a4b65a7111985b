"""The reaper's lease re-check on ``FirestoreStore`` over Google's Firestore emulator (the in-memory store's
version of these races is in tests/unit/services/test_reap_service.py).

A reap reads an expired lease and decides ``lease_expired``; the agent's renewal is handled before the
deletion: the re-check, in the Firestore transaction that would move the instance to TERMINATING, must see
it and spare the instance. Without a renewal the same steps delete the instance. The providers are the
in-process fakes of tests/support: what is under test is the store's transaction, not a cloud. The same
holds for a lease with nothing live left: a renewal before its deletion keeps it (``Store.retire_lease_if``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from tests.conftest import TEST_PROJECT
from tests.emulator.emulator_fixtures import empty_firestore, firestore_emulator
from tests.support.builders import DEP, launched, open_lease, record_of
from tests.support.clock import FakeClock
from tests.support.fake_provider import FakeProvider, FakeSshProvider

from spotleash.adapters.firestore import FirestoreStore
from spotleash.config import Settings
from spotleash.decide.reap import lease_retirable
from spotleash.model import State
from spotleash.services import reap as reap_module
from spotleash.services import terminate as terminate_module
from spotleash.services.context import Context

pytestmark = [pytest.mark.emulator]

SETTINGS: dict[str, Any] = {
    "deployment_id": DEP, "heartbeat_signing_key": "k" * 32, "heartbeat_url": "http://127.0.0.1:9/beat",
    "vast_api_key": "vast-key", "confirm_delete_s": 5.0, "max_instances_per_lease": 2, "max_instances_total": 10,
    "monthly_budget_usd": 50.0, "heartbeat_timeout_s": 180.0, "provisioning_timeout_s": 600.0,
    "orphan_grace_s": 300.0, "reap_max_deletions": 20, "lease_ttl_s": 90.0, "max_runtime_s": 3600,
}


@pytest.fixture(scope="module")
def firestore_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with firestore_emulator(tmp_path_factory.mktemp("firestore-emulator")) as host:
        yield host


@pytest.fixture
def world(firestore_host: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Context, FakeClock, FakeProvider]:
    from google.cloud import firestore

    empty_firestore(firestore_host)
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_host)
    monkeypatch.setattr(terminate_module, "CONFIRM_POLL_S", 0.001)
    clock = FakeClock()
    gce = FakeProvider("gce", clock)
    ctx = Context(settings=Settings(**SETTINGS), store=FirestoreStore(firestore.Client(project=TEST_PROJECT), DEP),
                  clock=clock, providers={"gce": gce, "vast": FakeSshProvider("vast", clock)}, sleep=clock.sleep, ticks=clock.ticks)
    return ctx, clock, gce


def plan_of(ctx: Context) -> list[Any]:
    """The reap's read and decisions, as run_reap makes them, without carrying them out."""
    from spotleash.decide.reap import ReapConfig, decide_reaps

    records, leases, inventories = reap_module.gather(ctx, ["gce"])
    plan = decide_reaps(records, leases, inventories, ctx.now(), ReapConfig.from_settings(ctx.settings))
    return list(plan.decisions)


def test_a_renewal_committed_between_the_read_and_the_deletion_spares_the_instance(world: Any) -> None:
    ctx, clock, gce = world
    rec = launched(ctx)
    clock.advance(91)
    [decision] = plan_of(ctx)
    assert (decision.reason, decision.instance_id) == ("lease_expired", rec.instance_id)
    open_lease(ctx)  # the agent's renewal, handled after the reap's read
    assert reap_module._execute(ctx, decision) is False
    assert record_of(ctx.store, rec.instance_id).state is State.RUNNING
    assert gce.by_instance_id(rec.instance_id) is not None and gce.calls_of("delete") == []
    lease = ctx.store.get_lease("lease-1")
    assert lease is not None and not lease.released and lease.expires_at > clock.now
    last = ctx.store.audit_entries(rec.instance_id)[-1]
    assert (last["action"], last["reason"], last["lease_id"]) == ("reap_saved", "lease_renewed", "lease-1")


def test_without_a_renewal_the_instance_is_deleted(world: Any) -> None:
    ctx, clock, gce = world
    rec = launched(ctx)
    clock.advance(91)
    [decision] = plan_of(ctx)
    assert reap_module._execute(ctx, decision) is True
    done = record_of(ctx.store, rec.instance_id)
    assert done.state is State.TERMINATED and done.reason == "lease_expired"
    assert gce.by_instance_id(rec.instance_id) is None
    assert not [e for e in ctx.store.audit_entries() if e["action"] == "reap_saved"]


def test_a_renewal_committed_between_the_read_and_the_retirement_keeps_the_lease(world: Any) -> None:
    """A lease with nothing live, read expired: the agent's renewal is handled before the reap deletes it. The
    deleting Firestore transaction re-reads it and keeps it; without the renewal the same step deletes it."""
    ctx, clock, _ = world
    open_lease(ctx)
    clock.advance(91)
    [read] = ctx.store.expired_leases(ctx.now())
    assert lease_retirable(read, ctx.now()) and ctx.store.instances_of_lease("lease-1") == []
    open_lease(ctx)  # the agent's renewal, handled after the reap's read
    reap_module._retire_if_still_due(ctx, read)
    lease = ctx.store.get_lease("lease-1")
    assert lease is not None and not lease.released and lease.expires_at > clock.now
    saved = [e for e in ctx.store.audit_entries() if e["action"] == "lease_saved"]
    assert [(e["reason"], e["lease_id"]) for e in saved] == [("lease_renewed", "lease-1")]
    clock.advance(91)
    [read] = ctx.store.expired_leases(ctx.now())
    reap_module._retire_if_still_due(ctx, read)
    assert ctx.store.get_lease("lease-1") is None
    assert len([e for e in ctx.store.audit_entries() if e["action"] == "lease_saved"]) == 1
