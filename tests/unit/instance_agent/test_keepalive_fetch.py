"""The instance's blob fetch keeps one HTTP/1.1 connection per thread (``bootstrap.KeepAlive``), against a real
loopback HTTP server: every blob still verified, errors still the ones urllib gives (a 404 is final, a body cut
short is retried), a kept connection the server closed meanwhile is replaced without a failure."""

from __future__ import annotations

import hashlib
import http.server
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spotleash.instance_agent import bootstrap
from spotleash.instance_agent.bootstrap import KeepAlive, Origin, PackageFailure, Source


class Blobs(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.blobs: dict[str, bytes] = {}
        self.connections = 0
        self.requests = 0
        self.cut_once: set[str] = set()  # paths whose next answer ends half-way and closes
        self.close_after_each = False  # the server closes every connection after its answer (kept ones go stale)
        self.lock = threading.Lock()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{name}"


class Handler(http.server.BaseHTTPRequestHandler):
    server: Blobs
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections += 1

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        pass

    def do_GET(self) -> None:
        name = self.path.lstrip("/").split("?", 1)[0]
        with self.server.lock:
            self.server.requests += 1
            cut = name in self.server.cut_once
            self.server.cut_once.discard(name)
        body = self.server.blobs.get(name)
        if body is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if cut else body)
        if cut or self.server.close_after_each:
            self.close_connection = True


@pytest.fixture
def server() -> Iterator[Blobs]:
    s = Blobs()
    t = threading.Thread(target=s.serve_forever, daemon=True)
    t.start()
    yield s
    s.shutdown()
    s.server_close()


def add_blobs(server: Blobs, n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        data = (f"blob {i} " * (50 + 300 * i)).encode()
        sha = hashlib.sha256(data).hexdigest()
        server.blobs[sha] = data
        out.append({"sha256": sha, "name": f"w{i}.whl", "kind": "wheel", "size": len(data)})
    return out


def origin(server: Blobs) -> Origin:
    return Origin(Source(server.url("manifest")), lambda sha: Source(server.url(sha)))


def test_blobs_come_over_one_kept_connection_per_thread_and_each_is_verified(server: Blobs, tmp_path: Path) -> None:
    blobs = add_blobs(server, 30)
    got = bootstrap.fetch_blobs(origin(server), blobs, tmp_path / "cache", threads=4, keep_alive=True)
    assert {sha: p.read_bytes() for sha, p in got.items()} == {b["sha256"]: server.blobs[b["sha256"]] for b in blobs}
    assert server.requests == 30
    assert server.connections <= 4  # not one per blob


def test_a_missing_blob_is_an_http_404_and_fails_at_once(server: Blobs, tmp_path: Path) -> None:
    blobs = add_blobs(server, 3)
    server.blobs.pop(blobs[1]["sha256"])
    with pytest.raises(PackageFailure) as e:
        bootstrap.fetch_blobs(origin(server), blobs, tmp_path / "cache", threads=2, keep_alive=True)
    assert e.value.reason == "package_missing"
    opener = KeepAlive()
    with pytest.raises(urllib.error.HTTPError) as http_error:
        opener(urllib.request.Request(server.url("nothing")), 5.0)
    assert http_error.value.code == 404
    opener.close()


def test_a_body_cut_short_is_retried_and_the_blob_kept_only_whole(server: Blobs, tmp_path: Path) -> None:
    blobs = add_blobs(server, 4)
    server.cut_once.add(blobs[2]["sha256"])
    got = bootstrap.fetch_blobs(origin(server), blobs, tmp_path / "cache", threads=2,
                                keep_alive=True, sleep=lambda _s: None)
    assert got[blobs[2]["sha256"]].read_bytes() == server.blobs[blobs[2]["sha256"]]
    assert server.requests == 5  # the cut one twice


def test_a_kept_connection_the_server_closed_is_replaced_without_a_failure(server: Blobs, tmp_path: Path) -> None:
    blobs = add_blobs(server, 6)
    server.close_after_each = True
    got = bootstrap.fetch_blobs(origin(server), blobs, tmp_path / "cache", threads=1, keep_alive=True)
    assert len(got) == 6
    assert server.requests == 6 and server.connections == 6


def test_each_verified_blob_is_handed_on_while_the_others_come_and_a_failing_hand_on_is_not_the_fetch_s(
        server: Blobs, tmp_path: Path) -> None:
    blobs = add_blobs(server, 5)
    seen: list[tuple[str, bytes]] = []

    def on_blob(blob: dict[str, Any], path: Path) -> None:
        seen.append((blob["name"], path.read_bytes()))
        if blob["name"] == "w3.whl":
            raise OSError("disk full")

    got = bootstrap.fetch_blobs(origin(server), blobs, tmp_path / "cache", threads=2, on_blob=on_blob)
    assert len(got) == 5
    assert sorted(seen) == sorted((b["name"], server.blobs[b["sha256"]]) for b in blobs)


def test_uv_comes_out_of_its_wheel_as_soon_as_its_blob_is_verified(tmp_path: Path) -> None:
    import zipfile

    wheel = tmp_path / "cache" / "0123"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("uv-0.13.9.data/scripts/uv", "#!/bin/sh\nexit 0\n")
    name = "uv-0.13.9-py3-none-manylinux_2_17_x86_64.whl"
    work = tmp_path / "work"
    bootstrap.early_tool({"kind": "wheel", "name": "uv-but-a-wheel.whl"}, wheel, work)
    assert not (work / "tools").exists()  # only the tool blob named uv-…
    bootstrap.early_tool({"kind": "tool", "name": name}, wheel, work)
    extracted = work / "tools" / name / "uv"
    assert extracted.is_file() and extracted.stat().st_mode & 0o111
    # the assembly later finds it there: the same path, nothing extracted twice
    assert bootstrap.uv_from_wheel(bootstrap._named(wheel, name, work), work / "tools") == extracted


def test_by_default_each_fetch_thread_keeps_its_connection(server: Blobs, tmp_path: Path) -> None:
    blobs = add_blobs(server, 6)
    assert bootstrap.FETCH_KEEP_ALIVE is True  # faster on the stack once its front set TCP_NODELAY
    assert len(bootstrap.fetch_blobs(origin(server), blobs, tmp_path / "cache", threads=2)) == 6
    assert server.requests == 6 and server.connections <= 2


def test_each_blob_can_still_have_its_own_connection(server: Blobs, tmp_path: Path) -> None:
    blobs = add_blobs(server, 6)
    assert len(bootstrap.fetch_blobs(origin(server), blobs, tmp_path / "cache", threads=2, keep_alive=False)) == 6
    assert server.requests == 6 and server.connections == 6
