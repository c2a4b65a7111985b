"""handle_heartbeat, in-process: 404, 401, stop replies, READY stamping, host key pinning, preemption."""

from __future__ import annotations

import hmac

import pytest
from tests.support.builders import DEP, MakeCtx, actions, beat, launched, put_record, record_of
from tests.support.clock import FakeClock
from tests.support.fake_provider import FakeProvider, FakeSshProvider
from tests.support.memory_store import MemoryStore

from spotleash.errors import ProviderTransient, Transient
from spotleash.model import Lease, State
from spotleash.services import context as context_module
from spotleash.services.context import Context, token_hash
from spotleash.services.heartbeat import BeatReply, handle_heartbeat
from spotleash.wire.events import GpuReport, Heartbeat
from spotleash.wire.snapshot import AbandonedAsk


def token(ctx: Context, instance_id: str) -> str:
    return ctx.heartbeat_token(instance_id)


def test_an_unknown_instance_is_404_and_nothing_is_written(ctx: Context, store: MemoryStore) -> None:
    reply = handle_heartbeat(ctx, Heartbeat(lease_id="lease-1", instance_id="sl-nobody"), "whatever")
    assert reply == BeatReply(404, "", "unknown instance")
    assert store.get("sl-nobody") is None and store.audit_entries() == []


@pytest.mark.parametrize("case", ["wrong_token", "other_instances_token", "wrong_lease", "no_stored_hash"])
def test_a_beat_that_does_not_prove_itself_is_401_and_changes_nothing(case: str, ctx: Context,
                                                                      store: MemoryStore,
                                                                      clock: FakeClock) -> None:
    rec = launched(ctx)
    presented, hb = token(ctx, rec.instance_id), beat(rec)
    if case == "wrong_token":
        presented = "0" * 64
    elif case == "other_instances_token":
        presented = token(ctx, "sl-someone-else")
    elif case == "wrong_lease":
        hb = beat(rec, lease_id="lease-2")
    else:
        store.update(rec.instance_id, lambda r: r.model_copy(update={"token_hash": None}))
    before = (record_of(store, rec.instance_id), len(store.audit_entries()))
    clock.advance(5)
    assert handle_heartbeat(ctx, hb, presented) == BeatReply(401, "", "wrong token")
    assert (record_of(store, rec.instance_id), len(store.audit_entries())) == before


