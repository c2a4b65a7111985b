"""The router's pure decisions: where each component's new requests go, and when that changes."""

from __future__ import annotations

import itertools

import pytest

from spotleash.router.table import (
    Failure,
    Policy,
    Probes,
    RemoteState,
    Route,
    RouteTable,
    TargetKind,
    decide_target,
    least_bad,
)

FP = "ab" * 32


def remote(iid: str = "sl-1", state: str = "READY", comp: str | None = "healthy", endpoint: str | None = "10.0.0.1:8443",
           fingerprint: str | None = FP, preempted: bool = False) -> RemoteState:
    return RemoteState(iid, state, comp, endpoint, fingerprint, preempted)


PASSING = Probes(ok_streak=1, fail_streak=0, last_at=100.0)


def test_local_while_no_remote() -> None:
    d = decide_target("thumbs", True, None, Probes(), 100.0)
    assert d.target == TargetKind.LOCAL
    assert d.reason == "no remote copy"


def test_remote_once_ready_and_its_own_probe_passes() -> None:
    assert decide_target("thumbs", True, remote(), Probes(), 100.0).reason == "awaiting the first probe of sl-1"
    d = decide_target("thumbs", True, remote(), PASSING, 100.0)
    assert d.target == TargetKind.REMOTE
    assert d.remote == remote()
    assert d.key == "remote:sl-1"


@pytest.mark.parametrize(("r", "released", "why"), [
    (remote(state="RUNNING"), False, "not ready (RUNNING)"),
    (remote(state="PROVISIONING"), False, "not ready (PROVISIONING)"),
    (remote(state="TERMINATING"), False, "ending (TERMINATING)"),
    (remote(state="TERMINATED"), False, "ending (TERMINATED)"),
    (remote(state="FAILED"), False, "ending (FAILED)"),
    (remote(preempted=True), False, "preemption notice"),
    (remote(), True, "lease released"),
    (remote(comp="starting"), False, "component is starting"),
    (remote(comp="failing"), False, "component is failing"),
    (remote(comp=None), False, "component is not reported"),
    (remote(endpoint=None), False, "no endpoint or certificate fingerprint"),
    (remote(fingerprint=None), False, "no endpoint or certificate fingerprint"),
])
def test_back_to_local_with_the_reason(r: RemoteState, released: bool, why: str) -> None:
    current = Route(TargetKind.REMOTE, "was remote", remote())
    d = decide_target("thumbs", True, r, PASSING, 100.0, lease_released=released, current=current)
    assert d.target == TargetKind.LOCAL
    assert why in d.reason


def test_in_use_remote_survives_one_failed_probe_and_leaves_after_fall() -> None:
    current = Route(TargetKind.REMOTE, "", remote())
    one = PASSING.record(False, 101.0, "timeout")
    assert decide_target("c", True, remote(), one, 101.0, current=current).target == TargetKind.REMOTE
    two = one.record(False, 102.0, "timeout")
    d = decide_target("c", True, remote(), two, 102.0, current=current)
    assert d.target == TargetKind.LOCAL
    assert "failing (2 in a row: timeout)" in d.reason


def test_unused_remote_needs_rise_passes_after_a_failure() -> None:
    policy = Policy(rise=2, fall=2)
    failed = PASSING.record(False, 101.0, "refused")
    assert decide_target("c", True, remote(), failed, 101.0, policy=policy).target == TargetKind.LOCAL
    once = failed.record(True, 102.0)
    assert "passed 1/2 times" in decide_target("c", True, remote(), once, 102.0, policy=policy).reason
    twice = once.record(True, 103.0)
    assert decide_target("c", True, remote(), twice, 103.0, policy=policy).target == TargetKind.REMOTE


def test_stale_probe_is_not_trusted() -> None:
    d = decide_target("c", True, remote(), PASSING, 100.0 + Policy().stale_s + 1)
    assert d.target == TargetKind.LOCAL
    assert "s old" in d.reason


def test_no_target_when_local_down_and_remote_unusable() -> None:
    assert decide_target("c", False, None, Probes(), 1.0).target == TargetKind.NONE
    d = decide_target("c", False, remote(state="TERMINATING"), PASSING, 100.0)
    assert d.target == TargetKind.NONE
    assert "local copy of c not answering" in d.reason
    assert decide_target("c", False, remote(), PASSING, 100.0).target == TargetKind.REMOTE


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        Policy(rise=0)
    with pytest.raises(ValueError):
        Policy(stale_s=0)


