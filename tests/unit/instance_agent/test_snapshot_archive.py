"""Packing state paths into zstd tar parts and extracting them safely (no network)."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest
import zstandard

from spotleash.instance_agent.snapshot.common import CorruptSnapshot
from spotleash.instance_agent.snapshot.packing import pack
from spotleash.instance_agent.snapshot.restore import _extract, _swap_in


def tree(root: Path) -> dict[str, str]:
    """path -> sha256 of files / 'dir' / 'link:<target>' for everything under root."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                out[rel] = f"link:{os.readlink(p)}"
            elif p.is_dir():
                out[rel] = "dir"
            elif not p.is_file():
                out[rel] = "special"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def extract_all(parts: list[Path], roots: list[Path]) -> None:
    staging = [r.parent / f".{r.name}.staging" for r in roots]
    for s in staging:
        s.mkdir()
    for p in parts:
        _extract(p, staging)
    for s, r in zip(staging, roots, strict=True):
        _swap_in(s, r)


def test_pack_splits_into_parts_hashes_them_and_round_trips(tmp_path: Path) -> None:
    root = tmp_path / "workspace"
    (root / "models" / "empty").mkdir(parents=True)
    for i in range(6):
        (root / "models" / f"w{i}.bin").write_bytes(os.urandom(300_000))
    (root / "notes.txt").write_text("hello\n" * 10_000)
    (root / "latest").symlink_to("models/w5.bin")
    (root / "outside").symlink_to("/etc/hostname")
    os.mkfifo(root / "pipe")
    before = tree(root)

    packed = pack([root], tmp_path / "spool", part_bytes=500_000)
    assert len(packed.parts) >= 3 and packed.files == 7
    assert packed.raw_bytes == 6 * 300_000 + len("hello\n" * 10_000)
    assert any("outside" in s and "leaves" in s for s in packed.skipped)
    assert any("pipe" in s for s in packed.skipped)
    for part in packed.parts:
        data = part.path.read_bytes()
        assert part.info.size == len(data) and part.info.sha256 == hashlib.sha256(data).hexdigest()
        assert part.info.md5 == base64.b64encode(hashlib.md5(data).digest()).decode()  # noqa: S324

    dest = tmp_path / "restored" / "workspace"
    dest.mkdir(parents=True)
    (dest / "stale.txt").write_text("from the image")
    extract_all([p.path for p in packed.parts], [dest])
    expected = {k: v for k, v in before.items() if k not in ("outside", "pipe")}
    assert tree(dest) == expected


def test_text_compresses(tmp_path: Path) -> None:
    root = tmp_path / "w"
    root.mkdir()
    (root / "log.txt").write_text("2026-11-29 step=1 loss=0.25\n" * 50_000)
    packed = pack([root], tmp_path / "spool")
    assert packed.size_bytes * 20 < packed.raw_bytes


def evil_part(tmp_path: Path, build: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in build:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    path = tmp_path / "evil.tar.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(buf.getvalue()))
    return path


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"x", link: str = "") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        return info, data
    info.linkname = link
    return info, None


ATTACKS = {
    "dotdot": [member("r0/../../escaped")],
    "absolute": [member("/tmp/escaped")],
    "not_under_a_root": [member("escaped")],
    "root_out_of_range": [member("r7/file")],
    "symlink_absolute": [member("r0/link", tarfile.SYMTYPE, link="/etc")],
    "symlink_out": [member("r0/link", tarfile.SYMTYPE, link="../../..")],
    "symlink_then_write_through": [member("r0/d", tarfile.DIRTYPE), member("r0/d/link", tarfile.SYMTYPE, link=".."),
                                   member("r0/d/link/link2", tarfile.SYMTYPE, link=".."),
                                   member("r0/d/link/link2/escaped")],
    "hardlink": [member("r0/hl", tarfile.LNKTYPE, link="r0/../../etc/passwd")],
    "device": [member("r0/dev", tarfile.CHRTYPE)],
    "fifo": [member("r0/fifo", tarfile.FIFOTYPE)],
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_traversal_and_link_attacks_are_refused_and_nothing_lands_outside(attack: str, tmp_path: Path) -> None:
    part = evil_part(tmp_path, ATTACKS[attack])
    box = tmp_path / "box"
    staging = box / ".workspace.staging"
    staging.mkdir(parents=True)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(CorruptSnapshot, match="unsafe member"):
        _extract(part, [staging])
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not (tmp_path / "escaped").exists() and not Path("/tmp/escaped").exists()


def test_a_truncated_part_is_an_unreadable_archive(tmp_path: Path) -> None:
    root = tmp_path / "w"
    root.mkdir()
    (root / "f").write_bytes(os.urandom(100_000))
    [part] = pack([root], tmp_path / "spool").parts
    part.path.write_bytes(part.path.read_bytes()[:50_000])
    staging = tmp_path / "staging"
    staging.mkdir()
    with pytest.raises((zstandard.ZstdError, tarfile.TarError, EOFError)):
        _extract(part.path, [staging])
