"""Layered packages on the publisher's side: the manifest, its canonical bytes, and the diff against the bucket."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from pydantic import ValidationError

from spotleash.packaging import layers
from spotleash.packaging.app_tree import AppTree
from spotleash.wire.package import (
    AppSpec,
    Blob,
    ComponentSpec,
    LayeredManifest,
    PackageError,
    blob_object,
    manifest_object,
    missing_blobs,
    parse_layered,
)

APP = AppSpec(name="demo", components=[ComponentSpec(name="web", command=["python", "web.py"], port=18101)])


def _blob(char: str, kind: str = "wheel", size: int = 10, name: str | None = None) -> Blob:
    return Blob(sha256=char * 64, size=size, kind=kind, name=name or f"{char}-1.0-py3-none-any.whl")  # type: ignore[arg-type]


def _manifest(*blobs: Blob) -> LayeredManifest:
    return LayeredManifest(app=APP, requirements=["x"], blobs=[_blob("a", "app", name="app.tar.gz"), *blobs])


def test_the_manifest_bytes_are_canonical_and_name_it() -> None:
    one = _manifest(_blob("b"), _blob("c"))
    other = _manifest(_blob("c"), _blob("b"))  # same blobs, another order
    assert one.to_bytes() == other.to_bytes() and one.sha256 == other.sha256
    assert one.sha256 == hashlib.sha256(one.to_bytes()).hexdigest()
    assert parse_layered(one.to_bytes(), one.sha256) == LayeredManifest.model_validate_json(one.to_bytes())
    assert one.total_bytes == 30
    assert manifest_object(one.sha256) == f"packages/{one.sha256}.json" and blob_object("b" * 64) == "blobs/" + "b" * 64


def test_a_manifest_whose_bytes_do_not_match_its_name_or_shape_is_refused() -> None:
    m = _manifest(_blob("b"))
    with pytest.raises(PackageError, match="sha256"):
        parse_layered(m.to_bytes() + b" ", m.sha256)
    with pytest.raises(PackageError, match="not a layered package manifest"):
        parse_layered(b'{"format": 1}')
    with pytest.raises(PackageError):
        blob_object("../etc/passwd")


def test_a_manifest_names_exactly_one_app_blob_and_unique_file_names() -> None:
    with pytest.raises(ValidationError, match="exactly one app blob"):
        LayeredManifest(app=APP, requirements=[], blobs=[_blob("b")])
    with pytest.raises(ValidationError, match="share a file name"):
        _manifest(_blob("b", name="x.whl"), _blob("c", name="x.whl"))
    with pytest.raises(ValidationError):
        _blob("b", name="../x.whl")


def test_the_diff_uploads_only_what_the_bucket_lacks() -> None:
    m = _manifest(_blob("b"), _blob("c", size=5))
    assert missing_blobs(m, {}) == list(m.blobs)
    assert [b.sha256[0] for b in missing_blobs(m, {"a" * 64: 10, "b" * 64: 10, "c" * 64: None})] == ["c"]
    assert missing_blobs(m, {"a" * 64: 10, "b" * 64: 10, "c" * 64: 5}) == []


def test_a_foreign_object_under_a_content_address_is_never_reused_or_overwritten() -> None:
    with pytest.raises(PackageError, match="foreign object"):
        missing_blobs(_manifest(_blob("b")), {"a" * 64: 10, "b" * 64: 11})


def _tree(root: Path, files: dict[str, str]) -> AppTree:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return AppTree(files={rel: root / rel for rel in files}, executable=frozenset(), skipped=())


def test_the_app_blob_is_deterministic_and_a_one_line_change_changes_only_it(tmp_path: Path) -> None:
    files = {"web.py": "print('hi')\n", "lib/util.py": "X = 1\n"}
    a = layers.app_blob(_tree(tmp_path / "a", files), tmp_path / "blobs")
    b = layers.app_blob(_tree(tmp_path / "b", files), tmp_path / "blobs")
    assert a.blob == b.blob and a.path.name == a.blob.sha256
    assert hashlib.sha256(a.path.read_bytes()).hexdigest() == a.blob.sha256
    c = layers.app_blob(_tree(tmp_path / "c", {**files, "web.py": "print('hi')\n# one line\n"}), tmp_path / "blobs")
    assert c.blob.sha256 != a.blob.sha256

    wheel = tmp_path / "w-1.0-py3-none-any.whl"
    wheel.write_bytes(b"wheel")
    hashes = layers.HashCache(tmp_path / "blobs" / layers.HASHES_FILE)
    w = layers.file_blob(wheel, "wheel", hashes)
    hashes.save()
    m1 = layers.layered_manifest(APP, ["w"], [a, w])
    m2 = layers.layered_manifest(APP, ["w"], [c, w])
    assert missing_blobs(m2, {b.sha256: b.size for b in m1.blobs}) == [c.blob]


def test_the_hash_cache_remembers_by_path_size_and_mtime(tmp_path: Path) -> None:
    f = tmp_path / "x.whl"
    f.write_bytes(b"one")
    cache = layers.HashCache(tmp_path / "h.json")
    assert cache.sha256(f) == hashlib.sha256(b"one").hexdigest()
    cache.save()
    again = layers.HashCache(tmp_path / "h.json")
    assert again.sha256(f) == hashlib.sha256(b"one").hexdigest()
    f.write_bytes(b"other bytes")  # another size: hashed again
    assert again.sha256(f) == hashlib.sha256(b"other bytes").hexdigest()
