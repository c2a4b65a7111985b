"""An event a signal handler may set: what a process's main loop waits on for SIGTERM.

``threading.Event.set`` takes the event's lock, and a Python signal handler runs in the main thread between
two bytecodes. If the main thread held that lock when the signal came (inside ``Event.wait``), or a first
handler held it when a second signal came (``killpg`` and a direct ``kill`` of the same process), ``set``
waits for itself forever: the process ignores SIGTERM until it is SIGKILLed. CI caught a fake of the local
stack in exactly that state (its thread dump: handler → ``Event.set`` → handler → ``Event.set``).
``SignalEvent`` takes no lock: ``set`` writes a flag and a byte to a pipe, ``wait`` selects on the pipe. The
byte is left there until ``clear``, so every waiter wakes, now and later.
"""

from __future__ import annotations

import contextlib
import os
import select


class SignalEvent:
    """``threading.Event``'s ``set``/``is_set``/``wait``/``clear``, safe to ``set`` from a signal handler."""

    def __init__(self) -> None:
        self._flag = False
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)

    def set(self) -> None:
        self._flag = True  # first: a waiter checks the flag before it selects, so no wake-up is lost
        with contextlib.suppress(BlockingIOError, OSError):  # a full pipe is woken already; a closed one has no waiter
            os.write(self._w, b"!")

    def is_set(self) -> bool:
        return self._flag

    def wait(self, timeout: float | None = None) -> bool:
        if not self._flag:
            with contextlib.suppress(OSError, ValueError):  # closed under us: answer with the flag
                select.select([self._r], [], [], timeout)  # a signal's EINTR is retried (PEP 475), the byte ends it
        return self._flag

    def clear(self) -> None:
        self._flag = False  # before draining: a set() in between leaves the flag up, which wait() reads first
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._r, 512):
                pass

    def close(self) -> None:
        fds, self._r, self._w = (self._r, self._w), -1, -1  # once: a second close could hit a reused number
        for fd in fds:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def __del__(self) -> None:
        self.close()
