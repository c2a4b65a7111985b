"""Real wheels made by hand for tests: what pip and uv install offline, without a build backend."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path


def _record_hash(data: bytes) -> str:
    """A RECORD line's hash: urlsafe base64 of the sha256, unpadded (the wheel spec)."""
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def tiny_wheel(out_dir: Path, name: str = "tinylib", version: str = "1.0", requires: tuple[str, ...] = ()) -> Path:
    """A real pure-Python wheel whose module has ``greet()``; ``requires``: its ``Requires-Dist`` lines."""
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
    files = {
        f"{name}/__init__.py": b'def greet():\n    return "hello from tinylib"\n',
        f"{name}-{version}.dist-info/METADATA": (meta + "\nA long description.\nRequires-Dist: not-a-header\n").encode(),
        f"{name}-{version}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = f"{name}-{version}.dist-info/RECORD"
    lines = [f"{p},sha256={_record_hash(d)},{len(d)}" for p, d in files.items()] + [f"{record},,"]
    files[record] = ("\n".join(lines) + "\n").encode()
    path = out_dir / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for p, d in files.items():
            z.writestr(p, d)
    return path
