"""Snapshots of an instance's state paths, made and restored on the instance itself.

**Snapshot** (``take_snapshot``): pack the state paths (default ``/workspace`` on VAST; on GCE the
configured ones, none by default) into zstd-compressed tar parts of about ``part_bytes`` of content
each, hashing every part (sha256, MD5) as it is written; ask the control plane over the heartbeat
for one URL per object (``UploadAsk`` → ``UploadGrant``); upload the parts, then ``manifest.json``;
report it (``UploadedAsk``) and wait for the control plane's verdict. Only a ``verified`` verdict
means the snapshot exists; a failed upload is reported (``AbandonedAsk``) so the control plane
alerts, and the previous snapshot stays the one restored.

**Restore** (``restore``): before components start, ask which snapshot to restore (``RestoreAsk`` →
``RestoreGrant``), download its manifest and check its sha256 against the one the control plane
recorded, download every part checking size and sha256, and only then extract — into a staging
directory beside each state path, refusing any member that is not a regular file, a directory or a
symlink staying inside its root (tarfile's ``data`` filter: no absolute paths, no ``..``, no links
out, no devices). A snapshot that fails any check is named in the next ``RestoreAsk.failed``; the
control plane marks it CORRUPT, audits it and grants the one before.

What is packed: regular files, directories and symlinks whose target stays inside their root.
Symlinks pointing outside, sockets, FIFOs and devices are left out and listed in the manifest's
``skipped``; a file that shrinks while it is read is padded and listed there too (the workload keeps
running while the snapshot is taken).

The control plane is reached through a ``Channel`` (``HeartbeatChannel`` posts a heartbeat carrying
the ask). URLs are bearer secrets: they are never logged (only the object names).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import shutil
import stat
import tarfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, Protocol

import httpx
import zstandard
from pydantic import TypeAdapter, ValidationError

from spotleash.clock import utcnow
from spotleash.log import get_logger
from spotleash.wire.events import Heartbeat
from spotleash.wire.snapshot import (
    MANIFEST_OBJECT,
    MAX_MANIFEST_BYTES,
    MAX_PARTS,
    AbandonedAsk,
    ManifestObject,
    Refused,
    RestoreAsk,
    RestoredAsk,
    RestoreGrant,
    RestoreWait,
    SnapshotAsk,
    SnapshotManifest,
    SnapshotReply,
    SnapshotTrigger,
    Transfer,
    UploadAsk,
    UploadedAsk,
    UploadGrant,
    Verdict,
    object_names,
    part_object,
)

log = get_logger(__name__)

DEFAULT_STATE_PATHS: dict[str, list[str]] = {"vast": ["/workspace"]}  # GCE: only what the app declares
PART_BYTES = 256 * 1024 * 1024  # content per part: a part is one PUT, retried whole
ZSTD_LEVEL = 3
CHUNK = 1 << 20
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MAX_RESTORE_ATTEMPTS = 8
MAX_RESTORE_WAIT_S = 120.0  # told to wait (RestoreWait) this long in all, the restore takes what it is granted
WORKERS = 4
CHANNEL_RETRY_S = 60.0  # a snapshot ask is repeated this long while the control plane does not answer

_reply_adapter: TypeAdapter[SnapshotReply] = TypeAdapter(SnapshotReply)


class SnapshotError(Exception):
    """A snapshot or restore step failed; ``detail`` says which and why (no URL in it)."""


class CorruptSnapshot(SnapshotError):
    """The snapshot's bytes are not what its manifest promises, or its archive is unsafe."""


def state_paths_for(provider: str, configured: list[str]) -> list[Path]:
    """The directories to snapshot: the configured ones, else the provider's default (GCE: none)."""
    chosen = configured or DEFAULT_STATE_PATHS.get(provider, [])
    paths = [Path(p) for p in chosen]
    for p in paths:
        if not p.is_absolute() or ".." in p.parts:
            raise SnapshotError(f"state path {str(p)!r} must be absolute and without '..'")
    if len({str(p) for p in paths}) != len(paths):
        raise SnapshotError(f"state paths repeat: {chosen}")
    return paths


# ------------------------------------------------------------------------------------------ packing