def test_exhaustive_against_an_independent_statement_of_the_rule() -> None:
    """Every combination of the discrete inputs: REMOTE exactly when every condition holds."""
    policy = Policy(rise=2, fall=2, stale_s=10)
    states = ["RUNNING", "READY", "TERMINATING", "TERMINATED"]
    comps = ["healthy", "starting", None]
    probe_sets = [Probes(), Probes(1, 0, 100.0), Probes(2, 0, 100.0), Probes(0, 1, 100.0, "x"),
                  Probes(0, 2, 100.0, "x"), Probes(3, 0, 50.0)]
    for (local, has_remote, st, comp, pre, released, probes, in_use, has_ep) in itertools.product(
            [True, False], [True, False], states, comps, [False, True], [False, True], probe_sets,
            [False, True], [True, False]):
        r = remote(state=st, comp=comp, preempted=pre, endpoint="h:1" if has_ep else None) if has_remote else None
        current = Route(TargetKind.REMOTE, "", r) if in_use and r else None
        d = decide_target("c", local, r, probes, 100.0, policy=policy, lease_released=released, current=current)
        fresh = probes.last_at is not None and 100.0 - probes.last_at <= 10
        probe_ok = fresh and (probes.fail_streak < 2 if (in_use and r) else
                              (probes.fail_streak == 0 and probes.ok_streak >= 2))
        usable = (has_remote and st == "READY" and comp == "healthy" and not pre and not released
                  and has_ep and probe_ok)
        expected = TargetKind.REMOTE if usable else TargetKind.LOCAL if local else TargetKind.NONE
        assert d.target == expected, (local, has_remote, st, comp, pre, released, probes, in_use, has_ep, d)
        assert d.reason


# ---------------------------------------------------------------------- the table over time


def table(policy: Policy | None = None, **components: bool) -> RouteTable:
    return RouteTable(components or {"thumbs": True}, policy)


def test_table_starts_local_and_moves_remote_after_ready_and_probe() -> None:
    t = table()
    assert t.current("thumbs").target == TargetKind.LOCAL
    assert t.set_remotes({"thumbs": [remote()]}, 1.0) == []  # READY alone is not enough
    assert [(c, r.instance_id) for c, r in t.probe_targets()] == [("thumbs", "sl-1")]
    changes = t.record_probe("thumbs", "sl-1", True, 1.5)
    assert [(c.component, c.old.key, c.new.key) for c in changes] == [("thumbs", "local", "remote:sl-1")]
    assert t.current("thumbs").target == TargetKind.REMOTE


def ready_table() -> RouteTable:
    t = table()
    t.set_remotes({"thumbs": [remote()]}, 1.0)
    t.record_probe("thumbs", "sl-1", True, 1.0)
    assert t.current("thumbs").key == "remote:sl-1"
    return t


@pytest.mark.parametrize(("update", "why"), [
    (remote(preempted=True), "preemption notice"),
    (remote(state="TERMINATING"), "ending (TERMINATING)"),
    (remote(comp="failing"), "component is failing"),
])
def test_table_back_to_local_on_record_events(update: RemoteState, why: str) -> None:
    t = ready_table()
    (change,) = t.set_remotes({"thumbs": [update]}, 2.0)
    assert (change.old.key, change.new.key) == ("remote:sl-1", "local")
    assert why in change.new.reason


def test_table_back_to_local_when_the_record_disappears_or_the_lease_is_released() -> None:
    t = ready_table()
    (change,) = t.set_remotes({}, 2.0)
    assert change.new.reason == "no remote copy"
    t = ready_table()
    (change,) = t.release_lease(2.0)
    assert change.new.reason == "lease released"
    assert t.set_remotes({"thumbs": [remote()]}, 3.0) == []  # a released lease stays released


