"""Rewrites the README's configuration table from spotleash.config.Settings (run after changing it)."""

from __future__ import annotations

import re
from pathlib import Path

from spotleash.config import Settings

START, END = "<!-- config:start -->", "<!-- config:end -->"


def table() -> str:
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, f in Settings.model_fields.items():
        default = f.default_factory() if f.default_factory else f.default  # type: ignore[call-arg]
        if name == "state_dir":
            default = "~/.spotleash"
        rows.append(f"| `SPOTLEASH_{name.upper()}` | `{default}` | {f.description or ''} |")
    return "\n".join(rows)


def main() -> None:
    readme = Path(__file__).resolve().parent.parent / "README.md"
    text = readme.read_text()
    new = re.sub(f"{START}.*?{END}", f"{START}\n{table()}\n{END}", text, flags=re.S)
    readme.write_text(new)


if __name__ == "__main__":
    main()
