"""The bootstrap's two ways of installing a package, for real: with the pip of the interpreter running it
(22.3+, ``--python``) into a venv made without pip, or, when that interpreter has no pip (Debian's python3
without python3-pip), with the venv's own ensurepip'd pip. Either way offline, without byte-compiling
what it installs, and the install log says which way it went."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.support.wheels import tiny_wheel

from spotleash.instance_agent.bootstrap import Installer, pip_version_of
from spotleash.wire.package import AppSpec, ComponentSpec, build_package

pytestmark = pytest.mark.slow


def _package(tmp: Path) -> tuple[Path, str]:
    app_dir = tmp / "app-src"
    app_dir.mkdir()
    (app_dir / "main.py").write_text("import tinylib\n")
    wheels = tmp / "wheels"
    wheels.mkdir()
    app = AppSpec(name="demo", components=[ComponentSpec(name="web", command=["python", "main.py"], port=18241)])
    archive = tmp / "pkg.tar.gz"
    sha, _ = build_package(archive, app, {"main.py": app_dir / "main.py"}, [tiny_wheel(wheels)], ["tinylib"])
    return archive, sha


@pytest.fixture
def pipless_python(tmp_path: Path) -> str:
    """An interpreter with no pip at all, as Debian's python3 is without python3-pip."""
    env = tmp_path / "no-pip"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)  # noqa: S603
    return str(env / "bin" / "python")


def _site_packages(venv: Path) -> Path:
    return venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"


def _greets(venv: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # as on a VM
    return subprocess.run([str(venv / "bin" / "python"), "-c", "import tinylib; print(tinylib.greet())"],  # noqa: S603
                          capture_output=True, text=True, check=True, env=env).stdout.strip()


def test_the_probe_reads_the_pip_an_interpreter_has(tmp_path: Path, pipless_python: str) -> None:
    assert pip_version_of(sys.executable) == importlib.metadata.version("pip")
    assert pip_version_of(pipless_python) is None
    assert pip_version_of(str(tmp_path / "no-such-python")) is None


def test_the_bootstrap_pythons_pip_installs_into_a_venv_without_pip(tmp_path: Path) -> None:
    archive, sha = _package(tmp_path)
    root, manifest = Installer().prepare(archive, sha, tmp_path / "work")
    assert manifest["requirements"] == ["tinylib"]
    log = (root / "install.log").read_text()
    assert log.splitlines()[0] == (f"spotleash: the pip {importlib.metadata.version('pip')} of {sys.executable} "
                                   "installs into a venv made without pip (--python)")
    venv = root / "venv"
    assert pip_version_of(str(venv / "bin" / "python")) is None  # the venv never got a pip of its own
    assert not list(_site_packages(venv).glob("tinylib/__pycache__"))  # --no-compile
    assert _greets(venv) == "hello from tinylib"
    assert list(_site_packages(venv).glob("tinylib/__pycache__/*.pyc"))  # the first import compiled it


def test_a_python_without_pip_gives_the_venv_its_own(tmp_path: Path, pipless_python: str) -> None:
    archive, sha = _package(tmp_path)
    root, _ = Installer(python=pipless_python).prepare(archive, sha, tmp_path / "work")
    log = (root / "install.log").read_text()
    assert log.splitlines()[0] == (f"spotleash: {pipless_python} has no pip (--python needs pip 22.3+): the venv "
                                   "gets a pip of its own (ensurepip), which installs")
    venv = root / "venv"
    assert pip_version_of(str(venv / "bin" / "python")) is not None
    assert not list(_site_packages(venv).glob("tinylib/__pycache__"))
    assert _greets(venv) == "hello from tinylib"