def test_table_back_to_local_on_failed_probes_and_back_remote_when_they_pass() -> None:
    t = ready_table()
    assert t.record_probe("thumbs", "sl-1", False, 2.0, "refused") == []
    (change,) = t.record_probe("thumbs", "sl-1", False, 3.0, "refused")
    assert change.new.target == TargetKind.LOCAL
    (back,) = t.record_probe("thumbs", "sl-1", True, 4.0)
    assert back.new.key == "remote:sl-1"


def test_table_probe_staleness_is_noticed_by_reevaluate() -> None:
    t = ready_table()
    assert t.reevaluate(5.0) == []
    (change,) = t.reevaluate(1.0 + Policy().stale_s + 0.5)
    assert change.new.target == TargetKind.LOCAL


def test_table_replacement_instance_takes_over_from_the_preempted_one() -> None:
    t = ready_table()
    t.set_remotes({"thumbs": [remote(preempted=True), remote("sl-2", state="RUNNING", comp="starting")]}, 2.0)
    assert t.current("thumbs").target == TargetKind.LOCAL
    t.set_remotes({"thumbs": [remote(state="TERMINATED", preempted=True), remote("sl-2", endpoint="10.0.0.2:8443")]},
                  3.0)
    assert [r.instance_id for _, r in t.probe_targets()] == ["sl-2"]
    (change,) = t.record_probe("thumbs", "sl-2", True, 3.5)
    assert (change.old.key, change.new.key) == ("local", "remote:sl-2")


def test_table_stays_on_the_current_remote_while_another_becomes_usable() -> None:
    t = table()
    t.set_remotes({"thumbs": [remote("sl-b")]}, 1.0)
    t.record_probe("thumbs", "sl-b", True, 1.0)
    t.set_remotes({"thumbs": [remote("sl-a"), remote("sl-b")]}, 2.0)
    assert t.record_probe("thumbs", "sl-a", True, 2.0) == []
    assert t.current("thumbs").key == "remote:sl-b"


def test_table_new_endpoint_or_certificate_needs_a_fresh_probe() -> None:
    t = ready_table()
    (change,) = t.set_remotes({"thumbs": [remote(fingerprint="cd" * 32)]}, 2.0)
    assert "awaiting the first probe" in change.new.reason


def test_table_ignores_probes_of_unknown_instances_and_tracks_local() -> None:
    t = table()
    assert t.record_probe("thumbs", "sl-404", True, 1.0) == []
    assert t.record_probe("thumbs", None, False, 1.0, "refused", Failure.REFUSED) == []
    (change,) = t.record_probe("thumbs", None, False, 2.0, "refused", Failure.REFUSED)
    assert change.new.target == TargetKind.NONE
    (back,) = t.record_probe("thumbs", None, True, 3.0)
    assert back.new.target == TargetKind.LOCAL


def test_table_component_without_local_copy_is_none_until_remote() -> None:
    t = table(gpu=False)
    assert t.current("gpu").target == TargetKind.NONE
    t.set_remotes({"gpu": [remote()]}, 1.0)
    (change,) = t.record_probe("gpu", "sl-1", True, 1.0)
    assert change.new.target == TargetKind.REMOTE


def test_table_components_are_independent() -> None:
    t = table(a=True, b=True)
    t.set_remotes({"a": [remote()], "b": [remote(comp="starting")]}, 1.0)
    changes = t.record_probe("a", "sl-1", True, 1.0)
    assert [c.component for c in changes] == ["a"]
    assert t.current("b").target == TargetKind.LOCAL


# ---------------------------------------------------------------------- panic routing: never fail a lone slow copy


def failed(failure: Failure, times: int = 2, at: float = 100.0) -> Probes:
    p = Probes()
    for i in range(times):
        p = p.record(False, at - times + 1 + i, f"{failure} failure", failure)
    return p


def test_least_bad_ranks_a_timeout_before_an_error_answer_and_never_picks_a_refusal() -> None:
    slow, broke, refused = failed(Failure.SLOW), failed(Failure.BROKE), failed(Failure.REFUSED)
    d = least_bad("c", slow, [(remote(), broke)])
    assert d is not None and d.panic and d.target == TargetKind.LOCAL
    assert "least bad is the local copy (last: slow failure)" in d.reason
    d = least_bad("c", broke, [(remote(), slow)])
    assert d is not None and d.target == TargetKind.REMOTE and d.remote == remote()
    d = least_bad("c", refused, [(remote(), broke)])
    assert d is not None and d.target == TargetKind.REMOTE
    assert least_bad("c", refused, [(remote(), refused)]) is None  # no copy is there at all
    assert least_bad("c", None, []) is None
    assert least_bad("c", None, [(remote(), Probes())]) is not None  # READY, not probed yet: not known bad


