"""Which files of an app directory go into a package (pure decisions over a directory walk).

Left out: version-control directories, virtual environments (any directory holding ``pyvenv.cfg``),
caches, byte code, and whatever ``.gitignore`` / ``.spotleashignore`` files (in any directory, gitignore
semantics, deeper files win) and ``[app].exclude`` say. Refused: files that look like secrets —
``.env`` files, private keys (by name or by a ``PRIVATE KEY`` PEM header), Google service-account or
user credential JSON — unless listed in ``[app].include``.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pathspec

from spotleash.errors import BadInput
from spotleash.wire.package import AppSpec

IGNORE_FILES = (".gitignore", ".spotleashignore")
SKIP_DIRS = frozenset({
    ".git", ".hg", ".svn", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".tox", ".nox",
    ".ipynb_checkpoints", ".hypothesis", ".venv", "venv", ".spotleash", ".idea", ".vscode",
})
SKIP_SUFFIXES = (".pyc", ".pyo")
SKIP_NAMES = frozenset({".DS_Store", "Thumbs.db"})

_KEY_NAMES = re.compile(r"^(id_(rsa|dsa|ecdsa|ed25519)|.*\.(pem|key|p12|pfx|jks|keystore))$", re.I)
_PEM_PRIVATE = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----")
_HEAD_BYTES = 64 * 1024
_JSON_MAX = 1024 * 1024


class SecretRefused(BadInput):
    """The app tree holds files that look like secrets and are not listed in ``[app].include``."""


@dataclass(frozen=True)
class AppTree:
    files: dict[str, Path]  # path relative to the app dir (posix) → file on disk
    executable: frozenset[str]
    skipped: tuple[str, ...]  # directories and files left out (relative), for the report


def secret_reason(rel: str, path: Path) -> str | None:
    """Why a file looks like a secret, or None."""
    name = rel.rsplit("/", 1)[-1]
    if name == ".env" or (name.startswith(".env.") and not name.endswith((".example", ".sample", ".template"))):
        return "an environment file (.env)"
    try:
        with path.open("rb") as f:
            head = f.read(_HEAD_BYTES)
    except OSError as e:
        raise BadInput(f"cannot read {rel}: {e}") from e
    if _PEM_PRIVATE.search(head):
        return "a private key (PEM header)"
    if b"PuTTY-User-Key-File" in head[:64] or head.startswith(b"openssh-key-v1"):
        return "a private key"
    if _KEY_NAMES.match(name) and not head.startswith(b"-----BEGIN CERTIFICATE"):
        return "a key file (by its name)"
    if name.endswith(".json") and path.stat().st_size <= _JSON_MAX:
        try:
            data = json.loads(path.read_bytes())
        except (ValueError, UnicodeDecodeError):
            return None
        if isinstance(data, dict):
            kind = data.get("type")
            if kind == "service_account" and "private_key" in data:
                return "a service-account key (credential JSON)"
            if kind in ("authorized_user", "external_account") or "refresh_token" in data:
                return "Google credentials (credential JSON)"
    return None


class _Ignores:
    """gitignore rules of every ignore file met on the walk; deeper files win, as in git."""

    def __init__(self, extra: list[str]) -> None:
        self.specs: list[tuple[str, pathspec.GitIgnoreSpec]] = []
        if extra:
            self.specs.append(("", pathspec.GitIgnoreSpec.from_lines(extra)))

    def load(self, dir_rel: str, dir_path: Path) -> None:
        for name in IGNORE_FILES:
            f = dir_path / name
            if f.is_file():
                self.specs.append((dir_rel, pathspec.GitIgnoreSpec.from_lines(f.read_text().splitlines())))

    def ignored(self, rel: str, is_dir: bool) -> bool:
        verdict: bool | None = None
        # shallow to deep, so deeper files (later in the list for a given path) decide last
        for base, spec in sorted(self.specs, key=lambda s: s[0].count("/") + (1 if s[0] else 0)):
            if base and not rel.startswith(base + "/"):
                continue
            sub = rel[len(base) + 1:] if base else rel
            result = spec.check_file(sub + "/" if is_dir else sub)
            if result.include is not None:
                verdict = result.include
        return bool(verdict)


def collect(root: Path, spec: AppSpec, leave_out: Sequence[Path] = ()) -> AppTree:
    """Walk ``root``: what goes into the package. ``SecretRefused`` names every suspicious file. ``leave_out``:
    files and directories (the artifacts' paths) that are published on their own, never inside the app blob."""
    root = root.resolve()
    apart = {p.resolve() for p in leave_out}
    ignores = _Ignores(list(spec.exclude))
    allowed = {p.strip("/") for p in spec.include}
    files: dict[str, Path] = {}
    executable: set[str] = set()
    skipped: list[str] = []
    refused: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        d = Path(dirpath)
        dir_rel = d.relative_to(root).as_posix()
        dir_rel = "" if dir_rel == "." else dir_rel
        ignores.load(dir_rel, d)
        keep_dirs = []
        for name in sorted(dirnames):
            rel = f"{dir_rel}/{name}" if dir_rel else name
            sub = d / name
            if name in SKIP_DIRS or (sub / "pyvenv.cfg").exists() or sub.is_symlink() or ignores.ignored(rel, True) \
                    or sub in apart:
                skipped.append(rel + "/")
            else:
                keep_dirs.append(name)
        dirnames[:] = keep_dirs
        for name in sorted(filenames):
            rel = f"{dir_rel}/{name}" if dir_rel else name
            path = d / name
            if name in SKIP_NAMES or name.endswith(SKIP_SUFFIXES) or ignores.ignored(rel, False) or path in apart:
                skipped.append(rel)
                continue
            try:
                st = path.stat()  # follows a symlink: the package holds the target's content
            except OSError:
                skipped.append(rel)  # dangling link
                continue
            if path.is_symlink() and not path.resolve().is_relative_to(root):
                raise BadInput(f"{rel} is a symlink leaving the app directory ({path.resolve()}): copy the file in")
            if not stat.S_ISREG(st.st_mode):
                skipped.append(rel)
                continue
            reason = secret_reason(rel, path)
            if reason and rel not in allowed:
                refused.append(f"{rel}: looks like {reason}")
                continue
            files[rel] = path
            if st.st_mode & 0o111:
                executable.add(rel)
    if refused:
        raise SecretRefused(
            "refusing to package files that look like secrets:\n  " + "\n  ".join(refused)
            + "\nremove them, ignore them in .spotleashignore, or list them under [app] include = [...] "
            "in spotleash.toml to package them anyway"
        )
    if not files:
        raise BadInput(f"the app directory {root} has no files to package (after ignore rules)")
    return AppTree(files=files, executable=frozenset(executable), skipped=tuple(skipped))
