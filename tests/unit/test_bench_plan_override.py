"""``python -m bench --set KEY=JSON``: one plan entry overridden, an unknown key or bad JSON refused."""

from __future__ import annotations

import argparse

import pytest
from bench.__main__ import _plan_value, plan


def test_a_plan_entry_is_overridden_with_its_json_value() -> None:
    assert _plan_value("sigterm=12") == ("sigterm", 12)
    assert _plan_value("reap_sizes=[10000]") == ("reap_sizes", [10_000])
    assert {**plan(True), **dict([_plan_value("reap_repeats=1")])}["reap_repeats"] == 1


@pytest.mark.parametrize("spec", ["sigtrem=12", "sigterm", "reap_sizes=[10000", "=3"])
def test_an_unknown_key_or_a_value_that_is_not_json_is_refused(spec: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        _plan_value(spec)
