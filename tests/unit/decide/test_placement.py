"""Placement: the fewest components whose footprint restores headroom, heaviest first; never / keep."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from spotleash.agent.memory.reading import MemoryReading
from spotleash.decide.placement import Candidate, need_bytes, place

GB = 2**30


def reading(limit_gb: float = 16, available_gb: float = 1.0) -> MemoryReading:
    limit, avail = int(limit_gb * GB), int(available_gb * GB)
    return MemoryReading(limit_bytes=limit, available_bytes=avail, used_bytes=limit - avail, source="test")


def c(name: str, gb: float, **kw: object) -> Candidate:
    return Candidate(name=name, footprint_bytes=int(gb * GB), **kw)  # type: ignore[arg-type]


def test_need_is_the_missing_headroom() -> None:
    # 16 GB limit, threshold 0.85: 2.4 GB of headroom wanted, 1 GB there
    assert need_bytes(reading(16, 1), 0.85) == round(16 * GB * 0.15) - GB
    assert need_bytes(reading(16, 3), 0.85) == 0


def test_the_prediction_raises_the_need_never_lowers_it() -> None:
    r = reading(16, 2)
    now = need_bytes(r, 0.85)
    assert need_bytes(r, 0.85, predicted_used=0.97) == round(16 * GB * 0.15) - round(16 * GB * 0.03)
    assert need_bytes(r, 0.85, predicted_used=0.5) == now  # a falling trend does not talk headroom back


def test_pressure_without_a_deficit_moves_the_heaviest_one() -> None:
    p = place(reading(16, 8), 0.85, [c("a", 1), c("b", 3)], pressured=True)
    assert p.names == ["b"] and p.need_bytes == 1


def test_heaviest_first_until_the_need_is_covered() -> None:
    p = place(reading(16, 0.4), 0.85, [c("small", 0.5), c("big", 1.5), c("mid", 1.0)])
    assert p.need_bytes > int(1.5 * GB)  # 2.0 GB missing
    assert p.names == ["big", "mid"] and p.short_bytes == 0


def test_nothing_to_do_when_headroom_is_there() -> None:
    p = place(reading(16, 4), 0.85, [c("a", 4)])
    assert p.move == () and p.need_bytes == 0


def test_nothing_fits_moves_everything_movable_and_says_how_short() -> None:
    p = place(reading(16, 0.1), 0.85, [c("a", 0.5), c("b", 0.25), c("n", 4, offload="never")])
    assert p.names == ["a", "b"]
    assert p.short_bytes == p.need_bytes - int(0.75 * GB) > 0
    assert "still short" in p.reason and p.stays == ("n",)


def test_already_over_the_limit() -> None:
    r = MemoryReading(limit_bytes=16 * GB, available_bytes=0, used_bytes=17 * GB, source="over")
    p = place(r, 0.85, [c("a", 2), c("b", 1)])
    assert p.need_bytes == round(16 * GB * 0.15) and p.names == ["a", "b"] and p.short_bytes == 0


def test_ties_are_broken_by_name_whatever_the_input_order() -> None:
    cands = [c("zeta", 2), c("alpha", 2), c("mid", 2)]
    for perm in itertools.permutations(cands):
        assert place(reading(16, 1.0), 0.85, list(perm)).names == ["alpha"]


def test_all_never_moves_nothing_and_says_why() -> None:
    p = place(reading(16, 0.1), 0.85, [c("a", 2, offload="never"), c("b", 1, offload="never")])
    assert p.move == () and p.need_bytes > 0 and p.stays == ("a", "b")
    assert "nothing can move" in p.reason


def test_keep_frees_nothing_so_relief_never_names_it() -> None:
    p = place(reading(16, 0.1), 0.85, [c("k", 10, offload="keep"), c("d", 1)])
    assert p.names == ["d"] and p.kept == ("k",) and p.short_bytes > 0


def test_a_gpu_component_sends_the_move_to_a_gpu_box() -> None:
    p = place(reading(16, 1.0), 0.85, [c("vision", 3, gpu=True), c("chat", 1)])
    assert p.names == ["vision"] and p.needs_gpu
    assert not place(reading(16, 1.0), 0.85, [c("vision", 1, gpu=True), c("chat", 3)]).needs_gpu


def test_a_component_that_frees_nothing_is_not_moved() -> None:
    p = place(reading(16, 1.0), 0.85, [c("idle", 0), c("a", 2)])
    assert p.names == ["a"]


# ------------------------------------------------------------------ exhaustive
candidates = st.lists(
    st.builds(Candidate, name=st.sampled_from("abcdefgh"), footprint_bytes=st.integers(0, 8 * GB),
              measured=st.booleans(), gpu=st.booleans(), offload=st.sampled_from(["default", "keep", "never"])),
    max_size=8, unique_by=lambda x: x.name)
readings = st.builds(
    lambda limit, frac: MemoryReading(limit_bytes=limit, available_bytes=int(limit * frac),
                                      used_bytes=limit - int(limit * frac), source="h"),
    st.integers(GB, 64 * GB), st.floats(0, 1))


@settings(max_examples=400, deadline=None)
@given(readings, st.floats(0.5, 1.0), candidates, st.none() | st.floats(0, 1), st.booleans())
def test_placement_properties(r: MemoryReading, threshold: float, cands: list[Candidate], predicted: float | None,
                              pressured: bool) -> None:
    p = place(r, threshold, cands, predicted_used=predicted, pressured=pressured)
    moved = {m.name for m in p.move}
    movable = [x for x in cands if x.offload == "default" and x.footprint_bytes > 0]
    # never and keep never move on memory grounds; nothing moves without a need
    assert all(m.offload == "default" and m.footprint_bytes > 0 for m in p.move)
    assert len(moved) == len(p.move)
    if p.need_bytes == 0:
        assert p.move == ()
        return
    total = sum(x.footprint_bytes for x in movable)
    if total < p.need_bytes:  # nothing fits: everything movable goes
        assert moved == {x.name for x in movable} and p.short_bytes == p.need_bytes - total
        return
    assert p.short_bytes == 0
    # fewest: no smaller set of movable components covers the need
    k = len(p.move)
    for smaller in itertools.combinations(movable, k - 1):
        assert sum(x.footprint_bytes for x in smaller) < p.need_bytes
    # minimal: dropping the last (lightest) one would not cover the need
    assert p.freed_bytes - p.move[-1].footprint_bytes < p.need_bytes
    # heaviest first
    assert [m.footprint_bytes for m in p.move] == sorted((m.footprint_bytes for m in p.move), reverse=True)
