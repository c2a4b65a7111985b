"""The local stack's env file (``STATE_DIR/local/stack.env``): one format, one writer, one reader.

``KEY=VALUE`` lines, written by ``spotleash local up``; blank lines and ``#`` comments are skipped.
Keys are stripped; values are kept exactly as written (a value may end in spaces or contain ``=``).
Read by the stack itself, the CLI (which points its clients at a running stack) and tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def env_file(state_dir: Path) -> Path:
    return Path(state_dir) / "local" / "stack.env"


def format_env(env: Mapping[str, str]) -> str:
    bad = sorted(k for k, v in env.items() if "\n" in k or "\n" in v or "=" in k or not k.strip())
    if bad:
        raise ValueError(f"cannot write {bad} to a stack env file: keys need no '=' and no line breaks in either part")
    return "".join(f"{k}={v}\n" for k, v in sorted(env.items()))


def parse_env(text: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            if sep and key.strip():
                env[key.strip()] = value
    return env


def read_env_file(path: Path) -> dict[str, str]:
    """The settings in ``path``; FileNotFoundError if there is none."""
    return parse_env(Path(path).read_text())
