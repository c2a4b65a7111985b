"""The agent slows gRPC's idle re-check of waiting threads (``adapters.grpc_waits``): the locked grpcio has the
knob, it is only ever lengthened, and a response still ends a wait at once (the condition is notified)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from grpc import _common

from spotleash.adapters.grpc_waits import IDLE_WAIT_S, slower_idle_waits


@pytest.fixture(autouse=True)
def restore() -> Iterator[None]:
    saved = _common.MAXIMUM_WAIT_TIMEOUT
    yield
    _common.MAXIMUM_WAIT_TIMEOUT = saved


def test_the_locked_grpcio_has_the_knob_and_it_is_lengthened() -> None:
    _common.MAXIMUM_WAIT_TIMEOUT = 0.1
    assert slower_idle_waits() is True
    assert _common.MAXIMUM_WAIT_TIMEOUT == IDLE_WAIT_S


def test_never_shortened() -> None:
    _common.MAXIMUM_WAIT_TIMEOUT = 5.0
    assert slower_idle_waits(1.0) is True
    assert _common.MAXIMUM_WAIT_TIMEOUT == 5.0


def test_a_notified_wait_ends_without_waiting_out_the_period() -> None:
    slower_idle_waits(3600.0)  # a wait that had to run out its period would hang the test
    cond = threading.Condition()
    state = {"done": False}

    def answer() -> None:
        with cond:
            state["done"] = True
            cond.notify_all()

    with cond:
        threading.Timer(0.05, answer).start()
        _common.wait(cond.wait, lambda: state["done"])
    assert state["done"]
