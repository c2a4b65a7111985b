"""Each deployable ships only what it runs: the function archive carries the control plane's
dependencies (core + the ``ssh`` extra) and nothing of the CLI, the local stack or the tests; the
code each part imports is declared in the part's own dependency list."""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
import tomllib
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "shared" / "spotleash"

# Never in the function archive: the CLI, the laptop agent, the local stack, the test and lint tools.
NOT_IN_ARCHIVE = {
    "typer", "rich", "psutil", "vastai", "croniter", "google-cloud-scheduler", "pytest", "pytest-timeout",
    "hypothesis", "mypy", "ruff", "deptry", "python-hcl2", "types-paramiko", "types-psutil", "spotleash",
    "aiohttp", "pillow", "pycryptodome",  # what vastai used to drag into every function
}


FIRST_PARTY = {"__future__", "local_emulator", "functions", "bench", "tests"}  # besides spotleash, followed


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def req_name(requirement: str) -> str:
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert m, requirement
    return norm(m.group(1))


@cache
def pyproject() -> dict:  # type: ignore[type-arg]
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def declared(*extras: str) -> set[str]:
    project = pyproject()["project"]
    names = {req_name(r) for r in project["dependencies"]}
    for extra in extras:
        names |= {req_name(r) for r in project["optional-dependencies"][extra]}
    return names


