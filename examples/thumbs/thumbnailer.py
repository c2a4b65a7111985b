"""Component ``thumbnailer``: POST an image, get a thumbnail back (Pillow).

    POST /thumbnail?size=128&format=png   body: image bytes  →  the thumbnail (image/png or image/jpeg)
    GET  /healthz                          →  {"ok": true, "pillow": "<version>"}
"""

from __future__ import annotations

import io

import PIL
from httpserve import json_reply, serve
from PIL import Image, UnidentifiedImageError

MAX_SIDE = 2048


def thumbnail(query: dict[str, list[str]], body: bytes) -> tuple[int, str, bytes]:
    size = int(query.get("size", ["128"])[0])
    fmt = query.get("format", ["png"])[0].lower()
    if not 1 <= size <= MAX_SIDE:
        raise ValueError(f"size must be 1..{MAX_SIDE}")
    if fmt not in ("png", "jpeg"):
        raise ValueError("format must be png or jpeg")
    try:
        img = Image.open(io.BytesIO(body))
        img.load()
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"not an image: {e}") from e
    img.thumbnail((size, size))
    if fmt == "jpeg" and img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    out = io.BytesIO()
    img.save(out, format=fmt.upper())
    return 200, f"image/{fmt}", out.getvalue()


def health(_q: dict[str, list[str]], _b: bytes) -> tuple[int, str, bytes]:
    return json_reply(200, {"ok": True, "component": "thumbnailer", "pillow": PIL.__version__})


if __name__ == "__main__":
    serve("thumbnailer", {("POST", "/thumbnail"): thumbnail, ("GET", "/healthz"): health})
