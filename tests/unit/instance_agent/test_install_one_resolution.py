"""uv installs spotleash in the same resolution as the rest of the package, its core dependencies left out
(``bootstrap.core_excludes``), instead of a second ``--no-deps`` install: which names are left out, and the
plan that says so. The real install with uv: tests/instance/test_install_paths.py."""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import pytest
from tests.support.wheels import tiny_wheel

from spotleash.instance_agent import bootstrap
from spotleash.instance_agent.bootstrap import EXCLUDES_FILE, Installer, PackageFailure, core_excludes

CORE = ("google-cloud-pubsub>=2.20", "Flask (>=3)", "pydantic>=2.10", "uvloop>=0.21; sys_platform != 'win32'",
        "httpx>=0.27 ; extra == 'instance'", "aiohttp>=3.9; (python_version >= '3.11') and extra == 'instance'")


def _wheels(tmp: Path) -> Path:
    wheels = tmp / "wheels"
    wheels.mkdir()
    tiny_wheel(wheels, "spotleash", "0.1.0", requires=CORE)
    for name in ("pydantic", "httpx", "aiohttp", "numpy"):
        tiny_wheel(wheels, name, "1.0")
    return wheels


MANIFEST = {"requirements": ["aiohttp>=3.9", "httpx>=0.27", "pydantic>=2.10", "numpy"], "no_deps": ["spotleash==0.1.0"]}


def test_the_core_dependencies_no_wheel_provides_are_left_out(tmp_path: Path) -> None:
    # pydantic is core and has a wheel (the instance extra names it too): it stays, and uv checks its bound;
    # the extra's lines are not the core's; a marker that does not apply here has no wheel either: left out
    assert core_excludes(_wheels(tmp_path), MANIFEST) == ["flask", "google-cloud-pubsub", "uvloop"]