def load_archive_builder():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("build_function_archive", ROOT / "scripts" / "build_function_archive.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def archive_requirements() -> set[str]:
    builder = load_archive_builder()
    text = builder.runtime_requirements(ROOT).decode()
    return {req_name(line) for line in text.splitlines() if line.strip()}


def test_the_function_archive_has_no_cli_test_or_local_stack_package(archive_requirements: set[str]) -> None:
    leaked = archive_requirements & {norm(n) for n in NOT_IN_ARCHIVE}
    assert not leaked, f"the function archive would ship {sorted(leaked)}"
    # and it does carry what the functions run
    assert {"functions-framework", "google-cloud-firestore", "google-cloud-pubsub", "google-cloud-compute",
            "pydantic-settings", "tenacity", "paramiko", "requests", "httpx"} <= archive_requirements


def _module_file(name: str) -> Path | None:
    if name == "spotleash" or name.startswith("spotleash."):
        rel = Path(*name.split(".")[1:])
        for candidate in (PACKAGE / rel / "__init__.py", (PACKAGE / rel).with_suffix(".py")):
            if candidate.is_file():
                return candidate
    return None


def imports_of(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports, at top level or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}  # `from spotleash import log`
    return names


def reachable(*entry_files: Path) -> tuple[set[Path], set[str]]:
    """The spotleash modules reachable from the entry files, and the outside modules they import."""
    seen: set[Path] = set()
    outside: set[str] = set()
    todo = list(entry_files)
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        for name in imports_of(f):
            top = name.split(".")[0]
            if top == "spotleash":
                mod = _module_file(name)
                if mod is not None:
                    todo.append(mod)
            elif top not in sys.stdlib_module_names and top not in FIRST_PARTY:
                outside.add(name)
    return seen, outside


@cache
def file_owners() -> dict[Path, str]:
    """Installed file -> the distribution that installed it (from each distribution's RECORD)."""
    from importlib.metadata import distributions as installed

    owners: dict[Path, str] = {}
    for dist in installed():
        for f in dist.files or []:
            if f.suffix == ".py":
                owners[Path(str(dist.locate_file(f))).resolve()] = norm(dist.metadata["Name"])
    return owners


def distributions(modules: set[str]) -> set[str]:
    """The installed distributions that provide ``modules``. ``from x import Name`` lists ``x.Name``,
    which is no module: the longest importable prefix that is a real file decides."""
    owners = file_owners()
    dists: set[str] = set()
    for name in modules:
        parts = name.split(".")
        for depth in range(len(parts), 0, -1):
            try:
                spec = importlib.util.find_spec(".".join(parts[:depth]))
            except (ImportError, ValueError):
                spec = None
            if spec is not None and spec.origin and spec.has_location:  # namespace packages have none
                owner = owners.get(Path(spec.origin).resolve())
                assert owner, f"{name}: {spec.origin} belongs to no installed distribution"
                dists.add(owner)
                break
    return dists


def registered_providers() -> list[Path]:
    """The provider modules the registry imports by name (importlib: no import statement to follow)."""
    from spotleash.providers import PROVIDERS

    files = [_module_file(info.implementation.partition(":")[0]) for info in PROVIDERS.values()]
    assert all(files), files
    return [f for f in files if f is not None]


def test_what_the_function_code_imports_is_what_the_archive_ships(archive_requirements: set[str]) -> None:
    modules, outside = reachable(ROOT / "functions" / "main.py", *registered_providers())
    assert PACKAGE / "services" / "launch.py" in modules and PACKAGE / "adapters" / "firestore.py" in modules
    cli_only = {m for m in modules if m.is_relative_to(PACKAGE) and m.relative_to(PACKAGE).parts[0] in ("cli", "demo")}
    assert not cli_only | ({PACKAGE / "providers" / "vast" / "smoke.py"} & modules), "the functions reach the CLI"
    needed = distributions(outside)
    assert {"google-cloud-compute", "google-cloud-firestore", "paramiko", "httpx"} <= needed, needed
    assert needed <= declared("ssh"), f"the functions import undeclared {sorted(needed - declared('ssh'))}"
    assert needed <= archive_requirements


INSTANCE_ENTRIES = ("__main__.py", "watchdog.py", "front.py")  # what an instance runs of spotleash


def extra_only(extra: str) -> set[str]:
    return {req_name(r) for r in pyproject()["project"]["optional-dependencies"][extra]}


def test_the_instance_agent_needs_only_its_extra_not_the_core() -> None:
    """A package installs spotleash without its core dependencies plus the ``instance`` extra's list
    (``packaging/wheels.py``): every package any instance-agent module imports, at top level or inside a
    function, must be in that extra itself — a new import of a core-only package (a Google client) fails here."""
    agent = PACKAGE / "instance_agent"
    _, outside = reachable(*(agent / f for f in INSTANCE_ENTRIES))
    needed = distributions(outside)
    assert {"psutil", "aiohttp", "pydantic", "httpx"} <= needed
    missing = needed - extra_only("instance")
    assert not missing, f"the instance agent imports {sorted(missing)}, which the `instance` extra does not name"


def test_the_instance_extra_repeats_core_packages_with_the_core_bounds() -> None:
    """The extra names pydantic & co. again (an instance gets no core): the same bounds, so the two never drift."""
    project = pyproject()["project"]
    core = {req_name(r): r for r in project["dependencies"]}
    repeated = [r for r in project["optional-dependencies"]["instance"] if req_name(r) in core]
    assert repeated and all(core[req_name(r)] == r for r in repeated), repeated


_IMPORT_GUARD = """
import importlib.metadata as md, re, sys
allowed = set(sys.argv[1].split(","))
owners = md.packages_distributions()
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
class Guard:
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        dists = {norm(d) for d in owners.get(top, [])}
        if top != "spotleash" and dists and not dists & allowed:
            raise ModuleNotFoundError(f"{name} is from {sorted(dists)}: not in an instance's install", name=name)
        return None
sys.meta_path.insert(0, Guard())
import spotleash.instance_agent.__main__, spotleash.instance_agent.watchdog, spotleash.instance_agent.front
print("imported")
"""


def dependency_closure(requirements: list[str]) -> set[str]:
    """The installed distributions ``requirements`` bring, following each one's own ``Requires-Dist``
    (its extras' lines left out; other markers kept, which can only widen the set)."""
    from importlib.metadata import PackageNotFoundError, requires

    todo, seen = [req_name(r) for r in requirements], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            lines = requires(name) or []
        except PackageNotFoundError:
            continue
        todo += [req_name(ln) for ln in lines if "extra ==" not in ln.partition(";")[2]]
    return seen


def test_the_instance_agent_imports_with_only_what_a_package_installs() -> None:
    """At run time, not only by reading the source: the agent's entry modules import in a python where every
    module of a distribution outside the package's instance set (the ``instance`` extra read from spotleash's
    own metadata by the code publish uses, and what those bring) refuses to load."""
    import subprocess
    from importlib.metadata import requires

    from spotleash.packaging.wheels import INSTANCE_EXTRA, extra_requirements

    allowed = dependency_closure(extra_requirements(requires("spotleash") or [], INSTANCE_EXTRA))
    assert "pydantic-core" in allowed and "google-cloud-pubsub" not in allowed and "grpcio" not in allowed
    done = subprocess.run([sys.executable, "-c", _IMPORT_GUARD, ",".join(sorted(allowed))],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "imported", done.stderr[-2000:]


def test_the_cli_needs_only_core_and_its_extras() -> None:
    _, outside = reachable(*(PACKAGE / "cli").glob("*.py"), PACKAGE / "agent" / "__main__.py",
                           *(PACKAGE / "router").glob("*.py"), *(PACKAGE / "packaging").glob("*.py"))
    needed = distributions(outside)
    assert {"typer", "rich", "psutil", "aiohttp"} <= needed
    allowed = declared("cli", "ssh")
    assert needed <= allowed, f"undeclared for the CLI: {sorted(needed - allowed)}"


def test_vastai_is_a_test_tool_only() -> None:
    product = [*PACKAGE.rglob("*.py"), *(ROOT / "functions").rglob("*.py"), *(ROOT / "local_emulator").rglob("*.py")]
    users = [p.relative_to(ROOT) for p in product if any(n.split(".")[0] == "vastai" for n in imports_of(p))]
    assert users == []
    dev = {req_name(r) for r in pyproject()["dependency-groups"]["dev"] if isinstance(r, str)}
    assert "vastai" in dev and "vastai" not in declared("cli", "ssh", "local", "instance")
