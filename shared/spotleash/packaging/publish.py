"""``spotleash publish``: package the app, upload it content-addressed, move the channel's pointer.

1. read ``spotleash.toml`` (``[app]``), collect the app tree (ignore rules, secret refusal);
2. spotleash's own wheel (``own_wheel``: built from a source tree, rebuilt from an installed copy) and resolve every wheel the instance needs (cached);
3. write the deterministic archive: same files → same bytes → same sha256;
4. upload it to ``gs://<bucket>/packages/<sha256>.tar.gz`` with ``if_generation_match=0`` — skipped
   when it is already there (a re-publish of the same tree uploads 0 bytes);
5. check the uploaded object is whole (its size), then move ``latest-<channel>.txt`` with
   ``if_generation_match`` = the generation read just before. A pointer is only ever written after
   the archive it names is complete, so no reader can see a half-written or foreign archive; when two
   publishers race, the loser reads the new generation and tries again, and the pointer ends naming
   one complete archive.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

from spotleash.adapters.storage import GenerationConflict, ObjectNotFound, Storage
from spotleash.errors import BadInput
from spotleash.log import get_logger
from spotleash.packaging import app_tree, wheels
from spotleash.packaging.appspec import LoadedApp
from spotleash.packaging.own_wheel import own_wheel
from spotleash.wire.package import (
    build_package,
    package_object,
    parse_pointer,
    pointer_object,
    pointer_text,
)

log = get_logger(__name__)

POINTER_ATTEMPTS = 10


@dataclass(frozen=True)
class PublishResult:
    sha256: str
    uri: str
    pointer: str
    channel: str
    previous: str | None  # the sha256 the pointer named before (None: new channel)
    uploaded_bytes: int
    size_bytes: int
    files: int
    wheels: int
    timings_s: dict[str, float]

    def as_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Built:
    path: Path
    sha256: str
    files: int
    wheels: int


# progress(total_bytes) → a context manager yielding advance(n)
ProgressFactory = Callable[[int, str], AbstractContextManager[Callable[[int], None]]]


def _no_progress(_total: int, _label: str) -> AbstractContextManager[Callable[[int], None]]:
    return nullcontext(lambda _n: None)


def build(app: LoadedApp, work_dir: Path, wheel_cache: Path, timings: dict[str, float]) -> Built:
    """Steps 1–3: the archive in ``work_dir/<sha256>.tar.gz``."""
    t = time.monotonic()
    tree = app_tree.collect(app.root, app.spec)
    timings["collect"] = round(time.monotonic() - t, 3)

    t = time.monotonic()
    own = own_wheel(wheel_cache / "spotleash")
    wheel_files = wheels.resolve(own, list(app.spec.requirements), wheel_cache)
    timings["wheels"] = round(time.monotonic() - t, 3)

    t = time.monotonic()
    requirements = [wheels.instance_requirement(own), *app.spec.requirements]
    work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=work_dir, suffix=".tar.gz.tmp", delete=False) as tmp:
        tmp_path = Path(tmp.name)
    try:
        sha, _ = build_package(tmp_path, app.spec, tree.files, wheel_files, requirements, tree.executable)
        final = work_dir / f"{sha}.tar.gz"
        tmp_path.replace(final)
    finally:
        tmp_path.unlink(missing_ok=True)
    timings["archive"] = round(time.monotonic() - t, 3)
    return Built(final, sha, len(tree.files), len(wheel_files))


def upload(store: Storage, built: Built, progress: ProgressFactory = _no_progress) -> int:
    """Step 4: the archive, content-addressed; returns the bytes uploaded (0 when already there)."""
    name = package_object(built.sha256)
    size = built.path.stat().st_size
    existing = store.stat(name)
    if existing is not None:
        if existing.size != size:
            raise BadInput(f"{store.uri(name)} exists with {existing.size} bytes, not {size}: "
                           "the bucket holds a foreign object under a content address; delete it")
        return 0
    uploaded = size
    try:
        with progress(size, f"uploading {built.sha256[:12]}") as advance:
            store.upload_file(name, built.path, if_generation_match=0, on_progress=advance)
    except GenerationConflict:
        uploaded = 0  # another publisher stored the same content meanwhile; checked below
    got = store.stat(name)
    if got is None or got.size != size:
        raise BadInput(f"{store.uri(name)} is not whole after upload ({got.size if got else 'missing'} "
                       f"bytes, expected {size})")
    return uploaded


def move_pointer(store: Storage, channel: str, sha256: str, size: int) -> str | None:
    """Step 5: point ``latest-<channel>.txt`` at ``sha256``; returns the sha256 it named before."""
    name = pointer_object(channel)
    for _ in range(POINTER_ATTEMPTS):
        got = store.stat(package_object(sha256))  # never point at an archive that is not whole
        if got is None or got.size != size:
            raise BadInput(f"refusing to point {store.uri(name)} at {sha256}: the archive is not whole in the bucket")
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
    """The whole publish; the archive stays in ``STATE_DIR/packages/`` (a local cache of what was published)."""
    started = time.monotonic()
    timings: dict[str, float] = {}
    pointer_object(channel)  # a bad channel fails before any work
    built = build(app, state_dir / "packages", state_dir / "wheels", timings)

    t = time.monotonic()
    uploaded = upload(store, built, progress)
    timings["upload"] = round(time.monotonic() - t, 3)

    t = time.monotonic()
    size = built.path.stat().st_size
    previous = move_pointer(store, channel, built.sha256, size)
    timings["pointer"] = round(time.monotonic() - t, 3)
    timings["total"] = round(time.monotonic() - started, 3)
    result = PublishResult(
        sha256=built.sha256,
        uri=store.uri(package_object(built.sha256)),
        pointer=store.uri(pointer_object(channel)),
        channel=channel,
        previous=previous,
        uploaded_bytes=uploaded,
        size_bytes=size,
        files=built.files,
        wheels=built.wheels,
        timings_s=timings,
    )
    log.info("published", sha256=built.sha256, uploaded_bytes=uploaded, size_bytes=size, total_s=timings["total"])
    return result