class _HashingWriter:
    """Counts and hashes what passes through to ``f`` (the compressed part as it is written)."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.size = 0
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5()  # noqa: S324 - Cloud Storage's integrity hash, not security

    def write(self, data: bytes) -> int:
        self._f.write(data)
        self.size += len(data)
        self.sha256.update(data)
        self.md5.update(data)
        return len(data)

    def flush(self) -> None:
        self._f.flush()


class _Exactly:
    """Reads exactly ``size`` bytes of ``f``: zero-padded when the file shrank while it was read."""

    def __init__(self, f: IO[bytes], size: int) -> None:
        self._f = f
        self._left = size
        self.short = False

    def read(self, n: int = -1) -> bytes:
        want = self._left if n < 0 else min(n, self._left)
        data = self._f.read(want)
        if len(data) < want:
            self.short = True
            data += b"\0" * (want - len(data))
        self._left -= len(data)
        return data


@dataclass(frozen=True)
class PackedPart:
    path: Path
    info: ManifestObject


@dataclass
class Packed:
    roots: list[Path]
    parts: list[PackedPart] = field(default_factory=list)
    files: int = 0
    raw_bytes: int = 0
    skipped: list[str] = field(default_factory=list)

    @property
    def size_bytes(self) -> int:
        return sum(p.info.size for p in self.parts)


def _entries(root: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """Every entry under ``root`` (itself first), depth first in name order, links not followed."""
    yield root, root.lstat()
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            children = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError:
            continue
        subdirs = []
        for e in children:
            p = Path(e.path)
            try:
                st = p.lstat()
            except FileNotFoundError:
                continue  # gone meanwhile
            yield p, st
            if stat.S_ISDIR(st.st_mode):
                subdirs.append(p)
        stack.extend(reversed(subdirs))


def _link_stays_inside(root: Path, link: Path, target: str) -> bool:
    if os.path.isabs(target):
        return False
    resolved = os.path.normpath(os.path.join(os.path.dirname(link), target))
    return resolved == str(root) or resolved.startswith(str(root) + os.sep)


class _PartWriter:
    def __init__(self, spool: Path, index: int, level: int, threads: int) -> None:
        self.name = part_object(index)
        self.path = spool / self.name
        self._f = self.path.open("wb")
        self.out = _HashingWriter(self._f)
        out: Any = self.out  # a file-like writer, as zstandard wants
        self._z: Any = zstandard.ZstdCompressor(level=level, threads=threads).stream_writer(out, closefd=False)
        self.tar = tarfile.open(fileobj=self._z, mode="w|", format=tarfile.PAX_FORMAT)
        self.raw = 0

    def close(self) -> PackedPart:
        self.tar.close()
        self._z.close()
        self._f.close()
        md5 = base64.b64encode(self.out.md5.digest()).decode()
        return PackedPart(self.path, ManifestObject(name=self.name, size=self.out.size,
                                                    sha256=self.out.sha256.hexdigest(), md5=md5))


def pack(roots: list[Path], spool: Path, *, part_bytes: int = PART_BYTES, level: int = ZSTD_LEVEL,
         threads: int = -1) -> Packed:
    """The state paths as zstd tar parts in ``spool``; members are ``r<i>/<path relative to root i>``."""
    spool.mkdir(parents=True, exist_ok=True)
    packed = Packed(roots=list(roots))
    writer = _PartWriter(spool, 0, level, threads)
    for i, root in enumerate(roots):
        if not root.is_dir():
            packed.skipped.append(f"{root}: not a directory")
            continue
        for path, st in _entries(root):
            rel = path.relative_to(root).as_posix()
            name = f"r{i}" if rel == "." else f"r{i}/{rel}"
            info = tarfile.TarInfo(name)
            info.mtime, info.mode = int(st.st_mtime), stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                writer.tar.addfile(info)
            elif stat.S_ISLNK(st.st_mode):
                target = os.readlink(path)
                if not _link_stays_inside(root, path, target):
                    packed.skipped.append(f"{path}: symlink to {target} leaves {root}")
                    continue
                info.type, info.linkname = tarfile.SYMTYPE, target
                writer.tar.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                if writer.raw >= part_bytes and len(packed.parts) + 1 < MAX_PARTS:
                    packed.parts.append(writer.close())
                    writer = _PartWriter(spool, len(packed.parts), level, threads)
                try:
                    with path.open("rb") as f:
                        info.size = st.st_size
                        body = _Exactly(f, st.st_size)
                        writer.tar.addfile(info, body)
                except OSError as e:  # unreadable or gone since it was listed: left out, said so
                    packed.skipped.append(f"{path}: {e.strerror or e}")
                    continue
                if body.short:
                    packed.skipped.append(f"{path}: changed while being read (zero-padded)")
                writer.raw += st.st_size
                packed.raw_bytes += st.st_size
                packed.files += 1
            else:
                packed.skipped.append(f"{path}: not a regular file, directory or symlink")
    packed.parts.append(writer.close())
    return packed


# ------------------------------------------------------------------------------------------ talking


class Channel(Protocol):
    def ask(self, ask: SnapshotAsk, budget_s: float | None = None) -> SnapshotReply:
        """Send one ask to the control plane and return its answer; ``SnapshotError`` if none came (within
        ``budget_s`` when given: a preemption snapshot has 25 s in all)."""
        ...


class HeartbeatChannel:
    """Asks ride on a heartbeat (``beat(ask)`` builds it); the answer is the reply's ``snapshot``.

    An ask whose heartbeat got no answer (connection refused or cut, a 429/5xx: the function restarting,
    or killed after it acted and before it replied) is sent again, in a fresh heartbeat, for up to
    ``retry_budget_s``. Every ask is safe to repeat: an upload ask for a snapshot already recorded gets
    that snapshot's URLs again, a repeated "uploaded" gets the verdict already given. Without this, a
    control plane restart during the grant lost the whole packed snapshot."""

    def __init__(self, http: httpx.Client, url: str, token: str, beat: Callable[[SnapshotAsk], Heartbeat], *,
                 retry_budget_s: float = CHANNEL_RETRY_S, sleep: Callable[[float], None] = time.sleep) -> None:
        self._http, self._url, self._token, self._beat = http, url, token, beat
        self._retry_budget_s, self._sleep = retry_budget_s, sleep

    def ask(self, ask: SnapshotAsk, budget_s: float | None = None) -> SnapshotReply:
        budget = self._retry_budget_s if budget_s is None else min(budget_s, self._retry_budget_s)
        give_up_at = time.monotonic() + budget
        pause = 0.5
        while True:
            try:
                return self._ask_once(ask)
            except _NoAnswer as e:
                if time.monotonic() + pause > give_up_at:
                    raise SnapshotError(f"{ask.op}: {e} (asked for {budget:.0f} s)") from e
                log.warning("snapshot ask not answered; asking again", op=ask.op, reason=str(e), pause_s=pause)
            self._sleep(pause)
            pause = min(pause * 2, 8.0)

    def _ask_once(self, ask: SnapshotAsk) -> SnapshotReply:
        body = self._beat(ask).model_dump_json()
        try:
            r = self._http.post(self._url, content=body, headers={
                "Authorization": f"Bearer {self._token}", "Content-Type": "application/json"})
        except httpx.HTTPError as e:
            raise _NoAnswer(f"the control plane did not answer ({type(e).__name__})") from e
        if r.status_code in RETRY_STATUSES:
            raise _NoAnswer(f"the control plane answered HTTP {r.status_code}")
        if r.status_code != 200:
            raise SnapshotError(f"{ask.op}: the control plane answered HTTP {r.status_code}")
        return parse_reply(r.text, ask.op)


class _NoAnswer(Exception):
    """A heartbeat that got no usable answer and may be sent again."""


def parse_reply(text: str, op: str) -> SnapshotReply:
    """The ``snapshot`` member of a heartbeat reply body."""
    try:
        data = json.loads(text)
        return _reply_adapter.validate_python(data["snapshot"])
    except (ValueError, KeyError, TypeError, ValidationError) as e:
        raise SnapshotError(f"{op}: the heartbeat reply carries no snapshot answer") from e


def _expect(reply: SnapshotReply, kind: type[Any], op: str) -> Any:
    if isinstance(reply, Refused):
        raise SnapshotError(f"{op}: refused by the control plane: {reply.detail}")
    if not isinstance(reply, kind):
        raise SnapshotError(f"{op}: unexpected answer {reply.kind!r}")
    return reply


def _send(http: httpx.Client, t: Transfer, what: str, *, content: Any = None, size: int | None = None,
          retry_budget_s: float, sleep: Callable[[float], None]) -> httpx.Response:
    """One request, retried on connection errors and 408/429/5xx within the budget."""
    give_up_at = time.monotonic() + retry_budget_s
    pause = 0.5
    while True:
        headers = dict(t.headers)
        if size is not None:
            headers["Content-Length"] = str(size)
        body = content() if callable(content) else content
        try:
            r = http.request(t.method, t.url, content=body, headers=headers)
            if r.status_code not in RETRY_STATUSES:
                return r
            why = f"HTTP {r.status_code}"
        except httpx.TransportError as e:
            why = type(e).__name__
        if time.monotonic() + pause > give_up_at:
            raise SnapshotError(f"{what}: Cloud Storage unavailable ({why}) after retries")
        log.warning("snapshot transfer failed; retrying", object=what, reason=why, pause_s=pause)
        sleep(pause)
        pause = min(pause * 2, 15.0)


def _file_chunks(path: Path) -> Callable[[], Iterator[bytes]]:
    def chunks() -> Iterator[bytes]:
        with path.open("rb") as f:
            while data := f.read(CHUNK):
                yield data
    return chunks


def _upload(http: httpx.Client, t: Transfer, name: str, *, path: Path | None = None, data: bytes | None = None,
            retry_budget_s: float, sleep: Callable[[float], None]) -> None:
    if path is not None:
        r = _send(http, t, name, content=_file_chunks(path), size=path.stat().st_size,
                  retry_budget_s=retry_budget_s, sleep=sleep)
    else:
        r = _send(http, t, name, content=data, retry_budget_s=retry_budget_s, sleep=sleep)
    if r.status_code == 412:  # create-only: it is there already (a retry whose first answer was lost)
        log.info("snapshot object already uploaded", object=name)
        return
    if not 200 <= r.status_code < 300:
        raise SnapshotError(f"upload {name}: HTTP {r.status_code}")


# ------------------------------------------------------------------------------------------ snapshot


@dataclass(frozen=True)
class SnapshotOutcome:
    snapshot_id: str
    verified: bool
    detail: str
    files: int = 0
    raw_bytes: int = 0
    size_bytes: int = 0
    skipped: tuple[str, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)


def take_snapshot(
    roots: list[Path],
    *,
    snapshot_id: str,
    lease_id: str,
    instance_id: str,
    channel: Channel,
    spool: Path,
    http: httpx.Client | None = None,
    part_bytes: int = PART_BYTES,
    level: int = ZSTD_LEVEL,
    retry_budget_s: float = 120.0,
    sleep: Callable[[float], None] = time.sleep,
    trigger: SnapshotTrigger = "manual",
    request_id: str | None = None,
) -> SnapshotOutcome:
    """Pack, upload and have the control plane verify one snapshot. Never raises for a failed step:
    the outcome says what happened (and the control plane was told, if it could be reached)."""
    client = http or httpx.Client(timeout=120.0, trust_env=False)
    work = spool / snapshot_id
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    try:
        packed = pack(roots, work, part_bytes=part_bytes, level=level)
        timings["pack_s"] = time.monotonic() - t0
        manifest = SnapshotManifest(
            snapshot_id=snapshot_id, lease_id=lease_id, instance_id=instance_id, created_at=utcnow(),
            roots=[str(r) for r in roots], objects=[p.info for p in packed.parts], files=packed.files,
            raw_bytes=packed.raw_bytes, skipped=packed.skipped[:1000])
        manifest_bytes = manifest.model_dump_json().encode()
        t1 = time.monotonic()
        grant: UploadGrant = _expect(channel.ask(UploadAsk(snapshot_id=snapshot_id, parts=len(packed.parts),
                                                               trigger=trigger, request_id=request_id),
                                                     retry_budget_s), UploadGrant, "upload")
        timings["grant_s"] = time.monotonic() - t1
        if set(grant.objects) != set(object_names(len(packed.parts))):
            raise SnapshotError("upload: the grant does not name this snapshot's objects")
        t2 = time.monotonic()
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            for f in [pool.submit(_upload, client, grant.objects[p.info.name], p.info.name, path=p.path,
                                  retry_budget_s=retry_budget_s, sleep=sleep) for p in packed.parts]:
                f.result()
        _upload(client, grant.objects[MANIFEST_OBJECT], MANIFEST_OBJECT, data=manifest_bytes,
                retry_budget_s=retry_budget_s, sleep=sleep)
        timings["upload_s"] = time.monotonic() - t2
        t3 = time.monotonic()
        verdict: Verdict = _expect(channel.ask(UploadedAsk(
            snapshot_id=snapshot_id, manifest_sha256=hashlib.sha256(manifest_bytes).hexdigest()), retry_budget_s),
            Verdict, "uploaded")
        timings["verify_s"] = time.monotonic() - t3
    except (SnapshotError, OSError, zstandard.ZstdError, tarfile.TarError) as e:
        detail = str(e)[:400]
        log.error("snapshot failed", snapshot_id=snapshot_id, reason=detail)
        try:
            channel.ask(AbandonedAsk(snapshot_id=snapshot_id, detail=detail), retry_budget_s)
        except SnapshotError as told:
            log.warning("could not report the failed snapshot", snapshot_id=snapshot_id, reason=str(told))
        return SnapshotOutcome(snapshot_id, False, detail, timings={"total_s": time.monotonic() - t0})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    timings["total_s"] = time.monotonic() - t0
    log.info("snapshot taken", snapshot_id=snapshot_id, verified=verdict.verified, files=packed.files,
             raw_bytes=packed.raw_bytes, size_bytes=packed.size_bytes, parts=len(packed.parts),
             skipped=len(packed.skipped), **{k: round(v, 3) for k, v in timings.items()})
    return SnapshotOutcome(snapshot_id, verdict.verified, verdict.detail, packed.files, packed.raw_bytes,
                           packed.size_bytes, tuple(packed.skipped), timings)


# ------------------------------------------------------------------------------------------ restore


@dataclass(frozen=True)
class RestoreOutcome:
    snapshot_id: str | None  # None: nothing was restorable (a first start, or every snapshot corrupt)
    fell_back: dict[str, str]  # snapshots found corrupt on the way, with why
    seconds: float = 0.0
    raw_bytes: int = 0
    files: int = 0


def _download(http: httpx.Client, t: Transfer, name: str, dest: Path, want: ManifestObject, *,
              retry_budget_s: float, sleep: Callable[[float], None]) -> None:
    give_up_at = time.monotonic() + retry_budget_s
    pause = 0.5
    while True:
        h, size = hashlib.sha256(), 0
        try:
            with http.stream(t.method, t.url, headers=t.headers) as r:
                if r.status_code == 404:
                    raise CorruptSnapshot(f"{name}: missing from the bucket")
                if r.status_code in RETRY_STATUSES:
                    raise httpx.TransportError(f"HTTP {r.status_code}")
                if r.status_code != 200:
                    raise SnapshotError(f"download {name}: HTTP {r.status_code}")
                with dest.open("wb") as f:
                    for chunk in r.iter_bytes(CHUNK):
                        size += len(chunk)
                        if size > want.size:
                            raise CorruptSnapshot(f"{name}: larger than the manifest's {want.size} bytes")
                        h.update(chunk)
                        f.write(chunk)
            break
        except httpx.TransportError as e:
            if time.monotonic() + pause > give_up_at:
                raise SnapshotError(f"download {name}: Cloud Storage unavailable ({e}) after retries") from e
            sleep(pause)
            pause = min(pause * 2, 15.0)
    if size != want.size or h.hexdigest() != want.sha256:
        raise CorruptSnapshot(f"{name}: sha256 {h.hexdigest()[:16]}… ({size} bytes) is not the manifest's "
                              f"{want.sha256[:16]}… ({want.size} bytes)")


def _manifest(http: httpx.Client, grant: RestoreGrant, *, retry_budget_s: float,
              sleep: Callable[[float], None]) -> SnapshotManifest:
    t = grant.objects.get(MANIFEST_OBJECT)
    if t is None:
        raise SnapshotError("restore: the grant has no manifest URL")
    r = _send(http, t, MANIFEST_OBJECT, retry_budget_s=retry_budget_s, sleep=sleep)
    if r.status_code == 404:
        raise CorruptSnapshot("manifest.json: missing from the bucket")
    if r.status_code != 200:
        raise SnapshotError(f"download manifest.json: HTTP {r.status_code}")
    data = r.content[:MAX_MANIFEST_BYTES + 1]
    if hashlib.sha256(data).hexdigest() != grant.manifest_sha256:
        raise CorruptSnapshot("manifest.json: its sha256 is not the one verified at upload")
    try:
        return SnapshotManifest.model_validate_json(data)
    except ValidationError as e:
        raise CorruptSnapshot(f"manifest.json: not a snapshot manifest ({e.error_count()} errors)") from e


def _split_member(name: str, roots: int) -> tuple[int, str]:
    """``r<i>/<rest>`` → (i, rest); anything else is unsafe."""
    head, _, rest = name.partition("/")
    if not (head.startswith("r") and head[1:].isdigit() and int(head[1:]) < roots and str(int(head[1:])) == head[1:]):
        raise CorruptSnapshot(f"unsafe member {name!r}: not under a state root")
    p = PurePosixPath(rest) if rest else PurePosixPath(".")
    if p.is_absolute() or ".." in p.parts or "\\" in name:
        raise CorruptSnapshot(f"unsafe member {name!r}")
    return int(head[1:]), rest or "."


def _extract(part: Path, staging: list[Path]) -> tuple[int, int]:
    """Extract one verified part into the staging roots; (files, bytes). Unsafe members: CorruptSnapshot."""
    files = raw = 0
    with part.open("rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as z, \
            tarfile.open(fileobj=z, mode="r|") as tar:
        for m in tar:
            i, rest = _split_member(m.name, len(staging))
            if not (m.isreg() or m.isdir() or m.issym()):
                raise CorruptSnapshot(f"unsafe member {m.name!r}: links, devices and FIFOs are never restored"
                                      if m.islnk() else f"unsafe member {m.name!r}: not a file, dir or symlink")
            if rest == ".":
                continue
            tar.extract(_checked_member(m, rest, staging[i]), staging[i], set_attrs=True)
            if m.isreg():
                files += 1
                raw += m.size
    return files, raw


def _checked_member(m: tarfile.TarInfo, rest: str, root: Path) -> tarfile.TarInfo:
    """The data filter's refusals by hand (Debian 12's Python 3.11.2 has no tarfile filters): no
    absolute name, nothing that lands outside ``root`` (also through a symlink already extracted), no
    symlink pointing outside it; no setuid bits, no group/other write, no owner from the archive."""
    top = root.resolve()
    if rest.startswith("/") or os.path.isabs(rest):
        raise CorruptSnapshot(f"unsafe member {m.name!r}: absolute path")
    target = (top / rest).resolve()
    if not target.is_relative_to(top):
        raise CorruptSnapshot(f"unsafe member {m.name!r}: lands outside its root")
    if m.issym():
        if os.path.isabs(m.linkname) or not (target.parent / m.linkname).resolve().is_relative_to(top):
            raise CorruptSnapshot(f"unsafe member {m.name!r}: symlink points outside its root")
    safe = copy.copy(m)  # TarInfo.replace() is 3.11.4+ too
    safe.name = rest
    safe.mode = m.mode & 0o755
    safe.uid, safe.gid, safe.uname, safe.gname = os.getuid(), os.getgid(), "", ""
    return safe


def _swap_in(staging: Path, root: Path) -> None:
    """Replace ``root``'s content by ``staging``'s (root itself may be a mount point: it stays)."""
    root.mkdir(parents=True, exist_ok=True)
    for child in list(root.iterdir()):
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    for child in list(staging.iterdir()):
        child.rename(root / child.name)
    staging.rmdir()


def _restore_one(http: httpx.Client, grant: RestoreGrant, roots: list[Path], spool: Path, *,
                 retry_budget_s: float, sleep: Callable[[float], None]) -> tuple[int, int]:
    manifest = _manifest(http, grant, retry_budget_s=retry_budget_s, sleep=sleep)
    if len(manifest.roots) != len(roots):
        raise CorruptSnapshot(f"the snapshot has {len(manifest.roots)} state paths, this instance {len(roots)}")
    missing = [o.name for o in manifest.objects if o.name not in grant.objects]
    if missing:
        raise SnapshotError(f"restore: the grant has no URL for {missing[:3]}")
    work = spool / f"restore-{grant.snapshot_id}"
    work.mkdir(parents=True, exist_ok=True)
    staging = [r.parent / f".{r.name}.restore-{grant.snapshot_id}" for r in roots]
    try:
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            for f in [pool.submit(_download, http, grant.objects[o.name], o.name, work / o.name, o,
                                  retry_budget_s=retry_budget_s, sleep=sleep) for o in manifest.objects]:
                f.result()
        for s in staging:
            shutil.rmtree(s, ignore_errors=True)
            s.mkdir(parents=True)
        files = raw = 0
        for o in manifest.objects:  # every part verified before the first byte is extracted
            n, b = _extract(work / o.name, staging)
            files, raw = files + n, raw + b
        for s, r in zip(staging, roots, strict=True):
            _swap_in(s, r)
        return files, raw
    except (zstandard.ZstdError, tarfile.TarError, EOFError) as e:
        raise CorruptSnapshot(f"unreadable archive: {e}") from e
    finally:
        shutil.rmtree(work, ignore_errors=True)
        for s in staging:
            shutil.rmtree(s, ignore_errors=True)


def restore(
    roots: list[Path],
    *,
    channel: Channel,
    spool: Path,
    http: httpx.Client | None = None,
    retry_budget_s: float = 120.0,
    sleep: Callable[[float], None] = time.sleep,
) -> RestoreOutcome:
    """Restore the latest verified snapshot of the lease into ``roots``, falling back past corrupt ones.

    Raises ``SnapshotError`` when it cannot finish (control plane or Cloud Storage unreachable): the
    caller decides whether components may start without their state.
    """
    client = http or httpx.Client(timeout=120.0, trust_env=False)
    failed: dict[str, str] = {}
    t0 = time.monotonic()
    waited = 0.0
    for _ in range(MAX_RESTORE_ATTEMPTS):
        reply = channel.ask(RestoreAsk(failed=failed))
        while isinstance(reply, RestoreWait) and waited < MAX_RESTORE_WAIT_S:  # a newer snapshot is on its way
            log.info("restore waits for a newer snapshot", detail=reply.detail[:200], retry_after_s=reply.retry_after_s)
            pause = min(reply.retry_after_s, MAX_RESTORE_WAIT_S - waited)
            sleep(pause)
            waited += pause
            reply = channel.ask(RestoreAsk(failed=failed))
        grant: RestoreGrant = _expect(reply, RestoreGrant, "restore")
        if grant.snapshot_id is None:
            break
        if grant.snapshot_id in failed:
            raise SnapshotError(f"restore: the control plane granted {grant.snapshot_id} again after it failed")
        try:
            files, raw = _restore_one(client, grant, roots, spool, retry_budget_s=retry_budget_s, sleep=sleep)
        except CorruptSnapshot as e:
            log.error("snapshot corrupt; falling back to the one before", snapshot_id=grant.snapshot_id,
                      reason=str(e)[:300])
            failed[grant.snapshot_id] = str(e)[:480]
            continue
        seconds = time.monotonic() - t0
        _tell(channel, RestoredAsk(snapshot_id=grant.snapshot_id, seconds=seconds, raw_bytes=raw,
                                   waited_s=min(waited, seconds)))
        log.info("snapshot restored", snapshot_id=grant.snapshot_id, files=files, raw_bytes=raw,
                 seconds=round(seconds, 3), fell_back=sorted(failed))
        return RestoreOutcome(grant.snapshot_id, failed, seconds, raw, files)
    else:
        raise SnapshotError(f"restore: {MAX_RESTORE_ATTEMPTS} snapshots failed in a row: {sorted(failed)}")
    seconds = time.monotonic() - t0
    _tell(channel, RestoredAsk(snapshot_id=None, seconds=seconds, waited_s=min(waited, seconds)))
    return RestoreOutcome(None, failed, time.monotonic() - t0)


def _tell(channel: Channel, ask: SnapshotAsk) -> None:
    try:
        channel.ask(ask)
    except SnapshotError as e:  # only the audit misses it
        log.warning("could not report to the control plane", op=ask.op, reason=str(e))
