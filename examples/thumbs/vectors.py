"""Component ``vectors``: nearest neighbours by cosine similarity over an in-memory index (numpy).

The index is VECTORS_COUNT random unit vectors of VECTORS_DIM dimensions from a fixed seed, so every
copy of the component (local or remote) answers the same query the same way.

    POST /similar   {"vector": [..VECTORS_DIM floats..], "k": 5}  →  {"ids": [...], "scores": [...]}
    POST /similar   {"id": 42, "k": 5}                            →  neighbours of index entry 42
    GET  /similar?id=42&k=5                                       →  the same, as a query
    GET  /healthz                                                 →  {"ok": true, "count": N, "dim": D}
"""

from __future__ import annotations

import json
import os

import numpy as np
from httpserve import json_reply, serve

COUNT = int(os.environ.get("VECTORS_COUNT", "50000"))
DIM = int(os.environ.get("VECTORS_DIM", "128"))
SEED = 20261101


def build_index(count: int, dim: int) -> np.ndarray:
    rng = np.random.default_rng(SEED)
    m = rng.standard_normal((count, dim), dtype=np.float32)
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    return m


INDEX = build_index(COUNT, DIM)


def similar(_q: dict[str, list[str]], body: bytes) -> tuple[int, str, bytes]:
    try:
        req = json.loads(body or b"{}")
    except ValueError as e:
        raise ValueError(f"body must be JSON: {e}") from e
    k = int(req.get("k", 5))
    if not 1 <= k <= 100:
        raise ValueError("k must be 1..100")
    if "id" in req:
        i = int(req["id"])
        if not 0 <= i < COUNT:
            raise ValueError(f"id must be 0..{COUNT - 1}")
        v = INDEX[i]
    else:
        v = np.asarray(req.get("vector", []), dtype=np.float32)
        if v.shape != (DIM,):
            raise ValueError(f"vector must have {DIM} numbers")
        n = float(np.linalg.norm(v))
        if n == 0.0 or not np.isfinite(n):
            raise ValueError("vector must be finite and non-zero")
        v = v / n
    scores = INDEX @ v
    top = np.argpartition(-scores, k - 1)[:k]
    top = top[np.argsort(-scores[top])]
    return json_reply(200, {"ids": top.tolist(), "scores": [round(float(s), 6) for s in scores[top]]})


def similar_query(query: dict[str, list[str]], _body: bytes) -> tuple[int, str, bytes]:
    req = {key: query[key][0] for key in ("id", "k") if key in query}
    if "id" not in req:
        raise ValueError("GET /similar needs ?id=N (POST a vector for anything else)")
    return similar({}, json.dumps(req).encode())


def health(_q: dict[str, list[str]], _b: bytes) -> tuple[int, str, bytes]:
    return json_reply(200, {"ok": True, "component": "vectors", "count": COUNT, "dim": DIM,
                            "numpy": np.__version__})


if __name__ == "__main__":
    serve("vectors", {("POST", "/similar"): similar, ("GET", "/similar"): similar_query, ("GET", "/healthz"): health})
