"""The instance bootstrap (``spotleash.instance_agent.bootstrap``, standard library only) as every
provider's start script carries it: its source text, embedded byte for byte in a quoted here-document."""

from __future__ import annotations

from pathlib import Path

from spotleash.instance_agent import bootstrap

BOOTSTRAP_EOF = "SPOTLEASH_BOOTSTRAP_EOF"


def bootstrap_source() -> str:
    """The bootstrap module's source text, as the script embeds it."""
    return Path(bootstrap.__file__).read_text(encoding="utf-8")


def embed_file(target: str, text: str) -> str:
    """Shell lines that write ``text`` to ``"$target"`` byte for byte (a quoted here-document: nothing in
    it is expanded). ``target`` is a shell word, e.g. ``"$INSTALL_DIR/bootstrap.py"``."""
    if not text.endswith("\n") or f"\n{BOOTSTRAP_EOF}\n" in f"\n{text}":
        raise ValueError(f"the embedded text must end with a newline and contain no {BOOTSTRAP_EOF} line")
    return f"cat >{target} <<'{BOOTSTRAP_EOF}'\n{text}{BOOTSTRAP_EOF}\n"
