"""Component ``thumbnailer``: POST an image, get a thumbnail back (Pillow).

    POST /thumbnail?size=128&format=png   body: image bytes  →  the thumbnail (image/png or image/jpeg)
    GET  /thumbnail?size=64&color=c83c3c   →  the thumbnail of a 640x480 sample image in that colour
                                               (a query without a body: what the demo's load sends)
    GET  /healthz                          →  {"ok": true, "pillow": "<version>"}
"""

from __future__ import annotations

import io

import PIL
from httpserve import json_reply, serve
from PIL import Image, UnidentifiedImageError

MAX_SIDE = 2048


def sample_image(color: str) -> bytes:
    """A 640x480 PNG: the colour fading to black left to right (real pixels to scale down)."""
    try:
        rgb = bytes.fromhex(color)
    except ValueError as e:
        raise ValueError("color must be 6 hex digits (RRGGBB)") from e
    if len(rgb) != 3:
        raise ValueError("color must be 6 hex digits (RRGGBB)")
    ramp = Image.linear_gradient("L").rotate(-90).resize((640, 480))  # 255 at the left, 0 at the right
    img = Image.merge("RGB", [ramp.point(lambda v, c=c: v * c // 255) for c in rgb])
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def thumbnail_of_sample(query: dict[str, list[str]], _body: bytes) -> tuple[int, str, bytes]:
    return thumbnail(query, sample_image(query.get("color", ["c83c3c"])[0]))


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
    serve("thumbnailer", {("POST", "/thumbnail"): thumbnail, ("GET", "/thumbnail"): thumbnail_of_sample,
                          ("GET", "/healthz"): health})
