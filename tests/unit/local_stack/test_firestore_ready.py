"""The Firestore emulator is ready when it answers a read, not when it prints its line and listens: its first
request can take 15.8 s in a cold JVM, and `spotleash check` run just after `local up` lost its 10 s read to it."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from local_emulator import emulators
from local_emulator.procs import StackError, free_port, spawn

# Prints the emulator's ready line and listens, but never answers a request (a JVM still in its lazy set-up).
SILENT = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(16)
print(sys.argv[2], flush=True)
held = []
while True:
    c, _ = s.accept(); held.append(c)
"""


def test_a_listening_emulator_that_does_not_answer_a_read_is_not_ready(tmp_path: Path) -> None:
    port = free_port()
    proc = spawn("firestore", [sys.executable, "-c", SILENT, str(port), emulators.FIRESTORE_READY],
                 log_path=tmp_path / "firestore.log", port=port)
    try:
        started = time.monotonic()
        with pytest.raises(StackError, match="not ready"):
            emulators.wait_firestore_ready(proc, timeout=3.0)
        assert time.monotonic() - started < 30.0  # bounded: a try at most past the start's deadline
    finally:
        proc.stop()

