"""The example app's two components run here exactly as an instance runs them: argv from spotleash.toml,
cwd = the app dir, PORT and the component's env."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from spotleash.packaging.appspec import load_app
from spotleash.polling import wait_until

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "thumbs"


@pytest.fixture()
def running(tmp_path: Path) -> Iterator[dict[str, str]]:
    app = load_app(EXAMPLE, None)
    procs, urls = [], {}
    bin_dir = str(Path(sys.executable).parent)
    try:
        for c in app.spec.components:
            port = c.port + 10000  # clear of a copy the developer may be running
            env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), **c.env, "PORT": str(port)}
            procs.append(subprocess.Popen(c.command, cwd=app.root, env=env, stdout=subprocess.DEVNULL,
                                          stderr=(tmp_path / f"{c.name}.log").open("w")))
            urls[c.name] = f"http://127.0.0.1:{port}"
            health = urls[c.name] + c.health_path
            wait_until(lambda h=health: _ok(h), timeout_s=30, what=f"{c.name} healthy")
        yield urls
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_the_components_do_their_work(running: dict[str, str]) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (640, 480), (10, 120, 200)).save(buf, "PNG")
    r = httpx.post(running["thumbnailer"] + "/thumbnail?size=64", content=buf.getvalue(), timeout=10)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (64, 48)
    bad = httpx.post(running["thumbnailer"] + "/thumbnail", content=b"not an image", timeout=10)
    assert bad.status_code == 400

    r = httpx.post(running["vectors"] + "/similar", json={"id": 42, "k": 3}, timeout=10)
    assert r.status_code == 200
    body = r.json()
    assert body["ids"][0] == 42 and body["scores"][0] == pytest.approx(1.0, abs=1e-5)
    assert body["scores"] == sorted(body["scores"], reverse=True)
    assert httpx.post(running["vectors"] + "/similar", json={"vector": [1, 2]}, timeout=10).status_code == 400


def test_the_components_answer_queries_by_get(running: dict[str, str]) -> None:
    r = httpx.get(running["thumbnailer"] + "/thumbnail?size=64&color=00ff80", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(r.content))
    assert img.size == (64, 48)
    left, right = img.getpixel((0, 24)), img.getpixel((63, 24))
    assert left[0] < 8 and left[1] > 240 and 120 < left[2] < 136 and max(right) < 16  # the colour fades out
    assert httpx.get(running["thumbnailer"] + "/thumbnail?color=zz", timeout=10).status_code == 400

    r = httpx.get(running["vectors"] + "/similar?id=42&k=3", timeout=10)
    assert r.status_code == 200
    assert r.json() == httpx.post(running["vectors"] + "/similar", json={"id": 42, "k": 3}, timeout=10).json()
    assert httpx.get(running["vectors"] + "/similar?k=3", timeout=10).status_code == 400
