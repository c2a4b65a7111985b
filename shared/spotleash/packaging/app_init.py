"""``spotleash init``: what can be learnt about an app from its directory, and the commented
``spotleash.toml`` written from it.

``detect`` reads the directory (requirements.txt / pyproject.toml, Python entry points) and asks psutil
which port each named running process listens on; ``render`` is pure: a ``Draft`` in, TOML text out.
``write`` refuses to overwrite and never writes a file the project's own parser (``appspec.parse_app``)
would reject.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from spotleash.errors import ConfigError
from spotleash.packaging.appspec import CONFIG_NAME, parse_app

FIRST_PORT = 8101  # a component with no port found gets the next free one from here
DEFAULT_RAM_GB = 4.0
_MAIN_GUARD = re.compile(r"""^if\s+__name__\s*==\s*['"]__main__['"]\s*:""", re.MULTILINE)
_SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", "build", "dist", "tests", "test"}


@dataclass(frozen=True)
class DraftComponent:
    name: str
    command: list[str]
    port: int | None = None  # None: not found, the next free default is given at render time
    ram_gb: float = DEFAULT_RAM_GB
    health_path: str = "/healthz"
    found: str = ""  # how it was detected, written as a comment


@dataclass(frozen=True)
class Draft:
    name: str
    requirements: list[str] = field(default_factory=list)
    requirements_from: str = ""
    left_out: list[str] = field(default_factory=list)  # requirement lines an instance cannot use (-e, -r, URLs)
    components: list[DraftComponent] = field(default_factory=list)


def slug(text: str, default: str = "app") -> str:
    """A name the app spec accepts (``^[a-z][a-z0-9_-]{0,39}$``)."""
    s = re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-_")
    s = re.sub(r"^[^a-z]+", "", s)[:40].rstrip("-_")
    return s or default


# ------------------------------------------------------------------ detection (reads the directory)
def _requirements_txt(path: Path) -> tuple[list[str], list[str]]:
    keep: list[str] = []
    left: list[str] = []
    for raw in path.read_text(errors="replace").splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        (left if line.startswith("-") or "://" in line else keep).append(line)
    return keep, left


