"""The instance record's state machine, its cost arithmetic, deterministic ids and lease expiry."""

from __future__ import annotations

import itertools
import re
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spotleash.errors import InvalidTransition
from spotleash.model import (
    ENDED,
    LIVE,
    InstanceRecord,
    Lease,
    State,
    can_transition,
    instance_id_for,
    new_record,
    transition,
)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
GCE_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
GCE_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")

S = State
ALLOWED = {  # the lifecycle, written out independently of the module's table
    (S.REQUESTED, S.PROVISIONING), (S.REQUESTED, S.RUNNING), (S.REQUESTED, S.TERMINATING), (S.REQUESTED, S.FAILED),
    (S.PROVISIONING, S.RUNNING), (S.PROVISIONING, S.READY), (S.PROVISIONING, S.TERMINATING),
    (S.PROVISIONING, S.FAILED),
    (S.RUNNING, S.READY), (S.RUNNING, S.TERMINATING),
    (S.READY, S.TERMINATING),
    (S.TERMINATING, S.TERMINATED),
    (S.TERMINATING, S.FAILED),  # deleted because it never did its job (package or components unhealthy)
}
PAIRS = list(itertools.product(State, State))


def record(state: State = S.REQUESTED, **kw: object) -> InstanceRecord:
    base = new_record(instance_id="sl-abc", lease_id="lease-1", deployment_id="default", event_id="ev1",
                      provider="gce", now=T0, max_runtime_s=3 * 3600, price_per_hour=0.0528)
    return base.model_copy(update={"state": state, **kw})


def test_live_and_ended_partition_the_states() -> None:
    assert LIVE | ENDED == set(State)
    assert not LIVE & ENDED
    assert ENDED == {S.TERMINATED, S.FAILED}


