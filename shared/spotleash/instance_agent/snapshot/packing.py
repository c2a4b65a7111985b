"""Packing the state paths into zstd-compressed tar parts, hashing each part (sha256, MD5) as it
is written; what is packed and what is skipped (see the package's docstring)."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import zstandard

from spotleash.wire.snapshot import (
    MAX_PARTS,
    ManifestObject,
    part_object,
)

PART_BYTES = 256 * 1024 * 1024  # content per part: a part is one PUT, retried whole
ZSTD_LEVEL = 3


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


def _entries(root: Path, leave_out: frozenset[Path] = frozenset()) -> Iterator[tuple[Path, os.stat_result]]:
    """Every entry under ``root`` (itself first), depth first in name order, links not followed; the directories
    in ``leave_out`` (resolved) neither listed nor entered."""
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
            if stat.S_ISDIR(st.st_mode) and leave_out and p.resolve() in leave_out:
                continue
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
         threads: int = -1, leave_out: Sequence[Path] = ()) -> Packed:
    """The state paths as zstd tar parts in ``spool``; members are ``r<i>/<path relative to root i>``.
    ``leave_out``: directories never packed though under a state path — the package's artifacts and the blob
    cache (their bytes are in the bucket already, and the next instance fetches them from there)."""
    apart = frozenset(p.resolve() for p in leave_out)
    spool.mkdir(parents=True, exist_ok=True)
    packed = Packed(roots=list(roots))
    writer = _PartWriter(spool, 0, level, threads)
    for i, root in enumerate(roots):
        if not root.is_dir():
            packed.skipped.append(f"{root}: not a directory")
            continue
        for path, st in _entries(root, apart):
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
