"""The RAM trigger on traces: threshold, prediction, hysteresis and hold, cooldown, no flapping."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spotleash.agent.ram import TraceRam, load_trace
from spotleash.agent.trigger import (
    Demand,
    Release,
    TriggerPolicy,
    TriggerState,
    replay,
    slope_per_s,
)
from spotleash.config import Settings
from spotleash.errors import ConfigError

POLICY = TriggerPolicy(threshold=0.85, release_below=0.70, release_hold_s=30, window_s=60, horizon_s=120,
                       cooldown_s=60)
CLIMB = Path(__file__).resolve().parents[3] / "shared" / "spotleash" / "agent" / "traces" / "climb.csv"
DEMO_JUMP = CLIMB.with_name("jump.csv")


def trace(values: list[float], dt: float = 1.0, t0: float = 0.0) -> list[tuple[float, float]]:
    return [(t0 + i * dt, v) for i, v in enumerate(values)]


def demands(actions: list[tuple[float, object]]) -> list[tuple[float, Demand]]:
    return [(t, a) for t, a in actions if isinstance(a, Demand)]


def releases(actions: list[tuple[float, object]]) -> list[tuple[float, Release]]:
    return [(t, a) for t, a in actions if isinstance(a, Release)]


# ------------------------------------------------------------------ threshold
def test_threshold_fires_once_at_the_first_sample_at_or_above_it() -> None:
    p = TriggerPolicy(threshold=0.85, release_below=0.7, min_samples=1000)  # prediction off
    out = replay(p, trace([0.5, 0.6, 0.84, 0.85, 0.95, 0.99]))
    assert out == [(3.0, Demand("threshold", 85.0))]


def test_flat_low_usage_never_fires() -> None:
    assert replay(POLICY, trace([0.6] * 600)) == []


# ------------------------------------------------------------------ prediction
def test_rising_trend_fires_predictively_before_the_crossing() -> None:
    # 0.3 %/s from 60 %: crosses 85 % at t = 83 s; the horizon is 120 s, so as soon as the
    # window holds enough span (15 s) the trend says "within the horizon".
    values = [0.60 + 0.003 * i for i in range(120)]
    out = replay(POLICY, trace(values))
    (t, d), = demands(out)
    assert d.trigger == "predictive"
    assert t < 83 and d.ram_percent < 85
    assert t == pytest.approx(POLICY.required_span_s, abs=1)


def test_field_report_case_predicts_around_77_percent() -> None:
    # Slow climb 0.1 %/s: at 77.5 % the threshold is 75 s away, inside the 120 s horizon.
    values = [0.70 + 0.001 * i for i in range(200)]
    p = TriggerPolicy(horizon_s=75, window_s=60)
    (t, d), = demands(replay(p, trace(values)))
    assert d.trigger == "predictive"
    assert 77.0 <= d.ram_percent <= 78.0


def test_rise_too_slow_for_the_horizon_does_not_predict() -> None:
    values = [0.60 + 0.0005 * i for i in range(100)]  # 0.05 %/s: 85 % is 500 s away
    assert replay(POLICY, trace(values)) == []


def test_falling_trend_never_fires() -> None:
    values = [0.84 - 0.002 * i for i in range(200)]
    assert replay(POLICY, trace(values)) == []


def test_prediction_needs_enough_samples_and_span() -> None:
    p = TriggerPolicy(window_s=60, horizon_s=120, min_samples=5)
    steep = [(0.0, 0.50), (1.0, 0.60), (2.0, 0.70)]  # steep, but only 3 samples over 2 s
    assert replay(p, steep) == []
    assert p.time_to_threshold(steep) is None
    assert p.time_to_threshold(trace([0.5, 0.55, 0.6, 0.65, 0.7], dt=5)) == pytest.approx(15.0)  # 1 %/s, 15 % to go


def test_old_samples_leave_the_window() -> None:
    # A long flat stretch then a climb: the fit uses only the last window_s seconds.
    s = TriggerState()
    for t in range(200):
        s, _ = POLICY.step(s, (float(t), 0.6))
    assert s.window[0][0] > 199 - POLICY.window_s
    assert len(s.window) == POLICY.window_s


def test_slope_is_least_squares() -> None:
    assert slope_per_s([(0, 0.1), (1, 0.2), (2, 0.3)]) == pytest.approx(0.1)
    assert slope_per_s([(0, 0.1), (1, 0.3), (2, 0.2), (3, 0.4)]) == pytest.approx(0.08)
    assert slope_per_s([(1, 0.1), (1, 0.9)]) == 0.0
    assert slope_per_s([(0, 0.5)]) == 0.0


# ------------------------------------------------------------------ hysteresis and hold
def test_release_only_after_usage_stays_below_the_low_mark_for_the_hold() -> None:
    values = [0.9] * 10 + [0.75] * 100 + [0.65] * 29 + [0.72] + [0.65] * 40
    out = replay(POLICY, trace(values))
    assert [type(a) for _, a in out] == [Demand, Release]
    # 0.75 is below the threshold but above release_below: no release. The first low run is
    # broken by 0.72 after 29 s; the second run starts at t=140 and the hold is 30 s.
    assert releases(out)[0][0] == 140 + 30


def test_no_release_without_a_demand() -> None:
    assert replay(POLICY, trace([0.3] * 1000)) == []


def test_settings_build_the_policy() -> None:
    s = Settings(ram_threshold=0.9, ram_release_below=0.6, release_hold_s=12, predict_window_s=30,
                 predict_horizon_s=40, demand_cooldown_s=7)
    p = TriggerPolicy.from_settings(s)
    assert (p.threshold, p.release_below, p.release_hold_s, p.window_s, p.horizon_s, p.cooldown_s) == (
        0.9, 0.6, 12, 30, 40, 7)
    with pytest.raises(ValueError):
        TriggerPolicy(threshold=0.7, release_below=0.8)


# ------------------------------------------------------------------ cooldown
def test_cooldown_blocks_a_second_demand_after_a_quick_release() -> None:
    p = TriggerPolicy(threshold=0.85, release_below=0.7, release_hold_s=5, cooldown_s=60, min_samples=1000)
    values = [0.9] * 3 + [0.5] * 10 + [0.95] * 60  # demand t=0, release t=8, high again from t=13
    out = replay(p, trace(values))
    ds = demands(out)
    assert [t for t, _ in ds] == [0.0, 60.0]
    assert [t for t, _ in releases(out)] == [8.0]


# ------------------------------------------------------------------ flapping
def _noisy_around(level: float, amp: float, n: int, seed: int, dt: float = 1.0) -> list[tuple[float, float]]:
    rnd = random.Random(seed)
    return [(i * dt, level + rnd.uniform(-amp, amp)) for i in range(n)]


@pytest.mark.parametrize("seed", range(20))
def test_noise_around_the_threshold_demands_once_and_never_releases(seed: int) -> None:
    out = replay(POLICY, _noisy_around(0.85, 0.05, 3600, seed))
    assert len(demands(out)) == 1
    assert releases(out) == []


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    level=st.floats(0.72, 0.95),
    amp=st.floats(0.0, 0.1),
    dt=st.sampled_from([0.25, 1.0, 5.0]),
)
def test_any_noisy_signal_staying_above_the_low_mark_never_flaps(seed: int, level: float, amp: float,
                                                                  dt: float) -> None:
    rnd = random.Random(seed)
    samples = [(i * dt, min(max(level + rnd.uniform(-amp, amp), 0.701), 1.0)) for i in range(600)]
    out = replay(POLICY, samples)
    assert len(demands(out)) <= 1
    assert releases(out) == []


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), amp=st.floats(0.1, 0.3))
def test_wild_noise_alternates_and_respects_hold_and_cooldown(seed: int, amp: float) -> None:
    """Even a signal that swings across both marks: demands and releases alternate, each release
    comes after a full hold below the low mark, and demands are at least the cooldown apart."""
    samples = _noisy_around(0.78, amp, 2000, seed)
    out = replay(POLICY, samples)
    kinds = [type(a) for _, a in out]
    assert all(a is not b for a, b in zip(kinds, kinds[1:], strict=False))
    if kinds:
        assert kinds[0] is Demand
    ts = [t for t, _ in demands(out)]
    assert all(b - a >= POLICY.cooldown_s for a, b in zip(ts, ts[1:], strict=False))
    by_t = dict(samples)
    for t, _ in releases(out):
        held = [by_t[x] for x in by_t if t - POLICY.release_hold_s <= x <= t]
        assert max(held) < POLICY.release_below


# ------------------------------------------------------------------ the demo trace
def test_demo_trace_crosses_the_threshold_within_20_demo_seconds_at_speed_2() -> None:
    points = load_trace(CLIMB)
    assert points[0][1] < 65
    first_over = next(t for t, pct in points if pct >= 85)
    assert first_over / 2 <= 20
    assert all(pct >= 85 for t, pct in points if t >= first_over)  # stays high: no release in the demo
    tr = TraceRam(points, speed=2.0, clock=lambda: 0.0)
    out = replay(POLICY, [(i * 0.25, tr.percent_at(i * 0.5) / 100) for i in range(400)])
    (t, d), = demands(out)
    assert t <= 20 and releases(out) == []


def test_a_repeated_time_is_a_step_with_no_ramp_to_sample() -> None:
    tr = TraceRam([(0.0, 60.0), (40.0, 60.0), (40.0, 97.0), (41.0, 97.0)], clock=lambda: 0.0)
    assert tr.percent_at(39.9999) == 60.0
    assert tr.percent_at(40.0) == 97.0
    assert tr.percent_at(40.5) == 97.0


def test_the_demo_jump_trace_never_reads_between_its_levels() -> None:
    tr = TraceRam(load_trace(DEMO_JUMP), clock=lambda: 0.0)
    assert {tr.percent_at(i / 1000) for i in range(60_000)} == {60.0, 97.0}


def test_a_time_going_back_or_written_three_times_is_refused(tmp_path: Path) -> None:
    for rows in ("0,1\n2,1\n1,5\n", "0,1\n1,1\n1,5\n1,7\n"):
        f = tmp_path / "t.csv"
        f.write_text("t_seconds,percent\n" + rows)
        with pytest.raises(ConfigError, match="one repeat is a step"):
            load_trace(f)


# ------------------------------------------------------------------ a trace file followed while it plays
def test_a_trace_file_changed_while_it_plays_is_read_again_on_the_same_clock(tmp_path: Path) -> None:
    now = [0.0]
    f = tmp_path / "t.csv"
    f.write_text("t_seconds,percent\n0,50\n3,50\n3,95\n")
    tr = TraceRam.from_csv(f, clock=lambda: now[0])
    assert tr.read().used_bytes == round(tr.limit_bytes * 0.50)
    now[0] = 100.0
    assert tr.used_fraction() == 0.95  # the last value holds
    with f.open("a") as out:
        out.write("10,95\n10,30\n")  # a drop whose time has passed: at once
    assert tr.read().used_bytes == round(tr.limit_bytes * 0.30)
    f.write_text("t_seconds,percent\n0,50\n200,50\n200,80\n")  # rewritten: the same clock, the new points
    assert tr.read().used_bytes == round(tr.limit_bytes * 0.50)
    now[0] = 201.0
    assert tr.used_fraction() == 0.80


def test_a_trace_rewrite_that_does_not_parse_keeps_the_points_read_before(tmp_path: Path) -> None:
    f = tmp_path / "t.csv"
    f.write_text("t_seconds,percent\n0,95\n")
    tr = TraceRam.from_csv(f, clock=lambda: 5.0)
    f.write_text("t_seconds,percent\n0,9")  # half written: still parses, 9 %
    assert tr.read().used_bytes == round(tr.limit_bytes * 0.09)
    f.write_text("t_seconds,percent\n0,95\n1,")  # half a row: refused, the last good points stay
    assert tr.read().used_bytes == round(tr.limit_bytes * 0.09)
    f.unlink()  # gone for a moment (a rename under way): unchanged
    assert tr.read().used_bytes == round(tr.limit_bytes * 0.09)
    f.write_text("t_seconds,percent\n0,40\n1,40\n")
    assert tr.read().used_bytes == round(tr.limit_bytes * 0.40)