def test_the_token_is_compared_in_constant_time(ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = launched(ctx)
    compared: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(context_module.hmac, "compare_digest", spy)
    handle_heartbeat(ctx, beat(rec), "not-the-token")
    assert compared == [(token_hash("not-the-token"), rec.token_hash)]


def test_the_first_beat_makes_it_ready_and_later_beats_keep_it_alive(ctx: Context, store: MemoryStore,
                                                                     clock: FakeClock,
                                                                     gce: FakeProvider) -> None:
    rec = launched(ctx)
    clock.advance(20)
    assert handle_heartbeat(ctx, beat(rec), token(ctx, rec.instance_id)) == BeatReply(200, "continue")
    ready = record_of(store, rec.instance_id)
    assert ready.state is State.READY and ready.last_heartbeat == clock.now
    assert ready.running_at == rec.running_at  # READY does not move the start of billing
    clock.advance(30)
    assert handle_heartbeat(ctx, beat(rec), token(ctx, rec.instance_id)).action == "continue"
    assert record_of(store, rec.instance_id).last_heartbeat == clock.now
    assert [a for a in actions(store, rec.instance_id) if a[0] == "ready"] == [("ready", "first heartbeat")]
    assert gce.calls_of("get") == [] and ready.host_key is None  # GCE is not reached over SSH: no key to learn


def test_a_beat_before_the_launch_recorded_running_still_makes_it_ready(ctx: Context, store: MemoryStore) -> None:
    put_record(ctx, "sl-early", state=State.PROVISIONING, token_hash=token_hash(token(ctx, "sl-early")))
    from spotleash.services.lifecycle import handle_lease
    from spotleash.wire.events import LeaseEvent

    handle_lease(ctx, LeaseEvent(lease_id="lease-1", ttl_s=90, created_at=ctx.now()))
    hb = Heartbeat(lease_id="lease-1", instance_id="sl-early")
    assert handle_heartbeat(ctx, hb, token(ctx, "sl-early")).action == "continue"
    assert record_of(store, "sl-early").state is State.READY


@pytest.mark.parametrize("state", [State.TERMINATING, State.TERMINATED, State.FAILED])
def test_an_instance_on_its_way_out_is_told_to_stop(state: State, ctx: Context, store: MemoryStore) -> None:
    rec = put_record(ctx, "sl-x", state=state, token_hash=token_hash(token(ctx, "sl-x")))
    reply = handle_heartbeat(ctx, beat(rec), token(ctx, "sl-x"))
    assert reply == BeatReply(200, "stop", f"instance is {state}")
    assert record_of(store, "sl-x") == rec and store.audit_entries() == []


@pytest.mark.parametrize("reason", ["lease_missing", "lease_expired"])
def test_a_beat_whose_lease_is_gone_deletes_the_instance(reason: str, ctx: Context, store: MemoryStore,
                                                         gce: FakeProvider, clock: FakeClock) -> None:
    rec = launched(ctx)
    if reason == "lease_missing":
        store.retire_lease("lease-1")  # the records were lost: the reaper cannot see it, the beat can
    else:
        clock.advance(91)
    assert handle_heartbeat(ctx, beat(rec), token(ctx, rec.instance_id)) == BeatReply(200, "stop", reason)
    done = record_of(store, rec.instance_id)
    assert done.state is State.TERMINATED and done.reason == reason
    assert gce.instances == {} and gce.calls_of("delete") == [rec.provider_id]
    assert actions(store, rec.instance_id)[-1] == ("heartbeat", reason)


def test_a_beat_whose_lease_is_gone_stops_even_if_the_delete_is_not_confirmed(
        make_ctx: MakeCtx, store: MemoryStore, gce: FakeProvider, clock: FakeClock) -> None:
    ctx = make_ctx(confirm_delete_s=0.01)
    rec = launched(ctx)
    clock.advance(91)
    gce.never_delete = True
    assert handle_heartbeat(ctx, beat(rec), token(ctx, rec.instance_id)) == BeatReply(200, "stop", "lease_expired")
    assert record_of(store, rec.instance_id).state is State.TERMINATING  # the reaper retries the delete
    assert actions(store, rec.instance_id)[-1] == ("heartbeat", "delete_unconfirmed")


# ------------------------------------------------------------------ SSH host keys (VAST)
def test_the_first_beat_of_an_ssh_box_pins_its_host_key(ctx: Context, store: MemoryStore,
                                                        vast: FakeSshProvider, clock: FakeClock) -> None:
    rec = launched(ctx, gpu=True)
    clock.advance(20)
    handle_heartbeat(ctx, beat(rec), token(ctx, rec.instance_id))
    pinned = record_of(store, rec.instance_id)
    assert pinned.state is State.READY
    assert pinned.host_key == f"ssh-ed25519 AAAAC3NzaFAKE{rec.ssh_port}"
    assert (pinned.ssh_host, pinned.ssh_port) == (rec.ssh_host, rec.ssh_port)
    assert vast.calls_of("learn_host_key") == [f"{rec.ssh_host}:{rec.ssh_port}"]
    clock.advance(30)
    handle_heartbeat(ctx, beat(rec), token(ctx, rec.instance_id))
    assert len(vast.calls_of("learn_host_key")) == 1  # pinned once, never learned again


# VastProvider.learn_host_key translates paramiko's errors into ProviderTransient (the control plane
# never imports paramiko); tests/emulator/test_vast_provider.py checks that translation.
@pytest.mark.parametrize("error", [ProviderTransient("ssh: timed out"), OSError("connection refused")])
def test_a_host_key_that_cannot_be_learned_does_not_fail_the_beat(error: Exception, ctx: Context,
                                                                  store: MemoryStore,
                                                                  vast: FakeSshProvider) -> None:
    rec = launched(ctx, gpu=True)
    vast.fail("learn_host_key", error)
    assert handle_heartbeat(ctx, beat(rec), token(ctx, rec.instance_id)).action == "continue"
    after = record_of(store, rec.instance_id)
    assert after.state is State.READY and after.host_key is None  # the next SSH session learns it


def test_no_host_key_is_learned_from_a_box_the_provider_no_longer_has(ctx: Context, store: MemoryStore,
                                                                      vast: FakeSshProvider) -> None:
    rec = launched(ctx, gpu=True)
    vast.vanish(rec.provider_id or "")
    assert handle_heartbeat(ctx, beat(rec), token(ctx, rec.instance_id)).action == "continue"
    assert record_of(store, rec.instance_id).host_key is None and vast.calls_of("learn_host_key") == []


# ------------------------------------------------------------------ preemption
def test_a_preemption_notice_replaces_the_instance_and_keeps_it_for_its_grace(
        ctx: Context, store: MemoryStore, gce: FakeProvider, clock: FakeClock) -> None:
    rec = launched(ctx)
    clock.advance(20)
    reply = handle_heartbeat(ctx, beat(rec, preempted=True), token(ctx, rec.instance_id))
    assert (reply.status, reply.action) == (200, "stop") and "snapshot asks are answered for 30 s" in reply.detail
    old = record_of(store, rec.instance_id)
    assert old.state is State.READY and old.preempted and old.preempted_at == clock.now
    assert old.replaced_by is not None
    new = record_of(store, old.replaced_by)
    assert new.state is State.RUNNING and new.replaces == rec.instance_id and new.lease_id == "lease-1"
    assert sorted(p.instance_id for p in gce.instances.values()) == sorted([rec.instance_id, new.instance_id])
    assert [a for a, _ in actions(store, rec.instance_id)][-3:] == ["ready", "preempted", "failover"]


def test_a_preempted_instances_snapshot_asks_are_answered_during_its_grace_only(
        ctx: Context, store: MemoryStore, clock: FakeClock) -> None:
    rec = launched(ctx)
    handle_heartbeat(ctx, beat(rec, preempted=True), token(ctx, rec.instance_id))
    clock.advance(29)
    asking = beat(rec).model_copy(update={"snapshot": AbandonedAsk(snapshot_id="s-1", detail="disk full")})
    reply = handle_heartbeat(ctx, asking, token(ctx, rec.instance_id))
    assert (reply.action, reply.snapshot) == ("stop", {"kind": "noted"})  # answered; the agent beats no more
    clock.advance(1)
    late = handle_heartbeat(ctx, asking, token(ctx, rec.instance_id))
    assert (late.action, late.detail, late.snapshot) == ("stop", "preempted; its grace is over", None)


def test_the_first_beat_past_the_grace_ends_it_as_preempted(ctx: Context, store: MemoryStore, gce: FakeProvider,
                                                            clock: FakeClock) -> None:
    rec = launched(ctx)
    handle_heartbeat(ctx, beat(rec, preempted=True), token(ctx, rec.instance_id))
    clock.advance(31)
    assert handle_heartbeat(ctx, beat(rec), token(ctx, rec.instance_id)).action == "stop"
    old = record_of(store, rec.instance_id)
    assert old.state is State.TERMINATED and old.reason == "preempted" and old.replaced_by is not None
    assert gce.by_instance_id(rec.instance_id) is None and gce.by_instance_id(old.replaced_by) is not None


def test_with_no_grace_the_notice_ends_it_at_once(make_ctx: MakeCtx, store: MemoryStore, gce: FakeProvider) -> None:
    ctx = make_ctx(preemption_grace_s=0)
    rec = launched(ctx)
    reply = handle_heartbeat(ctx, beat(rec, preempted=True), token(ctx, rec.instance_id))
    assert reply == BeatReply(200, "stop", "preempted; a replacement is asked for")
    old = record_of(store, rec.instance_id)
    assert old.state is State.TERMINATED and old.reason == "preempted" and old.replaced_by is not None
    assert [a for a, _ in actions(store, rec.instance_id)][-4:] == ["ready", "preempted", "failover", "preempted"]


def test_a_preempted_instance_whose_delete_stalls_still_gets_its_replacement(
        make_ctx: MakeCtx, store: MemoryStore, gce: FakeProvider) -> None:
    ctx = make_ctx(confirm_delete_s=0.01, preemption_grace_s=0)
    rec = launched(ctx)
    gce.fail("delete", ProviderTransient("503"), target=rec.provider_id)
    reply = handle_heartbeat(ctx, beat(rec, preempted=True), token(ctx, rec.instance_id))
    assert reply.action == "stop"
    old = record_of(store, rec.instance_id)
    assert old.state is State.TERMINATING and old.replaced_by is not None
    assert record_of(store, old.replaced_by).state is State.RUNNING


def test_a_repeated_preemption_notice_launches_no_second_replacement(ctx: Context, store: MemoryStore,
                                                                     gce: FakeProvider) -> None:
    rec = launched(ctx)
    store.update(rec.instance_id, lambda r: r.model_copy(update={"preempted": True}))
    reply = handle_heartbeat(ctx, beat(rec, preempted=True), token(ctx, rec.instance_id))
    assert (reply.status, reply.action) == (200, "stop")
    assert "failover" not in [a for a, _ in actions(store)] and len(gce.instances) == 1


def test_of_two_beats_carrying_one_notice_only_the_one_that_recorded_it_fails_over(
        ctx: Context, store: MemoryStore, gce: FakeProvider, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent's beat and its snapshot ask's beat both say preempted; whichever the store records first
    launches the replacement, the other one finds it recorded (they raced: a second launch was a 500)."""
    rec = launched(ctx)
    before = record_of(store, rec.instance_id)  # what both handlers read, before either wrote
    first = handle_heartbeat(ctx, beat(rec, preempted=True), token(ctx, rec.instance_id))
    clock.advance(0.2)
    read = store.get
    monkeypatch.setattr(store, "get", lambda iid: before if iid == rec.instance_id else read(iid))
    second = handle_heartbeat(ctx, beat(rec, preempted=True), token(ctx, rec.instance_id))
    assert (first.status, second.status, second.action) == (200, 200, "stop")
    assert [a for a, _ in actions(store)].count("failover") == 1 and len(gce.instances) == 2


def test_a_preemption_after_the_lease_expired_is_just_a_stop(ctx: Context, store: MemoryStore, gce: FakeProvider,
                                                            clock: FakeClock) -> None:
    rec = launched(ctx)
    store.put_lease(Lease(lease_id="lease-1", deployment_id=DEP, expires_at=clock.now, renewed_at=clock.now))
    reply = handle_heartbeat(ctx, beat(rec, preempted=True), token(ctx, rec.instance_id))
    assert reply == BeatReply(200, "stop", "lease_expired")
    assert record_of(store, rec.instance_id).replaced_by is None and gce.instances == {}


def test_a_preemption_whose_failover_demand_cannot_be_published_is_left_for_the_reaper(
        ctx: Context, store: MemoryStore, gce: FakeProvider) -> None:
    rec = launched(ctx)

    def pubsub_down(event: object) -> None:
        raise Transient("publishing demand event not confirmed within 10.0s")

    ctx.demand_bus = pubsub_down
    reply = handle_heartbeat(ctx, beat(rec, preempted=True), token(ctx, rec.instance_id))
    assert reply.action == "stop"
    old = record_of(store, rec.instance_id)
    # Still live and unreplaced: once the provider has taken it, the reaper decides it lost and asks again.
    assert old.live and old.preempted and old.replaced_by is None and len(gce.instances) == 1
    assert "failover" not in [a for a, _ in actions(store, rec.instance_id)]


def test_the_record_keeps_the_gpus_of_the_last_beat(ctx: Context, store: MemoryStore, clock: FakeClock) -> None:
    rec = launched(ctx)
    rtx = GpuReport(name="NVIDIA GeForce RTX 4090", memory_total_mib=24564, memory_used_mib=9000,
                    utilization_percent=71.0)
    clock.advance(5)
    busy = beat(rec).model_copy(update={"gpus": [rtx]})
    assert handle_heartbeat(ctx, busy, token(ctx, rec.instance_id)).action == "continue"
    assert record_of(store, rec.instance_id).gpus == [rtx]
    clock.advance(5)
    assert handle_heartbeat(ctx, beat(rec), token(ctx, rec.instance_id)).action == "continue"
    assert record_of(store, rec.instance_id).gpus == []  # the last beat says: none now
