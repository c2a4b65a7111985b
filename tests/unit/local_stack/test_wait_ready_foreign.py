"""A part that exited is not ready, even when something else answers on its port: CI runs two lanes, each with
a stack, and a fake that lost its port to another stack's fake of the same kind would have that one answer."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from local_emulator.procs import StackError, free_port, port_open, spawn, wait_ready


def test_a_part_that_exited_is_not_ready_though_another_listener_answers_its_port(tmp_path: Path) -> None:
    port = free_port()
    foreign = socket.socket()  # another stack's part, on the port this one was given
    foreign.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    foreign.bind(("127.0.0.1", port))
    foreign.listen(8)
    try:
        # what a server does when its port is taken: says so and exits
        proc = spawn("compute", [sys.executable, "-c", "import sys; print('Address already in use'); sys.exit(3)"],
                     log_path=tmp_path / "compute.log", port=port)
        assert proc.popen is not None
        proc.popen.wait(timeout=30)
        with pytest.raises(StackError, match=r"(?s)exited \(code 3\).*Address already in use"):
            wait_ready(proc, timeout=5.0, check=lambda: port_open(port))
    finally:
        foreign.close()
