"""The dashboard's routes and its loopback server, over real sockets: the token is the key, nothing else leaks."""

from __future__ import annotations

import http.client
import json
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.support.tools import project_uv

from spotleash.dashboard.local import DashboardServer, check_token, route
from spotleash.dashboard.web import SECURITY_HEADERS, respond, static_files

STATE = {"schema_version": 1, "hello": "world"}
ROOT = Path(__file__).resolve().parents[3]


def state() -> dict[str, Any]:
    return dict(STATE)


@pytest.fixture
def server() -> Iterator[DashboardServer]:
    srv = DashboardServer(state).start()
    try:
        yield srv
    finally:
        srv.stop()


def get(srv: DashboardServer, path: str, host: str | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    try:
        conn.putrequest("GET", path, skip_host=True)
        conn.putheader("Host", host or f"127.0.0.1:{srv.port}")
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_the_page_and_its_assets_are_shipped_and_reference_nothing_outside() -> None:
    files = static_files()
    assert {"index.html", "style.css", "app.js"} <= set(files)
    for name, (body, _ctype) in files.items():
        text = body.decode()
        assert not re.search(r"(https?:)?//(?!www\.w3\.org/2000/svg)[a-z0-9.-]+\.[a-z]{2,}", text, re.I), \
            f"{name} names another host"
        assert "innerHTML" not in text, f"{name}: render with textContent"
    html = files["index.html"][0].decode()
    for landmark in ('role="banner"', 'role="main"', 'role="contentinfo"', 'role="status"'):
        assert landmark in html
    assert html.count("<caption") == html.count("<table") >= 5
    assert 'scope="col"' in html and 'lang="en"' in html


def test_routes() -> None:
    assert respond("", state).status == 200 and b"spotleash dashboard" in respond("", state).body
    js = respond("assets/app.js", state)
    assert js.status == 200 and js.content_type.startswith("text/javascript")
    assert respond("assets/../view.py", state).status == 404
    assert respond("assets/nope.js", state).status == 404
    assert respond("etc/passwd", state).status == 404
    api = respond("api/state", state)
    assert api.status == 200 and json.loads(api.body) == STATE and api.content_type == "application/json"
    assert api.all_headers()["Content-Security-Policy"].startswith("default-src 'none'")


def test_a_failing_store_is_one_sentence_and_503() -> None:
    def broken() -> dict[str, Any]:
        raise ConnectionError("firestore down")

    r = respond("api/state", broken)
    assert r.status == 503 and json.loads(r.body) == {"error": "the store could not be read: ConnectionError"}


def test_token_and_host_checks() -> None:
    tok = "s3cret-token"
    assert route(f"/{tok}/", "127.0.0.1:8000", tok, 8000, state).status == 200
    assert route(f"/{tok}/api/state?x=1", "localhost:8000", tok, 8000, state).status == 200
    assert route(f"/{tok}", "127.0.0.1:8000", tok, 8000, state).headers["Location"] == f"/{tok}/"
    for path in ("/", "/api/state", "/assets/app.js", f"/{tok}x/", f"/{tok[:-1]}/", "/x/api/state"):
        r = route(path, "127.0.0.1:8000", tok, 8000, state)
        assert r.status == 401, path
        assert tok.encode() not in r.body
    assert route(f"/{tok}/", "evil.example:8000", tok, 8000, state).status == 421
    assert check_token(tok, tok) and not check_token("", tok) and not check_token("é", tok)


def test_the_server_listens_on_loopback_with_a_fresh_token(server: DashboardServer) -> None:
    assert server.httpd.server_address[0] == "127.0.0.1"
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/[A-Za-z0-9_-]{32}/", server.url)
    assert DashboardServer(state).token != server.token
    token = server.token
    status, headers, body = get(server, f"/{token}/")
    assert status == 200 and b"<main" in body
    for k, v in SECURITY_HEADERS.items():
        assert headers[k] == v
    status, _, body = get(server, f"/{token}/api/state")
    assert status == 200 and json.loads(body) == STATE
    status, headers, body = get(server, "/api/state")
    assert status == 401 and "WWW-Authenticate" in headers and b"hello" not in body
    assert get(server, f"/{token}/", host="attacker.example")[0] == 421
    log = server.access.snapshot()
    assert [a.status for a in log] == [200, 200, 401, 421]
    assert all(token not in a.path for a in log) and log[0].path == "/<token>/"


def test_the_wheel_ships_the_static_files(tmp_path: Path) -> None:
    import subprocess

    # the project's own uv (scripts/uv installs it when missing): this test never skips where CI runs
    proc = subprocess.run([project_uv(), "build", "--wheel", "--out-dir", str(tmp_path), str(ROOT)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("spotleash-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in static_files():
        assert f"spotleash/dashboard/static/{name}" in names
