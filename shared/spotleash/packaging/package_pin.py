"""The package a launch pins: the channel's pointer read once, its archive checked to exist.

A launch reads ``latest-<channel>.txt`` exactly once and keeps the sha256 in the instance's intent
record before the provider is called, so a redelivered demand, or a publish while the instance boots,
never mixes two versions: the instance fetches ``packages/<sha256>.json`` (a layered package: the
manifest, then its blobs) or, for a package published before layers, ``packages/<sha256>.tar.gz``, and
checks that hash.

A box with no Google identity (VAST) gets signed URLs: one for the manifest and one per blob it names
(``read_urls``). Cloud Storage's V4 signatures cover exactly one object, with no prefix grant, so "per
manifest" would mean a proxy or URLs stored in the bucket; per blob keeps each URL scoped to bytes the
pinned manifest names and nothing else.

- no pointer, a pointer naming no sha256, or a pointer naming an archive that is not there →
  ``PackageMissing`` (``BadInput``: the launch is refused, reason ``package_missing``);
- Cloud Storage unreachable → ``StorageTransient`` (a ``Transient``: the demand is redelivered).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from spotleash.adapters.storage import ObjectNotFound, Storage
from spotleash.errors import BadInput
from spotleash.wire.package import (
    PackageError,
    blob_object,
    manifest_object,
    package_object,
    parse_layered,
    parse_pointer,
    pointer_object,
)

MISSING = "package_missing"
MAX_SIGNED_S = 7 * 24 * 3600.0  # the longest a V4 signed URL may live


class PackageMissing(BadInput):
    """No runnable package on the channel; the message says what to do."""


@dataclass(frozen=True)
class PinnedPackage:
    sha256: str
    uri: str  # gs://<bucket>/packages/<sha256>.json (layered) or .tar.gz (one archive, before layers)
    object_name: str

    @property
    def layered(self) -> bool:
        return self.object_name.endswith(".json")


def pinned(storage: Storage, sha256: str) -> PinnedPackage:
    """The package a record already pinned (a redelivery resumes with it), named by its manifest; no Cloud
    Storage call, so a VM's launch never waits on Cloud Storage once the sha256 is pinned. A package published
    before layers has no manifest: the instance's bootstrap then reads the single archive beside it."""
    name = manifest_object(sha256)
    return PinnedPackage(sha256, storage.uri(name), name)


def _pinned_as_found(storage: Storage, sha256: str) -> PinnedPackage:
    """Its manifest when there is one, else the single archive of a package published before layers."""
    got = pinned(storage, sha256)
    if storage.stat(got.object_name) is None and storage.stat(package_object(sha256)) is not None:
        return PinnedPackage(sha256, storage.uri(package_object(sha256)), package_object(sha256))
    return got


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
    got = _pinned_as_found(storage, sha)
    if storage.stat(got.object_name) is None:
        raise PackageMissing(f"{storage.uri(pointer)} names {sha[:12]}…, but {got.uri} does not exist; "
                             "publish again (the manifest was deleted or never finished uploading)")
    return got


def read_urls(storage: Storage, pkg: PinnedPackage, *, now: datetime, until: datetime) -> tuple[str, dict[str, str]]:
    """For an instance with no Google identity: a URL of the manifest (or archive), and of each blob the
    manifest names (sha256 → URL). Secrets: never log them. The manifest is read here (a few kB) and its
    sha256 checked, so only blobs of the pinned package get a URL."""
    seconds = min(max((until - now).total_seconds(), 60.0), MAX_SIGNED_S)
    pkg = _pinned_as_found(storage, pkg.sha256)  # a signed URL names one object: the one that is there
    url = storage.signed_request(pkg.object_name, "GET", expires_s=seconds).url
    if not pkg.layered:
        return url, {}
    try:
        data, _ = storage.read_bytes(pkg.object_name)
        manifest = parse_layered(data, pkg.sha256)
    except (ObjectNotFound, PackageError) as e:
        raise PackageMissing(f"{pkg.uri} cannot be read as the pinned manifest: {e}") from e
    blobs = sorted({b.sha256 for b in manifest.blobs})
    return url, {s: storage.signed_request(blob_object(s), "GET", expires_s=seconds).url for s in blobs}
