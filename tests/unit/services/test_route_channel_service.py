"""The control plane's part of the router's channel, in-process on the memory store and fake providers:
the demand's route credential hash reaches the instance's config (and a failover's), and the TLS front's
certificate fingerprint is pinned at the first authenticated beat; a later beat naming another is refused
and audited, and the record keeps the first."""

from __future__ import annotations

from datetime import timedelta

from tests.support.builders import actions, demand, open_lease, record_of
from tests.support.clock import FakeClock
from tests.support.fake_provider import FakeProvider
from tests.support.memory_store import MemoryStore

from spotleash.model import InstanceRecord, State
from spotleash.router.channel import credential_hash, new_credential
from spotleash.services.context import Context
from spotleash.services.heartbeat import BeatReply, handle_heartbeat
from spotleash.services.launch import failover_event, handle_demand
from spotleash.wire.agent_config import AgentConfig
from spotleash.wire.events import ComponentReport, Heartbeat

FP1, FP2 = "1" * 64, "2" * 64


def launched_with_route(ctx: Context, cred_hash: str) -> InstanceRecord:
    open_lease(ctx)
    ev = demand().model_copy(update={"route_credential_sha256": cred_hash})
    out = handle_demand(ctx, ev)
    assert out.state is State.RUNNING, out
    return record_of(ctx.store, out.instance_id)


def send(ctx: Context, rec: InstanceRecord, fingerprint: str | None, *, token: str | None = None) -> BeatReply:
    hb = Heartbeat(lease_id=rec.lease_id, instance_id=rec.instance_id, tls_fingerprint=fingerprint,
                   components={"ml_models": ComponentReport(state="healthy", endpoint="127.0.0.1:8443")})
    return handle_heartbeat(ctx, hb, token if token is not None else ctx.heartbeat_token(rec.instance_id))


def test_the_route_credential_hash_travels_from_demand_to_the_instance_config(ctx: Context, gce: FakeProvider) -> None:
    cred = new_credential()
    rec = launched_with_route(ctx, credential_hash(cred))
    assert rec.route_credential_sha256 == credential_hash(cred)
    spec = gce.specs[-1]
    assert spec.route_credential_sha256 == credential_hash(cred)
    cfg = AgentConfig.for_launch(spec)
    assert cfg.route_credential_sha256 == credential_hash(cred) and cfg.front_port == 8443
    assert cred not in cfg.to_json() and cred not in rec.model_dump_json()  # only its hash leaves the laptop
    # a failover's demand asks for the same credential, so the replacement admits the same router
    assert failover_event(rec, ctx.now()).route_credential_sha256 == credential_hash(cred)


def test_a_demand_without_a_router_launches_an_instance_without_a_front(ctx: Context, gce: FakeProvider) -> None:
    open_lease(ctx)
    out = handle_demand(ctx, demand())
    assert record_of(ctx.store, out.instance_id).route_credential_sha256 is None
    assert AgentConfig.for_launch(gce.specs[-1]).route_credential_sha256 == ""


def test_the_fingerprint_is_pinned_at_the_first_beat_and_a_different_one_is_refused(
        ctx: Context, store: MemoryStore, clock: FakeClock) -> None:
    rec = launched_with_route(ctx, credential_hash(new_credential()))
    assert send(ctx, rec, FP1) == BeatReply(200, "continue")
    pinned = record_of(store, rec.instance_id)
    assert pinned.tls_fingerprint == FP1 and pinned.state is State.READY
    clock.advance(10)
    assert send(ctx, rec, FP1) == BeatReply(200, "continue")  # the same certificate: business as usual
    assert record_of(store, rec.instance_id).last_heartbeat == clock.now
    clock.advance(10)
    refused = send(ctx, rec, FP2)
    assert refused.status == 409 and "pinned" in refused.detail
    after = record_of(store, rec.instance_id)
    assert after.tls_fingerprint == FP1, "the first certificate stays the one the router trusts"
    assert after.last_heartbeat == clock.now - timedelta(seconds=10), \
        "a refused beat keeps nothing: not even as a sign of life"
    audit = [e for e in store.audit_entries(rec.instance_id) if e["action"] == "tls_fingerprint_refused"]
    assert len(audit) == 1 and audit[0]["pinned"] == FP1 and audit[0]["presented"] == FP2


def test_a_beat_without_a_fingerprint_neither_pins_nor_unpins(ctx: Context, store: MemoryStore) -> None:
    rec = launched_with_route(ctx, credential_hash(new_credential()))
    assert send(ctx, rec, None).status == 200
    assert record_of(store, rec.instance_id).tls_fingerprint is None
    assert send(ctx, rec, FP1).status == 200
    assert send(ctx, rec, None).status == 200
    assert record_of(store, rec.instance_id).tls_fingerprint == FP1


def test_only_an_authenticated_beat_can_pin(ctx: Context, store: MemoryStore) -> None:
    rec = launched_with_route(ctx, credential_hash(new_credential()))
    assert send(ctx, rec, FP2, token="not-the-token").status == 401
    assert record_of(store, rec.instance_id).tls_fingerprint is None
    assert ("tls_fingerprint_refused", "fingerprint differs from the pinned one") not in actions(store)
    assert send(ctx, rec, FP1).status == 200
    assert record_of(store, rec.instance_id).tls_fingerprint == FP1
