"""The hand-off's pure rules: where a component runs, when a local copy stops or restarts, when the work comes home."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spotleash.decide.handoff import (
    MIN_RETRY_S,
    WHERE,
    HomeRule,
    HomeState,
    LocalState,
    Target,
    View,
    fits_at_start,
    handoff_steps,
    where_of,
)

MB = 2**20
GB = 2**30
LOCALS: tuple[LocalState, ...] = ("running", "stopping", "stopped", "starting", "none")
TARGETS: tuple[Target, ...] = ("local", "remote", "none")


# ------------------------------------------------------------------ where_of

EXPECTED_WHERE = {
    ("running", "local"): "local", ("running", "remote"): "both", ("running", "none"): "local",
    ("stopping", "local"): "stopping", ("stopping", "remote"): "stopping", ("stopping", "none"): "stopping",
    ("stopped", "local"): "local", ("stopped", "remote"): "remote", ("stopped", "none"): "none",
    ("starting", "local"): "starting", ("starting", "remote"): "starting", ("starting", "none"): "starting",
    ("none", "local"): "local", ("none", "remote"): "remote", ("none", "none"): "none",
}


@pytest.mark.parametrize(("local", "target"), list(itertools.product(LOCALS, TARGETS)))
def test_where_of_every_combination(local: LocalState, target: Target) -> None:
    assert where_of(local, target) == EXPECTED_WHERE[(local, target)]
    assert where_of(local, target) in WHERE


# ------------------------------------------------------------------ handoff_steps

def steps(*views: View, available: int = 8 * GB, limit: int = 16 * GB, threshold: float = 0.85) -> list[tuple[str, str]]:
    return [(s.kind, s.name) for s in handoff_steps(list(views), available=available, limit=limit, threshold=threshold)]


@pytest.mark.parametrize(("local", "target"), list(itertools.product(LOCALS, TARGETS)))
def test_a_copy_stops_only_when_it_runs_and_the_remote_serves(local: LocalState, target: Target) -> None:
    got = steps(View("a", local, target, GB))
    if local == "running" and target == "remote":
        assert got == [("stop", "a")]
    elif local == "stopped" and target == "none":
        assert got == [("start", "a")]  # 8 GB available holds 1 GB and keeps 15 % of 16 GB free
    else:
        assert got == []


@pytest.mark.parametrize("offload", ["default", "never", "keep"])
def test_keep_keeps_its_local_copy(offload: str) -> None:
    got = steps(View("a", "running", "remote", GB, offload))  # type: ignore[arg-type]
    assert got == ([] if offload == "keep" else [("stop", "a")])


def test_a_lost_remote_restarts_the_local_copy_only_when_it_fits() -> None:
    limit = 10 * GB  # threshold 0.85 keeps 1.5 GB free
    fits = View("a", "stopped", "none", GB)
    assert steps(fits, available=int(2.5 * GB), limit=limit) == [("start", "a")]  # 2.5 - 1 = 1.5: exactly kept
    assert steps(fits, available=int(2.5 * GB) - 1, limit=limit) == [("hold", "a")]
    [hold] = handoff_steps([fits], available=GB, limit=limit, threshold=0.85)
    assert "do not fit" in hold.reason and "wait for a remote copy" in hold.reason


def test_restarts_share_the_memory_in_order() -> None:
    limit = 10 * GB
    a, b, c = View("a", "stopped", "none", GB), View("b", "stopped", "none", 2 * GB), View("c", "stopped", "none", GB)
    # 4 GB available, 1.5 GB kept: a (1) fits, b (2) would leave 1 < 1.5, c (1) still fits after a
    assert steps(a, b, c, available=4 * GB, limit=limit) == [("start", "a"), ("hold", "b"), ("start", "c")]


def test_memory_past_the_limit_restarts_nothing() -> None:
    assert steps(View("a", "stopped", "none", MB), available=0, limit=10 * GB) == [("hold", "a")]


def test_stops_and_restarts_mix_in_view_order() -> None:
    got = steps(View("a", "running", "remote", GB), View("b", "stopped", "none", GB), View("c", "running", "local", GB),
                View("d", "none", "remote", GB))
    assert got == [("stop", "a"), ("start", "b")]


# ------------------------------------------------------------------ fits_at_start

def test_fits_at_start_starts_what_keeps_the_headroom() -> None:
    limit = 10 * GB  # 1.5 GB kept
    assert fits_at_start(["a", "b"], [GB, GB], available=4 * GB, limit=limit, threshold=0.85) == (["a", "b"], [])
    assert fits_at_start(["a", "b"], [2 * GB, GB], available=3 * GB, limit=limit, threshold=0.85) == (["b"], ["a"])
    assert fits_at_start(["a", "b"], [GB, GB], available=GB, limit=limit, threshold=0.85) == ([], ["a", "b"])
    assert fits_at_start([], [], available=0, limit=limit, threshold=0.85) == ([], [])


@given(st.lists(st.integers(0, 4 * GB), max_size=6), st.integers(0, 16 * GB))
@settings(max_examples=200, deadline=None)
def test_fits_at_start_never_passes_the_threshold(fps: list[int], available: int) -> None:
    limit = 16 * GB
    names = [f"c{i}" for i in range(len(fps))]
    start, withheld = fits_at_start(names, fps, available=available, limit=limit, threshold=0.85)
    assert sorted(start + withheld) == sorted(names)
    started = sum(fp for n, fp in zip(names, fps, strict=True) if n in start)
    assert not start or available - started >= limit * 0.15


# ------------------------------------------------------------------ HomeRule

LIMIT = 10 * GB
RULE = HomeRule(release_below=0.70, hold_s=30.0)  # 3 GB must stay free with the away components back


def run(rule: HomeRule, samples: list[tuple[float, int]], away: int = GB, pressured_at: frozenset[float] = frozenset()
        ) -> list[float]:
    """The times the rule fired over (t, available) samples."""
    state, fired = HomeState(), []
    for t, available in samples:
        state, go = rule.step(state, t, available=available, limit=LIMIT, away_bytes=away, pressured=t in pressured_at)
        if go:
            fired.append(t)
    return fired


def test_home_fires_after_an_unbroken_hold() -> None:
    assert run(RULE, [(t, 5 * GB) for t in range(0, 31)]) == [30]


def test_home_needs_the_footprint_plus_the_margin() -> None:
    exact = 3 * GB + GB  # margin 3 GB + 1 GB away
    assert run(RULE, [(t, exact) for t in range(0, 31)]) == [30]
    assert run(RULE, [(t, exact - 1) for t in range(0, 200)]) == []


def test_one_short_sample_restarts_the_hold() -> None:
    samples = [(t, 5 * GB if t != 20 else 3 * GB) for t in range(0, 60)]
    assert run(RULE, samples) == [51]  # 21 .. 51


def test_pressure_restarts_the_hold() -> None:
    assert run(RULE, [(t, 5 * GB) for t in range(0, 60)], pressured_at=frozenset({10.0})) == [41]


def test_nothing_away_never_fires() -> None:
    assert run(RULE, [(t, 9 * GB) for t in range(0, 100)], away=0) == []


def test_after_firing_the_hold_starts_over() -> None:
    assert run(RULE, [(t, 5 * GB) for t in range(0, 100)]) == [30, 61, 92]


def test_zero_hold_fires_at_the_first_fitting_sample() -> None:
    assert run(HomeRule(0.7, 0.0), [(0, 2 * GB), (1, 5 * GB)]) == [1]


def test_noise_around_the_boundary_never_flaps() -> None:
    """Memory hovering around "fits" (±50 MB of noise around the exact mark, seeded) never holds long enough."""
    rng = random.Random(22)
    exact = 4 * GB
    samples = [(float(t), exact + rng.randint(-50, 50) * MB - (25 * MB if t % 7 == 0 else 0)) for t in range(0, 3600)]
    # every 7th sample is at least 25 MB short: the 30 s hold can never complete
    assert run(RULE, samples) == []


def test_noise_well_above_the_mark_fires_once_per_hold() -> None:
    rng = random.Random(7)
    samples = [(float(t), 6 * GB + rng.randint(-500, 500) * MB) for t in range(0, 31)]
    assert run(RULE, samples) == [30.0]


@given(st.lists(st.tuples(st.integers(0, 10 * GB), st.booleans()), min_size=1, max_size=80), st.integers(1, 3 * GB))
@settings(max_examples=300, deadline=None)
def test_home_fires_only_after_hold_s_of_fitting_unpressured_samples(samples: list[tuple[int, bool]], away: int) -> None:
    rule = HomeRule(0.7, 5.0)
    state = HomeState()
    for t, (available, pressured) in enumerate(samples):
        state, go = rule.step(state, float(t), available=available, limit=LIMIT, away_bytes=away, pressured=pressured)
        if go:
            window = samples[t - 5:t + 1]
            assert t >= 5 and len(window) == 6
            assert all(not p and rule.fits(a, LIMIT, away) for a, p in window)


def test_why_not_says_what_is_missing() -> None:
    assert RULE.why_not(HomeState(), 0, available=5 * GB, limit=LIMIT, away_bytes=0) == "nothing is away"
    assert "pressure" in RULE.why_not(HomeState(), 0, available=5 * GB, limit=LIMIT, away_bytes=GB, pressured=True)
    assert "short" in RULE.why_not(HomeState(), 0, available=3 * GB, limit=LIMIT, away_bytes=GB)
    assert "holding 10/30 s" in RULE.why_not(HomeState(5.0), 15, available=5 * GB, limit=LIMIT, away_bytes=GB)


def test_bad_rule_is_refused() -> None:
    with pytest.raises(ValueError, match="bad home rule"):
        HomeRule(release_below=0.0)
    with pytest.raises(ValueError, match="bad home rule"):
        HomeRule(hold_s=-1)


# ------------------------------------------------------------------ a failed way home backs off


def test_the_backoff_doubles_from_the_hold_and_stops_at_its_cap() -> None:
    rule = HomeRule(0.7, 30.0, retry_max_s=200.0)
    assert [rule.retry_after_s(n) for n in range(0, 6)] == [0.0, 30.0, 60.0, 120.0, 200.0, 200.0]
    assert rule.retry_after_s(10_000) == 200.0  # no overflow however long it fails


def test_a_short_hold_still_backs_off_from_the_minimum() -> None:
    assert [HomeRule(0.7, 0.0).retry_after_s(n) for n in (1, 2, 3)] == [MIN_RETRY_S, 2 * MIN_RETRY_S, 4 * MIN_RETRY_S]


def tries(rule: HomeRule, until: int, fail: bool = True) -> list[int]:
    """Memory fits every second from 0 to ``until``; each way home fires and (``fail``) fails at once: when it fired."""
    state, fired = HomeState(), []
    for t in range(until):
        state, go = rule.step(state, float(t), available=5 * GB, limit=LIMIT, away_bytes=GB)
        if go:
            fired.append(t)
            state = rule.failed(state, float(t)) if fail else rule.came_home(state)
    return fired


def test_failed_ways_home_are_tried_again_further_and_further_apart() -> None:
    fired = tries(HomeRule(0.7, 10.0, retry_max_s=40.0), 300)
    gaps = [b - a for a, b in itertools.pairwise(fired)]
    # the first retry after a full hold (which starts at the next sample), then 2x the hold, then the cap
    assert fired[0] == 10 and gaps[:4] == [11, 20, 40, 40]
    assert set(gaps[3:]) == {40}


def test_ways_home_that_work_keep_the_plain_hold() -> None:
    assert tries(RULE, 100, fail=False) == [30, 61, 92]  # as before any failure: after_firing_the_hold_starts_over


def test_a_way_home_that_works_forgets_the_failures() -> None:
    rule = HomeRule(0.7, 10.0)
    state = rule.failed(rule.failed(HomeState(), 0.0), 20.0)
    assert state.failures == 2 and state.retry_at == 40.0
    assert rule.came_home(state) == HomeState()


def test_the_backoff_never_shortens_the_hold_and_a_break_still_restarts_it() -> None:
    rule = HomeRule(0.7, 10.0)
    state = rule.failed(HomeState(), 0.0)  # retry_at 10
    go = False
    for t in range(0, 25):  # one short sample at t = 5: the hold restarts at 6, fires at 16, not at 10
        available = 3 * GB if t == 5 else 5 * GB
        state, go = rule.step(state, float(t), available=available, limit=LIMIT, away_bytes=GB)
        if go:
            assert t == 16
            break
    assert go


def test_why_not_names_the_backoff() -> None:
    rule = HomeRule(0.7, 10.0)
    state = rule.failed(rule.failed(HomeState(), 0.0), 10.0)  # retry_at 30
    assert "last 2 way(s) home failed: next try in 15 s (backoff 20 s)" in rule.why_not(
        state, 15.0, available=5 * GB, limit=LIMIT, away_bytes=GB)
    assert "holding" in rule.why_not(state, 31.0, available=5 * GB, limit=LIMIT, away_bytes=GB)


@given(st.lists(st.booleans(), min_size=1, max_size=12), st.floats(0, 600), st.floats(0, 7200))
@settings(max_examples=200, deadline=None)
def test_the_backoff_is_bounded_and_never_shrinks_while_failing(outcomes: list[bool], hold: float, cap: float) -> None:
    rule = HomeRule(0.7, hold, retry_max_s=cap)
    state, last = HomeState(), 0.0
    for t, ok in enumerate(outcomes):
        state = rule.came_home(state) if ok else rule.failed(state, float(t))
        wait = rule.retry_after_s(state.failures)
        assert 0 <= wait <= cap
        assert ok or wait >= min(last, cap)
        last = wait if not ok else 0.0
