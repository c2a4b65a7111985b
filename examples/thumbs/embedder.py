"""Component ``embedder``: sentence embeddings from real weights (all-MiniLM-L6-v2, numpy; see minilm.py).

The weights are an artifact, not part of the app: spotleash gives every component the artifact's local
path in ``SPOTLEASH_ARTIFACT_MINILM`` (locally the path spotleash.toml declares, on an instance the
fetched copy), so the same code runs in both places and nothing is downloaded from a model hub.

    POST /embed        {"texts": ["...", ...]}          →  {"embeddings": [[384 floats], ...], "dim": 384}
    POST /similarity   {"a": "...", "b": "..."}         →  {"score": cosine similarity of the two}
    GET  /similarity?a=...&b=...                        →  the same, as a query
    GET  /healthz                                       →  {"ok": true, "dim": 384, "model": "<dir>"}
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

# One BLAS thread per request: the server's threads already run requests side by side, and BLAS threads on
# top of them fight over the cores (measured on 2 shared cores: 2 req/s with OpenBLAS's own threads, 42 with
# one). Set before numpy loads; a value the user set wins.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from httpserve import json_reply, serve  # noqa: E402
from minilm import MiniLM, ModelError  # noqa: E402

ARTIFACT_VAR = "SPOTLEASH_ARTIFACT_MINILM"
MAX_TEXTS = 64
MAX_CHARS = 20_000


def model_dir(environ: dict[str, str] | os._Environ[str]) -> Path:
    """The model directory the artifact variable names; SystemExit with the fix when it is missing."""
    value = environ.get(ARTIFACT_VAR, "")
    if not value:
        sys.exit(f"embedder: {ARTIFACT_VAR} is not set. Declare the model directory as an artifact in "
                 f"spotleash.toml ([[app.artifacts]] name = \"minilm\", path = \"<dir with model.safetensors and "
                 f"tokenizer.json>\"; `spotleash` sets the variable), or set it yourself to run the component alone.")
    return Path(value).expanduser()


def _texts(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(t, str) for t in value):
        raise ValueError(f"{what} must be a non-empty list of strings")
    if len(value) > MAX_TEXTS:
        raise ValueError(f"{what}: at most {MAX_TEXTS} texts per request")
    if any(len(t) > MAX_CHARS for t in value):
        raise ValueError(f"{what}: each text at most {MAX_CHARS} characters")
    return value


def _json(body: bytes) -> dict[str, Any]:
    try:
        req = json.loads(body or b"{}")
    except ValueError as e:
        raise ValueError(f"body must be JSON: {e}") from e
    if not isinstance(req, dict):
        raise ValueError("body must be a JSON object")
    return req


def routes(model: MiniLM) -> dict[tuple[str, str], Any]:
    def embed(_q: dict[str, list[str]], body: bytes) -> tuple[int, str, bytes]:
        vectors = model.embed(_texts(_json(body).get("texts"), "texts"))
        return json_reply(200, {"embeddings": [[round(float(x), 7) for x in v] for v in vectors], "dim": model.dim})

    def similarity_of(a: Any, b: Any) -> tuple[int, str, bytes]:
        pair = _texts([a, b], "a and b")
        va, vb = model.embed(pair)
        return json_reply(200, {"score": round(float(va @ vb), 6)})

    def similarity(_q: dict[str, list[str]], body: bytes) -> tuple[int, str, bytes]:
        req = _json(body)
        return similarity_of(req.get("a"), req.get("b"))

    def similarity_query(q: dict[str, list[str]], _b: bytes) -> tuple[int, str, bytes]:
        if "a" not in q or "b" not in q:
            raise ValueError("GET /similarity needs ?a=TEXT&b=TEXT")
        return similarity_of(q["a"][0], q["b"][0])

    def health(_q: dict[str, list[str]], _b: bytes) -> tuple[int, str, bytes]:
        return json_reply(200, {"ok": True, "component": "embedder", "dim": model.dim, "model": str(model.dir)})

    return {("POST", "/embed"): embed, ("POST", "/similarity"): similarity,
            ("GET", "/similarity"): similarity_query, ("GET", "/healthz"): health}


if __name__ == "__main__":
    try:
        loaded = MiniLM(model_dir(os.environ))
    except ModelError as e:
        sys.exit(f"embedder: cannot load the model from {ARTIFACT_VAR}: {e}")
    serve("embedder", routes(loaded))