def test_the_names_are_compared_normalised(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    tiny_wheel(wheels, "spotleash", "0.1.0", requires=("Pydantic_Settings>=2", "typing.extensions"))
    tiny_wheel(wheels, "pydantic_settings", "2.0")
    assert core_excludes(wheels, {"no_deps": ["Spotleash==0.1.0"]}) == ["typing-extensions"]


def test_without_a_readable_spotleash_wheel_there_is_no_one_resolution(tmp_path: Path) -> None:
    wheels = _wheels(tmp_path)
    assert core_excludes(wheels, {"no_deps": ["other==1"]}) is None  # no wheel of that name
    (wheels / "spotleash-0.1.0-py3-none-any.whl").write_bytes(b"not a zip")
    assert core_excludes(wheels, MANIFEST) is None
    with zipfile.ZipFile(wheels / "spotleash-0.1.0-py3-none-any.whl", "w") as z:
        z.writestr("spotleash/__init__.py", "")  # no METADATA
    assert core_excludes(wheels, MANIFEST) is None
    assert core_excludes(wheels, {"requirements": ["numpy"]}) == []  # nothing installed without its deps


def test_uv_installs_everything_in_one_resolution_when_it_can(tmp_path: Path) -> None:
    root = tmp_path
    _wheels(root)
    uv = root / "uv"
    # an instance that runs a front: everything before the warm import (it imports the front too)
    plan = Installer(pip_version=lambda _p: "24.0", warm_also=(bootstrap.FRONT_MODULE,)).plan(root, MANIFEST, uv)
    assert plan.install_no_deps is None and plan.excludes == ("flask", "google-cloud-pubsub", "uvloop")
    assert plan.install[-5:] == [*MANIFEST["requirements"], "spotleash==0.1.0"] and plan.install_beside is None
    i = plan.install.index("--excludes")
    assert plan.install[i + 1] == str(root / EXCLUDES_FILE) and "--no-deps" not in plan.install
    assert "same resolution" in plan.path and "3 left out" in plan.path
    assert plan.warm is not None


def test_pip_and_an_unreadable_wheel_keep_the_second_install(tmp_path: Path) -> None:
    _wheels(tmp_path)
    pip = Installer(pip_version=lambda _p: "24.0").plan(tmp_path, MANIFEST, None)
    assert pip.excludes is None and pip.install_no_deps is not None and "--no-deps" in pip.install_no_deps
    (tmp_path / "wheels" / "spotleash-0.1.0-py3-none-any.whl").write_bytes(b"junk")
    uv = Installer().plan(tmp_path, MANIFEST, tmp_path / "uv")
    assert uv.excludes is None and uv.install_no_deps is not None and uv.install_no_deps[-1] == "spotleash==0.1.0"
    assert bootstrap.uv_install_command(tmp_path / "uv", "py", tmp_path, MANIFEST, excludes=[])[-1] == "spotleash==0.1.0"
    assert "--excludes" not in bootstrap.uv_install_command(tmp_path / "uv", "py", tmp_path, MANIFEST, excludes=[])


THUMBS = {**MANIFEST, "requirements": ["aiohttp>=3.9", "httpx>=0.27", "pydantic>=2.10", "numpy>=1.26", "Pillow>=10"],
          "app": {"requirements": ["numpy>=1.26", "Pillow>=10"]}}


def test_the_app_s_requirements_are_told_from_the_agent_s() -> None:
    assert bootstrap.split_requirements(THUMBS, front=True) == (["aiohttp>=3.9", "httpx>=0.27", "pydantic>=2.10"],
                                                                ["numpy>=1.26", "Pillow>=10"])
    # no front: what only the front imports is not installed (its names compared normalised)...
    front_too = {**THUMBS, "requirements": [*THUMBS["requirements"], "Prometheus_Client>=0.21"]}
    assert bootstrap.split_requirements(front_too) == (["httpx>=0.27", "pydantic>=2.10"], ["numpy>=1.26", "Pillow>=10"])
    # ...unless the app names it
    app_too = {**front_too, "app": {"requirements": ["numpy>=1.26", "Pillow>=10", "aiohttp>=3.9"]}}
    assert bootstrap.split_requirements(app_too) == (["httpx>=0.27", "pydantic>=2.10"],
                                                     ["aiohttp>=3.9", "numpy>=1.26", "Pillow>=10"])
    # a line both name is in the manifest twice: the agent's import must find it installed
    both = {"requirements": ["httpx>=0.27", "numpy", "httpx>=0.27"], "app": {"requirements": ["numpy", "httpx>=0.27"]}}
    assert bootstrap.split_requirements(both) == (["httpx>=0.27"], ["numpy"])
    assert bootstrap.split_requirements({"requirements": ["a"]}) == (["a"], [])


def test_the_app_s_requirements_install_beside_the_agent_s_import(tmp_path: Path) -> None:
    _wheels(tmp_path)
    plan = Installer().plan(tmp_path, THUMBS, tmp_path / "uv")
    assert plan.install[-3:] == ["httpx>=0.27", "pydantic>=2.10", "spotleash==0.1.0"]
    assert plan.install_beside is not None and plan.install_beside[-2:] == ["numpy>=1.26", "Pillow>=10"]
    assert not any("aiohttp" in a for a in plan.install + plan.install_beside)  # no front: not installed at all
    assert "--excludes" in plan.install_beside and "spotleash==0.1.0" not in plan.install_beside
    assert plan.warm is not None and "beside the agent's import" in plan.path


def test_a_step_beside_another_that_fails_ends_it_and_is_the_failure(tmp_path: Path) -> None:
    log = tmp_path / "install.log"
    installer = Installer()
    with pytest.raises(PackageFailure, match="the failing one exited with code 3"):
        installer._run_beside([(["sleep", "600"], "the sleeping one", (), "warm_s"),
                               (["sh", "-c", "echo broken; exit 3"], "the failing one", (), "app_s")], log)
    assert "broken" in log.read_text() and not installer._procs  # the sleeper was ended, not waited for
    assert set(installer.steps) == {"warm_s", "app_s"}
    installer._run_beside([(["true"], "one", (), "warm_s"), (["sh", "-c", "echo two ran"], "two", (), "app_s")], log)
    assert "two ran" in log.read_text().splitlines()


class _LateFirstStep(Installer):
    """The main thread's step reaches its start only after the step beside it has failed (CI saw this order)."""

    def _run(self, argv: list[str], step: str, log_path: Path, drop_env: tuple[str, ...] = (),
             key: str | None = None) -> None:
        if step == "the late one":
            deadline = time.monotonic() + 10
            while "app_s" not in self.steps and time.monotonic() < deadline:  # the failing step has ended
                time.sleep(0.01)
            time.sleep(0.2)  # and its failure has been handled
        super()._run(argv, step, log_path, drop_env, key)


def test_a_step_that_had_not_started_when_the_other_failed_never_starts(tmp_path: Path) -> None:
    log = tmp_path / "install.log"
    installer = _LateFirstStep(timeout_s=5)  # the old code started the late step and waited on it
    with pytest.raises(PackageFailure, match="the failing one exited with code 3"):
        installer._run_beside([(["sh", "-c", "echo late started; sleep 600"], "the late one", (), "warm_s"),
                               (["sh", "-c", "exit 3"], "the failing one", (), "app_s")], log)
    assert "late started" not in log.read_text() and not installer._procs


def test_the_warm_import_loads_the_front_only_for_an_instance_that_runs_one() -> None:
    manifest = {"requirements": ["pydantic"], "no_deps": ["spotleash==1"]}
    assert bootstrap.warm_command("/v/bin/python", manifest) == ["/v/bin/python", "-c",
                                                                 "import spotleash.instance_agent.__main__"]
    plan = Installer(python="/usr/bin/python3", pip_version=lambda _p: "24.0",
                     warm_also=(bootstrap.FRONT_MODULE,)).plan(Path("/w/pkg"), manifest)
    assert plan.warm == ["/w/pkg/venv/bin/python", "-c",
                         "import spotleash.instance_agent.__main__, spotleash.instance_agent.front"]


def test_the_agent_imports_no_front_until_a_config_asks_for_one() -> None:
    """The warm import and the agent's start load the front's packages (``FRONT_ONLY``: installed beside the warm
    import) and the router's channel only with a route credential."""
    import subprocess
    import sys

    probe = ("import sys; import spotleash.instance_agent.__main__; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('aiohttp', 'yarl', 'cryptography', "
             "'multidict', 'prometheus_client') "
             "or m.startswith(('spotleash.router', 'spotleash.instance_agent.front.'))"
             " or m == 'spotleash.instance_agent.front'))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)  # noqa: S603
    assert out.stdout.strip() == "[]"
