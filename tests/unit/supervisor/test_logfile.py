"""Reading a component's log in pieces (``supervisor.logfile``) and ``spotleash logs``' local side."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest

from spotleash.cli.logs import Follow, LogsError, check_component, local_reader, show
from spotleash.errors import ConfigError
from spotleash.packaging.appspec import LoadedApp
from spotleash.supervisor.logfile import Window, read_window, window
from spotleash.wire.package import AppSpec


@pytest.mark.parametrize(("size", "offset", "tail", "limit", "expected"), [
    (100, None, 30, 1000, Window(70, 100)),  # the tail
    (10, None, 30, 1000, Window(0, 10)),  # shorter than the tail
    (100, 40, 30, 1000, Window(40, 100)),  # a follower's next piece
    (100, 100, 30, 1000, Window(100, 100)),  # nothing new
    (50, 80, 30, 1000, Window(0, 50, rotated=True)),  # rotated since: from the new file's start
    (5000, 0, 30, 1000, Window(0, 1000)),  # at most limit bytes an answer
    (5000, None, 3000, 1000, Window(2000, 3000)),
    (0, None, 30, 1000, Window(0, 0)),
    (100, -5, 30, 1000, Window(0, 100)),
])
def test_window(size: int, offset: int | None, tail: int, limit: int, expected: Window) -> None:
    assert window(size, offset, tail, limit) == expected


def test_read_window(tmp_path: Path) -> None:
    p = tmp_path / "c.log"
    p.write_bytes(b"0123456789")
    piece = read_window(p, None, tail=4)
    assert (piece.data, piece.window) == (b"6789", Window(6, 10))
    assert read_window(p, 3, limit=2).data == b"34"
    with pytest.raises(FileNotFoundError):
        read_window(tmp_path / "none.log", None)


def loaded(tmp_path: Path) -> LoadedApp:
    spec = AppSpec.model_validate({"name": "a", "components": [
        {"name": "web", "command": ["x"], "port": 8101, "local_url": "http://127.0.0.1:8301"},
        {"name": "mine", "command": ["x"], "port": 8102, "local_url": "http://127.0.0.1:8302", "local_copy": "user"},
        {"name": "gpu", "command": ["x"], "port": 8103}]})
    return LoadedApp(spec=spec, config_file=tmp_path / "spotleash.toml", root=tmp_path)


def test_unknown_component_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no component 'nope' in .*spotleash.toml; its components: web, mine, gpu"):
        check_component(loaded(tmp_path), "nope")
    with pytest.raises(ConfigError, match=r"no spotleash.toml with an \[app\] table"):
        check_component(None, "web")
    check_component(loaded(tmp_path), "web")


def test_no_local_log_says_why(tmp_path: Path) -> None:
    app = loaded(tmp_path)
    with pytest.raises(LogsError, match=r'run by you \(local_copy = "user"\)'):
        local_reader(app, tmp_path, "me", "mine", 100)
    with pytest.raises(LogsError, match=r"runs no local copy of gpu \(no local_url\)"):
        local_reader(app, tmp_path, "me", "gpu", 100)
    with pytest.raises(LogsError, match=r"no log of the local copy of web yet .* for lease 'me'"):
        local_reader(app, tmp_path, "me", "web", 100)


def test_show_prints_the_tail_then_follows_appends_and_a_rotation(tmp_path: Path) -> None:
    log_dir = tmp_path / "local" / "me"
    log_dir.mkdir(parents=True)
    path = log_dir / "web.log"
    path.write_bytes(b"old line\nlast line\n")
    read = local_reader(loaded(tmp_path), tmp_path, "me", "web", 10)
    out = io.BytesIO()
    show(read, out, None, print)
    assert out.getvalue() == b"last line\n"

    class Out(io.BytesIO):
        """Appends to the log as the follower prints, then rotates it, then stops the follower."""

        def __init__(self) -> None:
            super().__init__()
            self.stop = threading.Event()
            self.writes = 0

        def flush(self) -> None:
            self.writes += 1
            if self.writes == 1:
                with path.open("ab") as f:
                    f.write(b"appended\n")
            elif self.writes == 3:
                path.write_bytes(b"rotated\n")
            elif self.writes == 5:
                self.stop.set()

    out2 = Out()
    notes: list[str] = []
    show(read, out2, Follow(every_s=0.01, stop=out2.stop), notes.append)
    assert out2.getvalue() == b"last line\nappended\nrotated\n"
    assert notes == ["(the log was rotated; reading the new file from its start)"]
