"""The blobs of a layered package, built on the publisher's machine (``spotleash.wire.package``, format 2).

- the app tree → one deterministic tar.gz (same files → same bytes → same sha256), kept under
  ``STATE_DIR/blobs/``: a one-line change makes a new app blob and nothing else;
- each wheel and uv's wheel → a blob as it is (its sha256 remembered by path, size and mtime in
  ``STATE_DIR/blobs/hashes.json``, so a republish does not re-read gigabytes of unchanged wheels).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from spotleash.packaging.app_tree import AppTree
from spotleash.wire.package import AppSpec, Blob, BlobKind, LayeredManifest, sha256_file, write_archive

APP_BLOB_NAME = "app.tar.gz"
HASHES_FILE = "hashes.json"


@dataclass(frozen=True)
class LocalBlob:
    blob: Blob
    path: Path  # the bytes on this machine


class HashCache:
    """sha256 of files by (path, size, mtime_ns): a wheel is hashed once per machine, not once per publish."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            raw = json.loads(path.read_text())
            self._known: dict[str, str] = raw if isinstance(raw, dict) else {}
        except (OSError, ValueError):
            self._known = {}
        self._dirty = False

    def sha256(self, file: Path) -> str:
        st = file.stat()
        key = f"{file.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        got = self._known.get(key)
        if got is None:
            got = self._known[key] = sha256_file(file)
            self._dirty = True
        return got

    def save(self) -> None:
        if not self._dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._known, sort_keys=True))
        os.replace(tmp, self.path)


def app_blob(tree: AppTree, blob_dir: Path) -> LocalBlob:
    """The app tree as one deterministic tar.gz in ``blob_dir/<sha256>``."""
    blob_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=blob_dir, suffix=".tmp", delete=False) as tmp:
        tmp_path = Path(tmp.name)
    try:
        sha = write_archive(tmp_path, dict(tree.files), tree.executable)
        final = blob_dir / sha
        size = tmp_path.stat().st_size
        os.replace(tmp_path, final)
    finally:
        tmp_path.unlink(missing_ok=True)
    return LocalBlob(Blob(sha256=sha, size=size, kind="app", name=APP_BLOB_NAME), final)


def file_blob(path: Path, kind: BlobKind, hashes: HashCache) -> LocalBlob:
    return LocalBlob(Blob(sha256=hashes.sha256(path), size=path.stat().st_size, kind=kind, name=path.name), path)


def layered_manifest(app: AppSpec, requirements: Sequence[str], blobs: Sequence[LocalBlob]) -> LayeredManifest:
    return LayeredManifest(app=app, requirements=list(requirements), blobs=[b.blob for b in blobs])
