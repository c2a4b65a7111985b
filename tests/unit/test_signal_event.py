"""SignalEvent: an event a signal handler may set (spotleash/signal_event.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from spotleash.signal_event import SignalEvent


def test_set_wait_and_clear_behave_as_threading_event() -> None:
    ev = SignalEvent()
    assert not ev.is_set()
    assert ev.wait(0.01) is False
    ev.set()
    assert ev.is_set() and ev.wait(0.01) is True and ev.wait() is True
    ev.clear()
    assert not ev.is_set() and ev.wait(0.01) is False
    ev.set()
    ev.set()  # twice, then one clear: unset again
    ev.clear()
    assert ev.wait(0.01) is False
    ev.close()
    ev.close()  # twice is harmless


def test_a_set_from_another_thread_wakes_every_waiter() -> None:
    ev = SignalEvent()
    woke: list[bool] = []
    waiters = [threading.Thread(target=lambda: woke.append(ev.wait(30))) for _ in range(3)]
    for w in waiters:
        w.start()
    ev.set()
    for w in waiters:
        w.join(10)
    assert woke == [True, True, True]


CHILD = textwrap.dedent("""
    import os, signal, sys, threading
    from spotleash.signal_event import SignalEvent
    ev = SignalEvent() if sys.argv[1] == "signal_event" else threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: ev.set())
    print("ready", flush=True)
    if sys.argv[2] == "held":  # a signal while the main thread is inside the event's own lock, as in Event.wait
        with getattr(ev, "_cond", threading.Lock()):
            os.kill(os.getpid(), signal.SIGTERM)
            sum(range(1000))  # bytecode: the handler runs here
    while not ev.wait(0.001):  # the main loop's sliced wait
        pass
    print("stopped", flush=True)
    os._exit(0)  # no interpreter teardown: it resets the handler, and a late second SIGTERM would then kill us
""")


def child(kind: str, mode: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, kind, mode], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_threading_event_set_by_a_handler_deadlocks_when_the_main_thread_holds_its_lock() -> None:
    # Why SignalEvent exists: this is the hang CI saw (handler -> Event.set waiting on a lock its own thread holds).
    proc = child("threading", "held")
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=3)
    finally:
        proc.kill()
        proc.wait()


def test_signal_event_set_by_a_handler_ends_the_wait_in_the_same_case() -> None:
    proc = child("signal_event", "held")
    assert proc.wait(timeout=20) == 0


def test_two_sigterms_in_a_row_stop_the_wait_every_time() -> None:
    for _ in range(20):
        proc = child("signal_event", "plain")
        os.kill(proc.pid, signal.SIGTERM)
        os.kill(proc.pid, signal.SIGTERM)
        try:
            assert proc.wait(timeout=20) == 0
        finally:
            proc.kill()
        assert proc.stdout is not None and proc.stdout.read().strip() == "stopped"
