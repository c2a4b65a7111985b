"""The blobs of a layered package, built on the publisher's machine (``spotleash.wire.package``, format 2).

- the app tree → one deterministic tar.gz (same files → same bytes → same sha256), kept under
  ``STATE_DIR/blobs/``: a one-line change makes a new app blob and nothing else;
- each wheel and uv's wheel → a blob as it is (its sha256 remembered by path, size and mtime in
  ``STATE_DIR/blobs/hashes.json``, so a republish does not re-read gigabytes of unchanged wheels);
- each file of an ``[[app.artifacts]]`` entry → a blob as it is (kind ``artifact``, named by the artifact,
  with its path inside it), hashed once the same way: unchanged weights upload nothing. One blob per file,
  not split in parts: Cloud Storage takes objects of up to 5 TB, and the files of a model directory are
  fetched side by side (a single multi-GB file is one stream; see docs/app-package.md).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from spotleash.errors import ConfigError
from spotleash.packaging.app_tree import AppTree
from spotleash.wire.package import (
    AppSpec,
    ArtifactKind,
    Blob,
    BlobKind,
    LayeredManifest,
    PackageError,
    sha256_file,
    write_archive,
)

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


def artifact_blobs(name: str, path: Path, hashes: HashCache) -> tuple[ArtifactKind, list[LocalBlob]]:
    """The files of one artifact as blobs: a file is one blob (its base name as its path), a directory one blob
    per regular file under it (links followed for content, as the app tree does; ``.git`` and friends kept:
    an artifact is taken whole)."""
    def one(file: Path, rel: str) -> LocalBlob:
        try:
            blob = Blob(sha256=hashes.sha256(file), size=file.stat().st_size, kind="artifact", name=name, path=rel)
        except (PackageError, ValueError) as e:
            raise ConfigError(f"artifact {name!r}: {file} cannot be published under its path {rel!r}: {e}") from e
        return LocalBlob(blob, file)

    if path.is_file():
        return "file", [one(path, path.name)]
    out: list[LocalBlob] = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for f in sorted(filenames):
            file = Path(dirpath) / f
            if file.is_file():  # a dangling link or a socket is not content
                out.append(one(file, file.relative_to(path).as_posix()))
    return "dir", out


def layered_manifest(app: AppSpec, requirements: Sequence[str], blobs: Sequence[LocalBlob],
                     artifacts: dict[str, ArtifactKind] | None = None, no_deps: Sequence[str] = ()) -> LayeredManifest:
    return LayeredManifest(app=app, requirements=list(requirements), blobs=[b.blob for b in blobs],
                           artifacts=artifacts or {}, no_deps=list(no_deps))
