"""Reading a component's log file (``<log_dir>/<name>.log``, rotated by the supervisor) in pieces: the last
bytes of it, or what was written after a given offset — ``spotleash logs`` locally, and the instance's front for
``spotleash logs --remote``. ``window`` decides (pure); ``read_window`` reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_TAIL_BYTES = 16 * 1024
MAX_READ_BYTES = 1024 * 1024  # one answer; a follower asks again from where it ended


@dataclass(frozen=True)
class Window:
    start: int
    end: int  # where the next read (``offset``) starts
    rotated: bool = False  # the file is shorter than the offset asked for: it was rotated, read from its start


def window(size: int, offset: int | None, tail: int = DEFAULT_TAIL_BYTES, limit: int = MAX_READ_BYTES) -> Window:
    """The byte range to read of a file of ``size`` bytes: from ``offset`` (a follower's last end) when given,
    else its last ``tail`` bytes; at most ``limit`` bytes."""
    size = max(size, 0)
    if offset is None:
        start = max(size - max(tail, 0), 0)
        return Window(start, min(size, start + limit))
    rotated = offset > size
    start = 0 if rotated else max(offset, 0)
    return Window(start, min(size, start + limit), rotated)


@dataclass(frozen=True)
class Piece:
    data: bytes
    window: Window


def read_window(path: Path, offset: int | None, tail: int = DEFAULT_TAIL_BYTES, limit: int = MAX_READ_BYTES) -> Piece:
    """Read ``window`` of ``path``; FileNotFoundError when it does not exist."""
    with path.open("rb") as f:
        size = f.seek(0, 2)
        w = window(size, offset, tail, limit)
        f.seek(w.start)
        data = f.read(w.end - w.start)
    return Piece(data, Window(w.start, w.start + len(data), w.rotated))
