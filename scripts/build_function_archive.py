"""Build the one source archive every Cloud Function is deployed from, byte-for-byte reproducibly.

The archive holds ``main.py`` (from ``functions/``), the ``spotleash`` package (from
``shared/spotleash``) and a ``requirements.txt`` exported from ``uv.lock`` with the control plane's
dependencies only: the project's core plus the ``ssh`` extra (the VAST provider registers its SSH key
and pins host keys from the functions), never the CLI, the local stack or the test tools. Entries are sorted, timestamps and permissions are fixed and caches are left out, so
the same sources give the same bytes: Terraform names the uploaded object after its sha256, and a
function is redeployed only when its code really changed.

    uv run python scripts/build_function_archive.py [--root .] [--out terraform/build/spotleash-functions.zip]

Prints the archive path and its sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can carry
FILE_MODE = 0o100644 << 16  # regular file, rw-r--r--
SKIP_DIRS = {"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
SKIP_SUFFIXES = {".pyc", ".pyo"}
DEFAULT_OUT = Path("terraform/build/spotleash-functions.zip")


ARCHIVE_EXTRAS = ("ssh",)  # the extras the control plane imports (pyproject.toml: [project.optional-dependencies])


def find_uv(root: Path) -> str:
    """The uv that ``uv run`` started us with, else one on PATH, else the project's scripts/uv wrapper."""
    for candidate in (os.environ.get("UV"), shutil.which("uv"), str(root / "scripts" / "uv")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise SystemExit("uv not found: it exports the runtime requirements from uv.lock (run scripts/bootstrap.sh)")


def runtime_requirements(root: Path) -> bytes:
    """The control plane's locked dependencies (core + ARCHIVE_EXTRAS; no dev group, no hashes, no
    local project) as requirements.txt."""
    cmd = [find_uv(root), "export", "--frozen", "--no-dev", "--no-hashes", "--no-emit-project",
           "--no-header", "--no-annotate", *(a for e in ARCHIVE_EXTRAS for a in ("--extra", e))]
    try:
        out = subprocess.run(cmd, cwd=root, check=True, capture_output=True, timeout=60).stdout
    except subprocess.CalledProcessError as e:
        raise SystemExit(f"`{' '.join(cmd)}` failed in {root}: {e.stderr.decode(errors='replace')}") from e
    lines = [ln.rstrip() for ln in out.decode().splitlines() if ln.strip() and not ln.startswith("#")]
    if not any(ln.startswith("functions-framework==") for ln in lines):
        raise SystemExit("the exported requirements lack functions-framework; is uv.lock the project's lock?")
    return ("\n".join(lines) + "\n").encode()


def _files(base: Path) -> Iterator[Path]:
    for p in sorted(base.rglob("*")):
        if p.is_dir() or any(part in SKIP_DIRS for part in p.relative_to(base).parts):
            continue
        if p.suffix in SKIP_SUFFIXES:
            continue
        yield p


def archive_entries(root: Path) -> dict[str, bytes]:
    """Archive name -> content, for everything the functions need at runtime."""
    functions = root / "functions"
    package = root / "shared" / "spotleash"
    for needed in (functions / "main.py", package / "__init__.py", package / "topology.json"):
        if not needed.is_file():
            raise SystemExit(f"{needed} is missing: run this from the repository root or pass --root")
    entries: dict[str, bytes] = {}
    for p in _files(functions):
        entries[p.relative_to(functions).as_posix()] = p.read_bytes()
    for p in _files(package):
        entries["spotleash/" + p.relative_to(package).as_posix()] = p.read_bytes()
    if "requirements.txt" in entries:
        raise SystemExit("functions/requirements.txt exists: the archive writes its own from uv.lock")
    entries["requirements.txt"] = runtime_requirements(root)
    return entries


def build(root: Path, out: Path) -> str:
    """Write the archive to ``out`` and return its sha256 (hex)."""
    entries = archive_entries(root)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    with zipfile.ZipFile(tmp, "w") as zf:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
            info.external_attr = FILE_MODE
            info.create_system = 3  # unix, whatever machine builds it
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, entries[name], compresslevel=9)
    tmp.replace(out)
    return hashlib.sha256(out.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="repository root (default: this script's repository)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"archive path (default: ROOT/{DEFAULT_OUT})")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    out = args.out if args.out is not None else root / DEFAULT_OUT
    digest = build(root, out)
    print(f"{out}\nsha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
