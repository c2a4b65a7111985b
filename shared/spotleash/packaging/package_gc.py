"""``spotleash publish --gc``: list the bucket, decide (``spotleash.decide.package_gc``), delete.

Every listing must succeed before anything is decided (a failed listing is never "nothing to keep"); each
deletion is conditional on the generation listed, so an object rewritten meanwhile is left alone.
Single-archive packages (``packages/<sha256>.tar.gz``, before layers) are left alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from spotleash.adapters.storage import GenerationConflict, ObjectInfo, ObjectNotFound, Storage
from spotleash.decide.package_gc import Listed, plan_gc
from spotleash.errors import BadInput
from spotleash.log import get_logger
from spotleash.wire.package import (
    BLOBS_PREFIX,
    PACKAGES_PREFIX,
    SHA256_RE,
    PackageError,
    blob_object,
    manifest_object,
    parse_layered,
    parse_pointer,
)

log = get_logger(__name__)


@dataclass(frozen=True)
class GcResult:
    manifests_kept: int
    manifests_deleted: int
    blobs_deleted: int
    bytes_freed: int
    dry_run: bool

    def as_json(self) -> dict[str, object]:
        return asdict(self)


def _listed(o: ObjectInfo, sha: str) -> Listed:
    return Listed(sha, o.size, o.updated or datetime.now(UTC))  # no time: treated as just written (kept)


def collect_garbage(store: Storage, *, keep_recent: int = 5, grace_s: float = 86400.0, dry_run: bool = False,
                    now: datetime | None = None) -> GcResult:
    now = now or datetime.now(UTC)
    pointers: dict[str, str] = {}
    for o in store.list_objects("latest-"):
        try:
            pointers[o.name] = parse_pointer(store.read_bytes(o.name)[0])
        except (ObjectNotFound, BadInput):
            continue  # gone or unreadable: names nothing
    manifests, gens = {}, {}
    for o in store.list_objects(PACKAGES_PREFIX):
        sha = o.name.removeprefix(PACKAGES_PREFIX).removesuffix(".json")
        if o.name.endswith(".json") and SHA256_RE.match(sha):
            manifests[sha], gens[o.name] = _listed(o, sha), o.generation
    names: dict[str, frozenset[str] | None] = {}
    for sha in manifests:
        try:
            names[sha] = frozenset(b.sha256 for b in parse_layered(store.read_bytes(manifest_object(sha))[0], sha).blobs)
        except (ObjectNotFound, PackageError):
            names[sha] = None
    blobs = {}
    for o in store.list_objects(BLOBS_PREFIX):
        sha = o.name.removeprefix(BLOBS_PREFIX)
        if SHA256_RE.match(sha):
            blobs[sha], gens[o.name] = _listed(o, sha), o.generation
    plan = plan_gc(pointers=pointers, manifests=manifests, names=names, blobs=blobs, now=now,
                   keep_recent=keep_recent, grace_s=grace_s)
    if not dry_run:
        # manifests first: a blob is never gone while a manifest naming it is still there
        for name, reason in [*((manifest_object(s), r) for s, r in plan.delete_manifests.items()),
                             *((blob_object(s), r) for s, r in plan.delete_blobs.items())]:
            try:
                store.delete(name, if_generation_match=gens[name])
                log.info("package gc: deleted", object=store.uri(name), reason=reason)
            except (ObjectNotFound, GenerationConflict):
                log.info("package gc: changed or gone meanwhile; left alone", object=store.uri(name))
    return GcResult(len(plan.keep_manifests), len(plan.delete_manifests), len(plan.delete_blobs), plan.bytes_freed,
                    dry_run)
