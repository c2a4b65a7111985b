"""The README and the docs tell the truth: generated parts in sync, links that lead somewhere, the README short."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_reference", REPO / "scripts" / "docs_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_parts_match_the_settings_and_the_commands() -> None:
    gen = _generator()
    stale = []
    for page in gen.PARTS:
        now, wanted = gen.rendered(page)
        if now != wanted:
            stale.append(page)
    assert stale == [], f"run scripts/docs_reference.py; out of date: {stale}"


def test_every_setting_and_command_is_in_its_reference() -> None:
    from spotleash.config import Settings

    config = (REPO / "docs" / "configuration.md").read_text()
    assert [n for n in Settings.model_fields if f"| `SPOTLEASH_{n.upper()}` |" not in config] == []
    cli = (REPO / "docs" / "cli.md").read_text()
    for command in ("agent", "status", "down", "reap", "publish", "snapshot restore", "local up", "vast smoke"):
        assert f"### `spotleash {command}`" in cli


def _slug(heading: str) -> str:
    """The anchor of a heading as MkDocs (and GitHub, for these plain headings) make it."""
    return re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", heading.strip().lower()))


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {_slug(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def test_readme_links_lead_to_pages_and_headings_that_exist() -> None:
    links = re.findall(r"\]\(([^)\s]+)\)", README)
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert local, "the README links to its docs"
    broken = []
    for link in local:
        path, _, anchor = link.partition("#")
        target = REPO / path
        if not target.exists() or (anchor and target.suffix == ".md" and anchor not in _anchors(target)):
            broken.append(link)
    assert broken == []


def test_readme_is_short_and_shows_the_two_commands() -> None:
    assert len(README.splitlines()) < 150
    assert "make demo" in README and "make test" in README
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci and "make lint" in ci


def test_lint_builds_the_docs_site_strict() -> None:
    makefile = (REPO / "Makefile").read_text()
    build = re.search(r"^DOCS_BUILD := (.*)$", makefile, flags=re.M)
    assert build is not None and "mkdocs build --strict" in build.group(1)
    lint = makefile.split("\nlint:", 1)[1].split("\n\n", 1)[0]
    docs = makefile.split("\ndocs:", 1)[1].split("\n\n", 1)[0]
    assert "$(DOCS_BUILD)" in lint and "$(DOCS_BUILD)" in docs
    assert "site/" in (REPO / ".gitignore").read_text().splitlines()
