"""``spotleash publish``: the app as a layered package (``spotleash.wire.package``, format 2).

1. read ``spotleash.toml`` (``[app]``), collect the app tree (ignore rules, secret refusal) into one
   deterministic app blob;
2. spotleash's own wheel (``own_wheel``), every wheel the instance needs (``wheels.resolve``, cached) and
   uv's wheel (the instance installs with it): one blob each;
3. the manifest names each blob by sha256; its own sha256 is the package's;
4. ask the bucket which blobs it already has (``stat`` per blob, in parallel), upload the others in
   parallel with ``if_generation_match=0`` (never over an object), check each is whole;
5. write ``packages/<sha256>.json`` (also ``if_generation_match=0``), then move ``latest-<channel>.txt``
   with ``if_generation_match`` = the generation read just before.

The order is the guarantee: a manifest is written only once every blob it names is whole in the
bucket, and the pointer only ever names a manifest that is there. An interrupted publish leaves some
blobs and no manifest; the next publish finds those blobs and uploads only the rest. Two racing
publishers: the loser of the pointer reads the new generation and tries again.

Garbage: ``spotleash publish --gc`` (``collect_garbage``) deletes blobs and manifests no kept manifest
names (see ``spotleash.decide.package_gc``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

from spotleash.adapters.storage import GenerationConflict, ObjectNotFound, Storage
from spotleash.errors import BadInput
from spotleash.log import get_logger
from spotleash.packaging import app_tree, appspec, layers, wheels
from spotleash.packaging.appspec import LoadedApp
from spotleash.packaging.own_wheel import own_wheel
from spotleash.wire.package import (
    ArtifactKind,
    LayeredManifest,
    PackageError,
    blob_object,
    manifest_object,
    missing_blobs,
    parse_pointer,
    pointer_object,
    pointer_text,
)

log = get_logger(__name__)

POINTER_ATTEMPTS = 10
UPLOAD_THREADS = 8  # blobs in flight at once (each a resumable upload of its own)


@dataclass(frozen=True)
class PublishResult:
    sha256: str  # the manifest's: what the pointer names and a launch pins
    uri: str  # gs://<bucket>/packages/<sha256>.json
    pointer: str
    channel: str
    previous: str | None  # the sha256 the pointer named before (None: new channel)
    uploaded_bytes: int
    blobs_uploaded: int
    blobs_reused: int
    size_bytes: int  # every blob the manifest names
    files: int
    wheels: int
    timings_s: dict[str, float]

    def as_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Built:
    manifest: LayeredManifest
    blobs: dict[str, layers.LocalBlob]  # sha256 → where its bytes are
    files: int
    wheels: int

    @property
    def sha256(self) -> str:
        return self.manifest.sha256


# progress(total_bytes, label) → a context manager yielding advance(n); advance is called from upload threads
ProgressFactory = Callable[[int, str], AbstractContextManager[Callable[[int], None]]]


def _no_progress(_total: int, _label: str) -> AbstractContextManager[Callable[[int], None]]:
    return nullcontext(lambda _n: None)


def build(app: LoadedApp, state_dir: Path, timings: dict[str, float]) -> Built:
    """Steps 1–3: every blob on this machine and the manifest naming them."""
    t = time.monotonic()
    artifact_paths = appspec.artifact_paths(app.spec, app.config_file)  # checked again: it must exist now
    tree = app_tree.collect(app.root, app.spec, leave_out=list(artifact_paths.values()))
    app_blob = layers.app_blob(tree, state_dir / "blobs")
    timings["collect"] = round(time.monotonic() - t, 3)

    t = time.monotonic()
    cache = state_dir / "wheels"
    own = own_wheel(cache / "spotleash")
    wheel_files = wheels.resolve(own, list(app.spec.requirements), cache, image_provides=app.spec.image_provides)
    uv = wheels.uv_wheel(cache)
    timings["wheels"] = round(time.monotonic() - t, 3)

    t = time.monotonic()
    hashes = layers.HashCache(state_dir / "blobs" / layers.HASHES_FILE)
    local = [app_blob, *(layers.file_blob(w, "wheel", hashes) for w in wheel_files),
             layers.file_blob(uv, "tool", hashes)]
    kinds: dict[str, ArtifactKind] = {}
    for name, path in artifact_paths.items():
        kinds[name], files = layers.artifact_blobs(name, path, hashes)
        local += files
    hashes.save()
    # image_provides: checked against the image's python on the instance, never installed from the package
    requirements = wheels.without_provided([*wheels.instance_requirements(own), *app.spec.requirements],
                                           app.spec.image_provides)
    manifest = layers.layered_manifest(app.spec, requirements, local, kinds, no_deps=[wheels.own_requirement(own)])
    timings["hash"] = round(time.monotonic() - t, 3)
    return Built(manifest, {b.blob.sha256: b for b in local}, len(tree.files), len(wheel_files))


def present_blobs(store: Storage, manifest: LayeredManifest) -> dict[str, int | None]:
    """sha256 → size in the bucket (None: absent) of every blob the manifest names, asked in parallel."""
    shas = sorted({b.sha256 for b in manifest.blobs})
    with ThreadPoolExecutor(max_workers=UPLOAD_THREADS, thread_name_prefix="stat") as pool:
        infos = list(pool.map(lambda s: store.stat(blob_object(s)), shas))
    return {s: (i.size if i is not None else None) for s, i in zip(shas, infos, strict=True)}


def _upload_one(store: Storage, local: layers.LocalBlob, advance: Callable[[int], None]) -> int:
    name, size = blob_object(local.blob.sha256), local.blob.size
    uploaded = size
    try:
        store.upload_file(name, local.path, if_generation_match=0, on_progress=advance,
                          content_type="application/octet-stream")
    except GenerationConflict:
        uploaded = 0  # another publisher stored the same content meanwhile; checked below
    got = store.stat(name)
    if got is None or got.size != size:
        raise BadInput(f"{store.uri(name)} is not whole after upload ({got.size if got else 'missing'} bytes, "
                       f"expected {size})")
    return uploaded


def upload_blobs(store: Storage, built: Built, progress: ProgressFactory = _no_progress) -> tuple[int, int, int]:
    """Step 4: (bytes uploaded, blobs uploaded, blobs reused). Raises before any manifest is written when a
    blob cannot be stored: what did go up stays, and the next publish reuses it."""
    try:
        todo = missing_blobs(built.manifest, present_blobs(store, built.manifest))
    except PackageError as e:
        raise BadInput(str(e)) from e
    distinct = len({b.sha256 for b in built.manifest.blobs})
    total = sum(b.size for b in todo)
    sent = 0
    if todo:
        with progress(total, f"uploading {len(todo)} of {distinct} blobs") as advance, \
                ThreadPoolExecutor(max_workers=UPLOAD_THREADS, thread_name_prefix="upload") as pool:
            sent = sum(pool.map(lambda b: _upload_one(store, built.blobs[b.sha256], advance), todo))
    return sent, len(todo), distinct - len(todo)


def write_manifest(store: Storage, manifest: LayeredManifest) -> int:
    """Step 5a: ``packages/<sha256>.json``, written once; the bytes written (0 when already there)."""
    name, data = manifest_object(manifest.sha256), manifest.to_bytes()
    got = store.stat(name)
    if got is not None and got.size == len(data):
        return 0
    if got is not None:
        raise BadInput(f"{store.uri(name)} exists with {got.size} bytes, not {len(data)}: a foreign object under a "
                       "content address; delete it")
    try:
        store.write_bytes(name, data, if_generation_match=0, content_type="application/json")
    except GenerationConflict:
        return 0  # the same manifest written by another publisher
    return len(data)


def move_pointer(store: Storage, channel: str, sha256: str, size: int) -> str | None:
    """Step 5b: point ``latest-<channel>.txt`` at the manifest ``sha256``; returns the sha256 it named before."""
    name = pointer_object(channel)
    for _ in range(POINTER_ATTEMPTS):
        got = store.stat(manifest_object(sha256))  # never point at a manifest that is not whole
        if got is None or got.size != size:
            raise BadInput(f"refusing to point {store.uri(name)} at {sha256}: its manifest is not whole in the bucket")
        try:
            data, generation = store.read_bytes(name)
            previous: str | None = parse_pointer(data)
        except ObjectNotFound:
            generation, previous = 0, None
        except BadInput:
            generation, previous = store.generation(name), None  # an unreadable pointer: replace it
        if previous == sha256:
            return previous
        try:
            store.write_bytes(name, pointer_text(sha256).encode(), if_generation_match=generation)
            return previous
        except GenerationConflict:
            log.info("pointer moved by another publisher meanwhile; reading it again", pointer=name)
        except ObjectNotFound:
            log.info("pointer deleted meanwhile; reading it again", pointer=name)
    raise GenerationConflict(f"{store.uri(name)} kept changing under {POINTER_ATTEMPTS} attempts to move it")


def publish(app: LoadedApp, store: Storage, channel: str, state_dir: Path,
            progress: ProgressFactory = _no_progress) -> PublishResult:
    """The whole publish; the app blobs stay in ``STATE_DIR/blobs/`` (a local cache of what was published)."""
    started = time.monotonic()
    timings: dict[str, float] = {}
    pointer_object(channel)  # a bad channel fails before any work
    built = build(app, state_dir, timings)

    t = time.monotonic()
    sent, uploaded, reused = upload_blobs(store, built, progress)
    sent += write_manifest(store, built.manifest)
    timings["upload"] = round(time.monotonic() - t, 3)

    t = time.monotonic()
    previous = move_pointer(store, channel, built.sha256, len(built.manifest.to_bytes()))
    timings["pointer"] = round(time.monotonic() - t, 3)
    timings["total"] = round(time.monotonic() - started, 3)
    result = PublishResult(
        sha256=built.sha256, uri=store.uri(manifest_object(built.sha256)), pointer=store.uri(pointer_object(channel)),
        channel=channel, previous=previous, uploaded_bytes=sent, blobs_uploaded=uploaded, blobs_reused=reused,
        size_bytes=built.manifest.total_bytes, files=built.files, wheels=built.wheels, timings_s=timings,
    )
    log.info("published", sha256=built.sha256, uploaded_bytes=sent, blobs_uploaded=uploaded, blobs_reused=reused,
             total_s=timings["total"])
    return result
