"""The storage front's reading of uploads and judging of preconditions (local_emulator.storage.preconditions)."""

from __future__ import annotations

import json

import pytest

from local_emulator.storage.preconditions import (
    CONDITION_NOT_MET,
    Preconditions,
    Sessions,
    Target,
    completes,
    failure_body,
    read_upload,
    upload_id_of,
)

UP = "/upload/storage/v1/b/bk/o"


@pytest.mark.parametrize(("content_range", "last"), [
    (None, True),  # the whole upload in one request
    ("bytes 0-9437183/9437184", True),
    ("bytes 8388608-9437183/9437184", True),
    ("bytes */9437184", True),  # only the total: the bytes are all there
    ("bytes 0-262143/*", False),  # size not known yet: more follows
    ("bytes 0-262143/9437184", False),
    ("bytes 0-262143/nonsense", False),  # not one we know: left to the emulator
])
def test_which_chunk_completes_the_upload(content_range: str | None, last: bool) -> None:
    assert completes(content_range) is last


@pytest.mark.parametrize(("pre", "live", "failed"), [
    (Preconditions(generation=0), None, False),
    (Preconditions(generation=0), (7, 1), True),
    (Preconditions(generation=7), (7, 1), False),
    (Preconditions(generation=7), (8, 1), True),
    (Preconditions(generation=7), None, True),
    (Preconditions(metageneration=1), (7, 1), False),
    (Preconditions(metageneration=2), (7, 1), True),
    (Preconditions(metageneration=1), None, True),  # no live object has no metageneration
    (Preconditions(generation=7, metageneration=2), (7, 1), True),
    (Preconditions(), None, False),
])
def test_preconditions_against_the_live_object(pre: Preconditions, live: tuple[int, int] | None, failed: bool) -> None:
    assert pre.failed(live) is failed


def test_an_initiation_names_its_object_in_the_query_or_the_metadata() -> None:
    up = read_upload("POST", f"{UP}?uploadType=resumable&ifGenerationMatch=0", None, b'{"name": "blobs/ab"}')
    assert up is not None and (up.kind, up.bucket, up.name) == ("initiate", "bk", "blobs/ab")
    assert up.preconditions == Preconditions(generation=0) and up.preconditions
    up = read_upload("POST", f"{UP}?uploadType=resumable&name=a%2Fb", None, b"")
    assert up is not None and up.name == "a/b" and not up.preconditions


def test_a_chunk_is_known_by_its_upload_id() -> None:
    up = read_upload("PUT", f"{UP}?uploadType=resumable&name=o&upload_id=abc", "bytes 0-9/10", b"x" * 10)
    assert up is not None and (up.kind, up.upload_id, up.completes) == ("chunk", "abc", True)
    up = read_upload("PUT", f"{UP}?uploadType=resumable&upload_id=abc", "bytes 0-9/*", b"x" * 10)
    assert up is not None and not up.completes


def test_a_multipart_upload_names_its_object_in_the_first_part() -> None:
    body = b'--==0==\r\ncontent-type: application/json; charset=UTF-8\r\n\r\n{"name": "p/q"}\r\n--==0==\r\n'
    up = read_upload("POST", f"{UP}?uploadType=multipart&ifGenerationMatch=5", None, body)
    assert up is not None and (up.kind, up.name, up.preconditions) == ("single", "p/q", Preconditions(generation=5))


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/download/storage/v1/b/bk/o/x?alt=media"),
    ("GET", "/storage/v1/b/bk/o/x"),
    ("DELETE", f"{UP}?uploadType=resumable&upload_id=abc"),
    ("POST", "/storage/v1/b?project=p"),
])
def test_what_is_not_an_upload(method: str, path: str) -> None:
    assert read_upload(method, path, None, b"") is None


def test_a_malformed_precondition_is_left_to_the_emulator() -> None:
    assert read_upload("POST", f"{UP}?uploadType=media&name=o&ifGenerationMatch=x", None, b"") is None


def test_the_session_url_gives_its_upload_id() -> None:
    assert upload_id_of("http://127.0.0.1:1/upload/storage/v1/b/bk/o?uploadType=resumable&name=o&upload_id=u1") == "u1"
    assert upload_id_of(None) is None


def test_the_failure_is_cloud_storages_412() -> None:
    error = json.loads(failure_body())["error"]
    assert error["code"] == 412 and error["message"] == CONDITION_NOT_MET
    assert error["errors"][0]["reason"] == "conditionNotMet"


def test_sessions_remember_until_closed_and_share_one_lock_per_object() -> None:
    s = Sessions()
    t = Target("bk", "o")
    s.opened("u1", t, Preconditions(generation=0))
    assert s.of("u1") == (t, Preconditions(generation=0)) and len(s) == 1
    assert s.lock(t) is s.lock(Target("bk", "o")) and s.lock(t) is not s.lock(Target("bk", "other"))
    s.closed("u1")
    s.closed("u1")  # twice: harmless
    assert s.of("u1") is None and len(s) == 0
