"""Component ``vectors``: nearest neighbours by cosine similarity over an in-memory index (numpy).

The index is VECTORS_COUNT random unit vectors of VECTORS_DIM dimensions from a fixed seed, so every
copy of the component (local or remote) answers the same query the same way.

    POST /similar   {"vector": [..VECTORS_DIM floats..], "k": 5}  →  {"ids": [...], "scores": [...]}
    POST /similar   {"id": 42, "k": 5}                            →  neighbours of index entry 42
    GET  /similar?id=42&k=5                                       →  the same, as a query
    GET  /similar/stream?id=42&k=5&every_s=0.2                    →  the same neighbours as server-sent
                                                                     events, one per neighbour, every_s apart
    GET  /healthz                                                 →  {"ok": true, "count": N, "dim": D}
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

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


def nearest(req: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(ids, scores) of the ``k`` entries nearest ``req``'s ``id`` or ``vector``, best first."""
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
    return top, scores[top]


def similar(_q: dict[str, list[str]], body: bytes) -> tuple[int, str, bytes]:
    try:
        req = json.loads(body or b"{}")
    except ValueError as e:
        raise ValueError(f"body must be JSON: {e}") from e
    ids, scores = nearest(req)
    return json_reply(200, {"ids": ids.tolist(), "scores": [round(float(s), 6) for s in scores]})


def similar_stream(q: dict[str, list[str]], _b: bytes) -> tuple[int, str, Iterator[bytes]]:
    every_s = float(q.get("every_s", ["0"])[0])
    if not 0 <= every_s <= 5:
        raise ValueError("every_s must be 0..5")
    ids, scores = nearest({"id": q.get("id", ["0"])[0], "k": q.get("k", ["5"])[0]})

    def events() -> Iterator[bytes]:
        for rank, (i, s) in enumerate(zip(ids.tolist(), scores.tolist(), strict=True)):
            if rank:
                time.sleep(every_s)
            event = {"rank": rank, "id": i, "score": round(float(s), 6), "sent_at": time.time()}
            yield f"data: {json.dumps(event)}\n\n".encode()
        yield b"event: end\ndata: {}\n\n"

    return 200, "text/event-stream", events()


def similar_query(query: dict[str, list[str]], _body: bytes) -> tuple[int, str, bytes]:
    req = {key: query[key][0] for key in ("id", "k") if key in query}
    if "id" not in req:
        raise ValueError("GET /similar needs ?id=N (POST a vector for anything else)")
    return similar({}, json.dumps(req).encode())


def health(_q: dict[str, list[str]], _b: bytes) -> tuple[int, str, bytes]:
    return json_reply(200, {"ok": True, "component": "vectors", "count": COUNT, "dim": DIM,
                            "numpy": np.__version__})


if __name__ == "__main__":
    serve("vectors", {("POST", "/similar"): similar, ("GET", "/similar"): similar_query,
                      ("GET", "/similar/stream"): similar_stream, ("GET", "/healthz"): health})
