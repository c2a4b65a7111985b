"""The local stack's ports come from below the kernel's ephemeral range, so nothing the kernel hands out (an
emulator's ``bind(0)``, an outgoing connection's source port) can take one between its choice and its bind."""

from __future__ import annotations

import socket

from local_emulator.procs import LOWEST_FREE_PORT, ephemeral_low, free_port


def test_a_free_port_is_below_the_ephemeral_range_and_bindable() -> None:
    low = ephemeral_low()
    for _ in range(50):
        port = free_port()
        assert LOWEST_FREE_PORT <= port < low
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", port))


def test_a_port_in_use_is_not_given() -> None:
    taken = []
    try:
        for _ in range(20):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", free_port()))
            s.listen()
            taken.append(s)
        assert free_port() not in {t.getsockname()[1] for t in taken}
    finally:
        for t in taken:
            t.close()


def test_a_process_never_hands_out_a_port_twice_before_going_round() -> None:
    # a stack picks its ports before it binds any: picked at random, 500 picks in ~12,800 ports repeat one
    # almost surely (CI once gave the billing fake and the Firestore emulator the same port)
    picked = [free_port() for _ in range(500)]
    assert len(set(picked)) == len(picked)