@pytest.mark.parametrize(("src", "dst"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_every_transition(src: State, dst: State) -> None:
    allowed = (src, dst) in ALLOWED or src == dst  # staying put is an idempotent no-op
    assert can_transition(src, dst) is allowed
    rec = record(src)
    later = T0 + timedelta(seconds=5)
    if allowed:
        out = transition(rec, dst, later)
        assert out.state == dst and out.updated_at == later
        assert rec.state == src  # records are immutable: transition returns a new one
    else:
        with pytest.raises(InvalidTransition, match=f"{src} -> {dst}"):
            transition(rec, dst, later)


@pytest.mark.parametrize("src", sorted(ENDED))
def test_ended_is_final(src: State) -> None:
    for dst in State:
        assert can_transition(src, dst) is (dst == src)


def test_no_path_back_to_requested_and_failed_only_before_running_or_once_deleted() -> None:
    for src in State:
        if src != S.REQUESTED:
            assert not can_transition(src, S.REQUESTED)
    # FAILED straight from a state only before anything runs; after that only through a confirmed
    # deletion (TERMINATING), so a FAILED record never leaves anything at the provider.
    assert {s for s in State if s != S.FAILED and can_transition(s, S.FAILED)} == {
        S.REQUESTED, S.PROVISIONING, S.TERMINATING}


def test_every_live_state_can_reach_terminated() -> None:
    for src in LIVE:
        frontier, seen = {src}, set()
        while frontier:
            s = frontier.pop()
            seen.add(s)
            frontier |= {d for d in State if can_transition(s, d)} - seen
        assert S.TERMINATED in seen


@pytest.mark.parametrize("dst", [S.RUNNING, S.READY])
def test_running_at_stamped_once(dst: State) -> None:
    t1, t2 = T0 + timedelta(seconds=10), T0 + timedelta(seconds=99)
    out = transition(record(S.PROVISIONING), dst, t1)
    assert out.running_at == t1
    if dst == S.RUNNING:
        assert transition(out, S.READY, t2).running_at == t1  # not moved by a later state


def test_running_at_explicit_value_wins() -> None:
    at = T0 + timedelta(seconds=3)
    assert transition(record(S.PROVISIONING), S.RUNNING, T0 + timedelta(seconds=9), running_at=at).running_at == at


def test_running_at_not_stamped_by_other_states() -> None:
    assert transition(record(), S.PROVISIONING, T0 + timedelta(seconds=1)).running_at is None
    assert transition(record(), S.TERMINATING, T0 + timedelta(seconds=1)).running_at is None


@pytest.mark.parametrize(("src", "dst"), [(S.TERMINATING, S.TERMINATED), (S.REQUESTED, S.FAILED),
                                          (S.PROVISIONING, S.FAILED)])
def test_ended_at_stamped(src: State, dst: State) -> None:
    t = T0 + timedelta(minutes=7)
    out = transition(record(src), dst, t, reason="done")
    assert out.ended_at == t and out.reason == "done" and not out.live


def test_ended_at_not_moved_by_repeat_and_explicit_value_wins() -> None:
    t1, t2 = T0 + timedelta(minutes=1), T0 + timedelta(minutes=2)
    done = transition(record(S.TERMINATING), S.TERMINATED, t1)
    assert transition(done, S.TERMINATED, t2).ended_at == t1  # an idempotent repeat keeps the first time
    explicit = T0 + timedelta(seconds=30)  # e.g. the provider's own deletion time
    assert transition(record(S.TERMINATING), S.TERMINATED, t2, ended_at=explicit).ended_at == explicit


def test_live_states_do_not_stamp_ended_at() -> None:
    assert transition(record(S.RUNNING), S.TERMINATING, T0 + timedelta(seconds=1)).ended_at is None


def test_new_record() -> None:
    r = record()
    assert r.state == S.REQUESTED and r.live
    assert r.created_at == r.updated_at == T0
    assert r.deadline == T0 + timedelta(hours=3)
    assert r.running_at is None and r.ended_at is None and r.attempts == 0


def test_records_need_aware_datetimes() -> None:
    with pytest.raises(ValueError, match="timezone"):
        new_record(instance_id="i", lease_id="l", deployment_id="d", event_id="e", provider="gce",
                   now=datetime(2025, 3, 1), max_runtime_s=60)


def test_record_survives_a_firestore_style_round_trip() -> None:
    r = transition(record(S.PROVISIONING), S.RUNNING, T0 + timedelta(seconds=40), provider_id="sl-abc",
                   zone="us-central1-a", components=["vision"])
    again = InstanceRecord.model_validate({**r.model_dump(), "field_from_a_newer_build": 1})
    assert again == r


# --- cost -----------------------------------------------------------------------------------------


def test_cost_so_far_is_zero_before_running() -> None:
    assert record(S.PROVISIONING).cost_so_far(T0 + timedelta(hours=5)) == 0.0


def test_cost_so_far_runs_with_the_clock() -> None:
    r = record(S.RUNNING, running_at=T0, price_per_hour=0.5)
    assert r.cost_so_far(T0) == 0.0
    assert r.cost_so_far(T0 + timedelta(minutes=30)) == 0.25
    assert r.cost_so_far(T0 + timedelta(hours=2)) == 1.0
    assert r.cost_so_far(T0 - timedelta(minutes=5)) == 0.0  # a clock behind never gives a negative cost


def test_cost_so_far_stops_at_ended_at() -> None:
    r = record(S.RUNNING, running_at=T0, price_per_hour=0.5)
    done = transition(transition(r, S.TERMINATING, T0 + timedelta(hours=1)), S.TERMINATED,
                      T0 + timedelta(hours=1, minutes=30))
    assert done.cost_so_far(T0 + timedelta(days=10)) == 0.75


def test_worst_case_cost() -> None:
    r = record(S.REQUESTED, price_per_hour=0.0528)
    assert r.worst_case_cost() == pytest.approx(3 * 0.0528)  # created_at -> deadline
    started = record(S.RUNNING, running_at=T0 + timedelta(hours=1), price_per_hour=1.0)
    assert started.worst_case_cost() == pytest.approx(2.0)  # running_at -> deadline
    late = record(S.RUNNING, running_at=T0 + timedelta(hours=4), price_per_hour=1.0)
    assert late.worst_case_cost() == 0.0


@given(st.floats(0, 10), st.integers(0, 4 * 3600), st.integers(0, 4 * 3600))
def test_cost_never_exceeds_worst_case_before_the_deadline(price: float, start_s: int, elapsed_s: int) -> None:
    r = record(S.RUNNING, running_at=T0 + timedelta(seconds=start_s), price_per_hour=price)
    now = min(r.running_at + timedelta(seconds=elapsed_s), r.deadline)  # type: ignore[operator]
    assert 0.0 <= r.cost_so_far(now) <= r.worst_case_cost() + 1e-6


# --- ids -------------------------------------------------------------------------------------------


def test_instance_id_is_deterministic() -> None:
    assert instance_id_for("ev1") == instance_id_for("ev1") == instance_id_for("ev1", 0)
    assert instance_id_for("ev1") != instance_id_for("ev2")
    assert instance_id_for("ev1", 0) != instance_id_for("ev1", 1)
    assert instance_id_for("ev1/1", 0) != instance_id_for("ev1", 1)  # the slot is split off at the last '/'


@given(st.text(max_size=200), st.integers(0, 1000))
def test_instance_id_is_a_valid_gce_name_and_label(event_id: str, slot: int) -> None:
    iid = instance_id_for(event_id, slot)
    assert GCE_NAME.fullmatch(iid), iid
    assert GCE_LABEL_VALUE.fullmatch(iid)
    assert len(iid) <= 63


# --- leases ----------------------------------------------------------------------------------------


def lease(**kw: object) -> Lease:
    return Lease(lease_id="lease-1", deployment_id="default", expires_at=T0 + timedelta(seconds=90), renewed_at=T0,
                 **kw)  # type: ignore[arg-type]


def test_lease_expires_exactly_at_expires_at() -> None:
    le = lease()
    assert not le.expired(T0)
    assert not le.expired(T0 + timedelta(seconds=89, microseconds=999_999))
    assert le.expired(T0 + timedelta(seconds=90))
    assert le.expired(T0 + timedelta(days=1))


def test_a_released_lease_is_expired_at_once() -> None:
    assert lease(released=True).expired(T0)
    assert lease(released=True).expired(T0 - timedelta(days=1))
