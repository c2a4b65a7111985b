"""The stack's Cloud Storage honours generation preconditions on every kind of upload, as Cloud Storage does.

Driven with the official client (google-cloud-storage), which uploads in one request up to 8 MiB (multipart)
and in a resumable session beyond it, or whenever it does not know the size. fake-gcs-server alone checks
``ifGenerationMatch`` on the first kind only; the front (``local_emulator.storage.front``) checks a resumable
session's preconditions when the request that completes it arrives, against the object as it is then:
Cloud Storage's 412, which the client raises as ``PreconditionFailed``, and the object is left as it was.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from google.api_core.exceptions import PreconditionFailed
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from tests.emulator.emulator_fixtures import gcs_emulator

from local_emulator.storage.preconditions import CONDITION_NOT_MET
from spotleash.adapters.storage import GenerationConflict, Storage

pytestmark = [pytest.mark.emulator]

BUCKET = "preconditions"
BIG = 9 * 2**20  # past the client's 8 MiB multipart limit: a resumable upload


@pytest.fixture(scope="module")
def gcs_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with gcs_emulator(tmp_path_factory.mktemp("gcs-logs"), BUCKET) as url:
        yield url


@pytest.fixture(scope="module")
def bucket(gcs_url: str) -> storage.Bucket:
    client = storage.Client(project="p", credentials=AnonymousCredentials(), client_options={"api_endpoint": gcs_url})
    return client.bucket(BUCKET)


def resumable(bucket: storage.Bucket, name: str, data: bytes, **pre: int) -> storage.Blob:
    blob = bucket.blob(name)
    assert len(data) > 8 * 2**20, "the client would send this in one request"
    blob.upload_from_file(io.BytesIO(data), size=len(data), **pre)
    return blob


def live(bucket: storage.Bucket, name: str) -> tuple[int, bytes]:
    blob = bucket.get_blob(name)
    assert blob is not None and blob.generation is not None
    return blob.generation, blob.download_as_bytes()


def test_a_resumable_upload_with_if_generation_match_0_creates_once_then_is_refused(bucket: storage.Bucket) -> None:
    first = os.urandom(BIG)
    made = resumable(bucket, "big/create-once", first, if_generation_match=0)
    with pytest.raises(PreconditionFailed):
        resumable(bucket, "big/create-once", os.urandom(BIG), if_generation_match=0)
    assert live(bucket, "big/create-once") == (made.generation, first)


def test_a_resumable_upload_replaces_only_the_generation_it_names(bucket: storage.Bucket) -> None:
    first = resumable(bucket, "big/replace", os.urandom(BIG), if_generation_match=0)
    assert first.generation is not None
    with pytest.raises(PreconditionFailed):
        resumable(bucket, "big/replace", os.urandom(BIG), if_generation_match=first.generation + 1)
    with pytest.raises(PreconditionFailed):
        resumable(bucket, "big/replace", os.urandom(BIG), if_metageneration_match=(first.metageneration or 0) + 1)
    assert live(bucket, "big/replace")[0] == first.generation
    second = os.urandom(BIG)
    again = resumable(bucket, "big/replace", second, if_generation_match=first.generation)
    assert again.generation != first.generation
    assert live(bucket, "big/replace") == (again.generation, second)


def test_upload_from_filename_of_a_large_file_honours_if_generation_match(bucket: storage.Bucket, tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(os.urandom(BIG))
    bucket.blob("big/from-file").upload_from_filename(str(path), if_generation_match=0)
    path.write_bytes(os.urandom(BIG))
    with pytest.raises(PreconditionFailed):
        bucket.blob("big/from-file").upload_from_filename(str(path), if_generation_match=0)


def test_a_session_in_chunks_is_checked_when_its_last_chunk_comes(bucket: storage.Bucket) -> None:
    """Size unknown (a stream): the client sends 256 KiB chunks ``bytes a-b/*``, the total only with the last."""
    data = os.urandom(5 * 256 * 1024 + 10)
    bucket.blob("chunked/o", chunk_size=256 * 1024).upload_from_file(io.BytesIO(data), if_generation_match=0)
    with pytest.raises(PreconditionFailed):
        bucket.blob("chunked/o", chunk_size=256 * 1024).upload_from_file(io.BytesIO(os.urandom(len(data))),
                                                                          if_generation_match=0)
    assert live(bucket, "chunked/o")[1] == data


def test_a_writer_landing_between_a_sessions_start_and_end_fails_the_session(bucket: storage.Bucket) -> None:
    """Cloud Storage judges the preconditions when the upload completes: the session starts (200) while they
    hold, another writer replaces the object, and the request that completes the session answers 412."""
    bucket.blob("race/o").upload_from_string(b"v1", if_generation_match=0)
    gen = live(bucket, "race/o")[0]
    session = bucket.blob("race/o").create_resumable_upload_session(size=4, if_generation_match=gen)
    bucket.blob("race/o").upload_from_string(b"v2 (the other writer)", if_generation_match=gen)
    r = httpx.put(session, content=b"mine", headers={"Content-Range": "bytes 0-3/4"}, timeout=30)
    assert r.status_code == 412, r.text
    assert r.json()["error"]["errors"][0]["reason"] == "conditionNotMet"
    assert r.json()["error"]["message"] == CONDITION_NOT_MET
    assert live(bucket, "race/o")[1] == b"v2 (the other writer)"


def test_single_request_uploads_are_checked_too(bucket: storage.Bucket) -> None:
    bucket.blob("small/o").upload_from_string(b"first", if_generation_match=0)  # multipart
    with pytest.raises(PreconditionFailed):
        bucket.blob("small/o").upload_from_string(b"second", if_generation_match=0)
    gen = live(bucket, "small/o")[0]
    with pytest.raises(PreconditionFailed):
        bucket.blob("small/o").upload_from_string(b"second", if_generation_match=gen + 1)
    assert live(bucket, "small/o") == (gen, b"first")


def test_spotleash_storage_upload_file_of_an_existing_blob_is_a_generation_conflict(gcs_url: str,
                                                                                     tmp_path: Path) -> None:
    """What ``spotleash publish`` relies on for a blob over 8 MiB: a second writer of the same object is told so."""
    store = Storage(BUCKET, project="p", retry_s=5.0, emulator=gcs_url)
    path = tmp_path / "blob.bin"
    path.write_bytes(os.urandom(BIG))
    info = store.upload_file("blobs/adapter", path, if_generation_match=0, content_type="application/octet-stream")
    with pytest.raises(GenerationConflict):
        store.upload_file("blobs/adapter", path, if_generation_match=0, content_type="application/octet-stream")
    assert store.stat("blobs/adapter") == info
