"""Which of spotleash's extras a missing package belongs to, read from the installed distribution's own
metadata (its ``Requires-Dist`` lines), so the fix named is always the one that installs it:
``pip install 'spotleash[local]'``.
"""

from __future__ import annotations

import importlib.metadata
import re

from spotleash.errors import ConfigError

DIST = "spotleash"
_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?[^;]*(?:;\s*(.*))?$")
_EXTRA = re.compile(r"""extra\s*==\s*['"]([^'"]+)['"]""")


class MissingExtra(ConfigError):
    """A command needs an extra that is not installed; the message names the pip command."""


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requires() -> list[tuple[str, set[str], str | None]]:
    """(distribution, its extras asked for, the spotleash extra that brings it or None for the core)."""
    try:
        lines = importlib.metadata.requires(DIST) or []
    except importlib.metadata.PackageNotFoundError:
        return []  # run from a bare source path: nothing to say
    out = []
    for line in lines:
        m = _REQ.match(line)
        if not m:
            continue
        extra = _EXTRA.search(m.group(3) or "")
        wanted = {e.strip() for e in (m.group(2) or "[]")[1:-1].split(",") if e.strip()}
        out.append((_norm(m.group(1)), wanted, extra.group(1) if extra else None))
    return out


def distributions_of(extra: str) -> set[str]:
    """Every distribution ``spotleash[extra]`` installs beyond the core, following ``spotleash[...]`` self-references."""
    reqs = _requires()
    todo, seen, dists = [extra], set(), set()
    while todo:
        e = todo.pop()
        if e in seen:
            continue
        seen.add(e)
        for dist, wanted, of in reqs:
            if of != e:
                continue
            if dist == DIST:
                todo.extend(wanted)
            else:
                dists.add(dist)
    return dists


def missing(extra: str) -> list[str]:
    """The distributions of ``extra`` that are not installed."""
    gone = []
    for dist in sorted(distributions_of(extra)):
        try:
            importlib.metadata.distribution(dist)
        except importlib.metadata.PackageNotFoundError:
            gone.append(dist)
    return gone


def install_hint(extra: str) -> str:
    return f"pip install 'spotleash[{extra}]'"


def require(extra: str, what: str) -> None:
    """``MissingExtra`` naming the extra and the command when any of its packages is missing."""
    gone = missing(extra)
    if gone:
        raise MissingExtra(f"{what} needs spotleash's `{extra}` extra (missing: {', '.join(gone)}): "
                           f"run `{install_hint(extra)}`")


def extra_for_module(module: str) -> str | None:
    """The extra whose distribution provides ``module`` (a ModuleNotFoundError's ``name``), if any: the
    smallest one (``ssh`` before ``local``, which includes it)."""
    root = module.split(".")[0]
    candidates = {_norm(module), _norm(root)}
    owners = sorted({of for dist, _w, of in _requires() if of and dist in candidates})
    if not owners:
        return None
    return min(owners, key=lambda e: len(distributions_of(e)))
