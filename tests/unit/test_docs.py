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


def _named_in_docs(pattern: str) -> set[tuple[str, str]]:
    """(page, code span) for every inline code span of the README and the docs that matches ``pattern``."""
    found = set()
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        found |= {(page.name, span) for span in re.findall(r"`([^`\n]+)`", text) if re.fullmatch(pattern, span)}
    return found


def test_every_python_file_and_module_the_docs_name_exists() -> None:
    """Modules move (the packages by role); a page that names an old place fails here, not in a reader's hands.
    A path is read from the repository's top, ``shared/`` or ``shared/spotleash/``; a bare file name anywhere."""
    bases = (REPO, REPO / "shared", REPO / "shared" / "spotleash")
    missing = []
    for page, path in _named_in_docs(r"[\w.-]+(/[\w.-]+)*\.py"):
        known = (any((b / path).is_file() for b in bases) if "/" in path
                 else any(p.is_file() for p in REPO.glob(f"[!.]*/**/{path}")))
        if not known:
            missing.append((page, path))
    for page, dotted in _named_in_docs(r"spotleash(\.(?!toml$)\w+)+"):
        module = REPO / "shared" / dotted.split(".")[0] / dotted.split(".")[1]
        if not (module.with_suffix(".py").is_file() or module.is_dir()):
            missing.append((page, dotted))
    assert not missing, "pages name what is not there:\n" + "\n".join(f"{p}: {n}" for p, n in sorted(missing))


def test_every_component_key_is_in_the_app_page() -> None:
    from spotleash.wire.package import ComponentSpec

    page = (REPO / "docs" / "app-package.md").read_text()
    assert [n for n in ComponentSpec.model_fields if f"| `{n}` |" not in page] == []