def _pyproject(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        return {}


def _scripts(root: Path) -> list[Path]:
    """Python files with a ``__main__`` guard, the app's top level first (at most two levels down)."""
    found = []
    for p in sorted(root.glob("*.py")) + sorted(root.glob("*/*.py")):
        if any(part in _SKIP_DIRS or part.startswith(".") for part in p.relative_to(root).parts[:-1]):
            continue
        if p.name.startswith("test_") or p.name in ("setup.py", "conftest.py"):
            continue
        try:
            if _MAIN_GUARD.search(p.read_text(errors="replace")):
                found.append(p)
        except OSError:
            continue
    return found


def detect(root: Path, listening: dict[str, int] | None = None) -> Draft:
    """What ``root`` says about the app; ``listening`` maps a script's path (or a name) to the port its
    running process listens on (``listening_ports``)."""
    listening = listening or {}
    project = _pyproject(root / "pyproject.toml") if (root / "pyproject.toml").is_file() else {}
    meta = project.get("project", {}) if isinstance(project.get("project"), dict) else {}
    name = slug(str(meta.get("name") or root.resolve().name))
    requirements: list[str] = []
    left: list[str] = []
    source = ""
    if (root / "requirements.txt").is_file():
        requirements, left = _requirements_txt(root / "requirements.txt")
        source = "requirements.txt"
    elif isinstance(meta.get("dependencies"), list):
        requirements = [str(d) for d in meta["dependencies"]]
        source = "pyproject.toml [project].dependencies"
    components: list[DraftComponent] = []
    scripts = meta.get("scripts") if isinstance(meta.get("scripts"), dict) else {}
    for entry, target in sorted((scripts or {}).items()):
        module, _, func = str(target).partition(":")
        command = ["python", "-c", f"from {module} import {func}; {func}()"] if func else ["python", "-m", module]
        components.append(DraftComponent(name=slug(entry), command=command, port=listening.get(entry),
                                         found=f"pyproject.toml [project.scripts] {entry} = {target!r}"))
    for p in _scripts(root):
        rel = p.relative_to(root).as_posix()
        port = listening.get(str(p.resolve()), listening.get(rel))
        components.append(DraftComponent(name=slug(p.stem, "component"), command=["python", rel], port=port,
                                         found=f"{rel} (has a __main__ guard)" + (f", listening on {port}" if port else "")))
    return Draft(name=name, requirements=requirements, requirements_from=source, left_out=left,
                 components=_unique_names(components))


def _unique_names(components: list[DraftComponent]) -> list[DraftComponent]:
    seen: set[str] = set()
    out = []
    for c in components:
        name, n = c.name, 2
        while name in seen:
            name, n = f"{c.name[:37]}-{n}", n + 1
        seen.add(name)
        out.append(replace(c, name=name))
    return out


def listening_ports(root: Path, named: list[str]) -> dict[str, int]:
    """The TCP port each running process listens on, keyed by the script of ``root`` it runs (its resolved
    path) and by each name in ``named`` (a pid, or a word its command line contains)."""
    import psutil

    out: dict[str, int] = {}
    for proc in psutil.process_iter(["pid", "cmdline", "cwd"]):
        try:
            cmdline = proc.info["cmdline"] or []
            ports = sorted(c.laddr.port for c in proc.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN)
        except (psutil.Error, OSError):
            continue  # gone, or another user's: nothing to learn from it
        if not ports:
            continue
        cwd = Path(proc.info["cwd"] or "/")
        for arg in cmdline[1:]:
            if arg.endswith(".py"):
                path = (cwd / arg).resolve()
                if path.is_relative_to(root.resolve()):
                    out.setdefault(str(path), ports[0])
        for want in named:
            if want == str(proc.info["pid"]) or any(want in a for a in cmdline):
                out.setdefault(want, ports[0])
    return out


# ------------------------------------------------------------------ rendering (pure)
def _s(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string


def _list(values: list[str]) -> str:
    return "[" + ", ".join(_s(v) for v in values) + "]"


def with_ports(draft: Draft) -> Draft:
    """Every component with a port: the detected one, else the next free one from ``FIRST_PORT``."""
    taken = {c.port for c in draft.components if c.port is not None}
    out, nxt = [], FIRST_PORT
    for c in draft.components:
        if c.port is None:
            while nxt in taken or nxt + 100 in taken:
                nxt += 1
            c = replace(c, port=nxt)
            taken.add(nxt)
        out.append(c)
    return replace(draft, components=out)


def render(draft: Draft) -> str:
    """The commented ``spotleash.toml`` for ``draft`` (every component has a port: ``with_ports``)."""
    lines = [
        "# spotleash.toml, written by `spotleash init`: settings at the top, the app below.",
        "# Check every value, then `spotleash check` and `spotleash publish`.",
        "",
        "# Settings: the same names as the SPOTLEASH_* environment variables, lower case. The local stack",
        "# (`spotleash local up`) sets them for you; for Google Cloud take them from Terraform's outputs.",
        '# project = "my-project"',
        '# package_bucket = "my-project-spotleash-packages"',
        "",
        "[app]",
        f"name = {_s(draft.name)}",
        'dir = "."  # the app tree, relative to this file: everything in it is packaged (.gitignore respected)',
    ]
    if draft.requirements_from:
        lines.append(f"# from {draft.requirements_from}: what the instance installs for the app")
    else:
        lines.append("# what the instance installs for the app (PEP 508), e.g. [\"numpy>=1.26\"]")
    lines.append(f"requirements = {_list(draft.requirements)}")
    for left in draft.left_out:
        lines.append(f"# left out (an instance installs wheels from the package only): {left}")
    if not draft.components:
        lines += ["", "# no entry point found: name the process to start on the instance"]
    for c in draft.components or [DraftComponent(name="main", command=["python", "main.py"], port=FIRST_PORT)]:
        assert c.port is not None, "render takes a draft with ports (with_ports)"
        lines += [
            "",
            "[[app.components]]",
            *([f"# found: {c.found}"] if c.found else []),
            f"name = {_s(c.name)}  # what a demand names",
            f"command = {_list(c.command)}  # run in the app tree, the instance's venv on PATH",
            f"port = {c.port}  # the port it listens on (also given to it as PORT)",
            f"health_path = {_s(c.health_path)}  # answers 200 once it is ready",
            f"ram_gb = {c.ram_gb:g}  # RAM it needs on the instance",
            "# gpu = true  # needs a GPU: a demand naming it rents a VAST.ai box",
            f'local_url = "http://127.0.0.1:{c.port}"  # the copy running on this machine',
            f"# route_port = {c.port + 100}  # the router's stable port: point the app at it to move traffic",
        ]
    return "\n".join(lines) + "\n"


def write(directory: Path, text: str) -> Path:
    """Write ``directory/spotleash.toml``: never over an existing file, never one that does not load."""
    path = directory / CONFIG_NAME
    if path.exists():
        raise ConfigError(f"{path} already exists: edit it, or move it away to write a new one")
    raw = tomllib.loads(text)
    parse_app(raw["app"], path)  # the same parser every command uses
    with path.open("x") as f:
        f.write(text)
    return path
