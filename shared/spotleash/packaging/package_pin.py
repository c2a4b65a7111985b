"""The package a launch pins: the channel's pointer read once, its archive checked to exist.

A launch reads ``latest-<channel>.txt`` exactly once and keeps the sha256 in the instance's intent
record before the provider is called, so a redelivered demand, or a publish while the instance boots,
never mixes two versions: the instance fetches ``packages/<sha256>.tar.gz`` and checks that hash.

- no pointer, a pointer naming no sha256, or a pointer naming an archive that is not there →
  ``PackageMissing`` (``BadInput``: the launch is refused, reason ``package_missing``);
- Cloud Storage unreachable → ``StorageTransient`` (a ``Transient``: the demand is redelivered).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from spotleash.adapters.storage import ObjectNotFound, Storage
from spotleash.errors import BadInput
from spotleash.wire.package import PackageError, package_object, parse_pointer, pointer_object

MISSING = "package_missing"
MAX_SIGNED_S = 7 * 24 * 3600.0  # the longest a V4 signed URL may live


class PackageMissing(BadInput):
    """No runnable package on the channel; the message says what to do."""


@dataclass(frozen=True)
class PinnedPackage:
    sha256: str
    uri: str  # gs://<bucket>/packages/<sha256>.tar.gz
    object_name: str


def pinned(storage: Storage, sha256: str) -> PinnedPackage:
    """The archive a record already pinned (a redelivery resumes with it; no Cloud Storage call)."""
    name = package_object(sha256)
    return PinnedPackage(sha256, storage.uri(name), name)


def resolve(storage: Storage, channel: str) -> PinnedPackage:
    """The archive ``latest-<channel>.txt`` names, checked to exist."""
    pointer = pointer_object(channel)
    try:
        data, _ = storage.read_bytes(pointer)
    except ObjectNotFound as e:
        raise PackageMissing(f"nothing published on channel {channel!r}: {storage.uri(pointer)} does not exist; "
                             f"run `spotleash publish --channel {channel}`") from e
    try:
        sha = parse_pointer(data)
    except PackageError as e:
        raise PackageMissing(f"{storage.uri(pointer)} names no package ({e}); publish again") from e
    got = pinned(storage, sha)
    if storage.stat(got.object_name) is None:
        raise PackageMissing(f"{storage.uri(pointer)} names {sha[:12]}…, but {got.uri} does not exist; "
                             "publish again (the archive was deleted or never finished uploading)")
    return got


def read_url(storage: Storage, pkg: PinnedPackage, *, now: datetime, until: datetime) -> str:
    """A URL of the one archive for an instance with no Google identity (a secret: never log it)."""
    seconds = min(max((until - now).total_seconds(), 60.0), MAX_SIGNED_S)
    return storage.signed_request(pkg.object_name, "GET", expires_s=seconds).url