@pytest.mark.parametrize("r", [remote(state="TERMINATING"), remote(state="RUNNING"), remote(preempted=True),
                               remote(comp="starting"), remote(endpoint=None), remote(fingerprint=None)])
def test_least_bad_never_takes_a_remote_copy_that_is_ending_or_unreachable(r: RemoteState) -> None:
    assert least_bad("c", None, [(r, failed(Failure.SLOW))]) is None


def test_least_bad_takes_no_remote_copy_once_the_lease_is_released() -> None:
    assert least_bad("c", None, [(remote(), failed(Failure.SLOW))], lease_released=True) is None
    d = least_bad("c", failed(Failure.BROKE), [(remote(), failed(Failure.SLOW))], lease_released=True)
    assert d is not None and d.target == TargetKind.LOCAL


def test_least_bad_stays_on_the_current_copy_among_equals() -> None:
    both = [(remote("sl-1"), failed(Failure.SLOW)), (remote("sl-2"), failed(Failure.SLOW))]
    first = least_bad("c", failed(Failure.SLOW), both)
    assert first is not None and first.target == TargetKind.LOCAL  # local first among equals
    current = Route(TargetKind.REMOTE, "", remote("sl-2"), panic=True)
    d = least_bad("c", failed(Failure.SLOW), both, current=current)
    assert d is not None and d.key == "remote:sl-2"


def test_table_a_lone_local_copy_that_times_out_keeps_the_traffic_and_comes_back_out_of_panic() -> None:
    t = table()
    assert t.record_probe("thumbs", None, False, 1.0, "no answer within 2 s", Failure.SLOW) == []
    (into,) = t.record_probe("thumbs", None, False, 2.0, "no answer within 2 s", Failure.SLOW)
    assert into.old.key == into.new.key == "local"  # same target: nothing to drain
    assert into.new.panic and not into.old.panic
    assert "panic: every copy of thumbs is failing its probes" in into.new.reason
    assert t.record_probe("thumbs", None, False, 3.0, "no answer within 2 s", Failure.SLOW) == []  # no flapping
    (out,) = t.record_probe("thumbs", None, True, 4.0)
    assert out.new.target == TargetKind.LOCAL and not out.new.panic


def test_table_panic_ends_when_the_copy_refuses_and_the_503_is_for_no_copy_at_all() -> None:
    t = table()
    t.record_probe("thumbs", None, False, 1.0, "slow", Failure.SLOW)
    t.record_probe("thumbs", None, False, 2.0, "slow", Failure.SLOW)
    assert t.current("thumbs").panic
    (gone,) = t.record_probe("thumbs", None, False, 3.0, "ClientConnectorError: refused", Failure.REFUSED)
    assert gone.new.target == TargetKind.NONE and not gone.new.panic


def test_table_panic_goes_to_a_slow_remote_when_the_local_copy_is_gone_and_its_loss_is_still_suspected() -> None:
    t = table()
    t.set_remotes({"thumbs": [remote()]}, 1.0)
    t.record_probe("thumbs", "sl-1", True, 1.0)
    assert t.current("thumbs").target == TargetKind.REMOTE
    t.record_probe("thumbs", None, False, 1.5, "refused", Failure.REFUSED)
    t.record_probe("thumbs", None, False, 1.6, "refused", Failure.REFUSED)
    t.record_probe("thumbs", "sl-1", False, 2.0, "no answer within 2 s", Failure.SLOW)
    assert [x.instance_id for x in t.take_suspects()] == ["sl-1"]  # the first failure still asks for a check
    (into,) = t.record_probe("thumbs", "sl-1", False, 3.0, "no answer within 2 s", Failure.SLOW)
    assert into.new.key == "remote:sl-1" and into.new.panic
    t.set_remotes({"thumbs": [remote(state="TERMINATING")]}, 4.0)  # the check found it gone: no copy
    assert t.current("thumbs").target == TargetKind.NONE
