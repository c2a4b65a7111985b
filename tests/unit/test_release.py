"""A release others can install: ``uv build`` gives a wheel and an sdist whose metadata passes
``twine check``, with the readme, license, classifiers, URLs and extras, and one version."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from tests.support.tools import project_uv

import spotleash

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run([project_uv(), "build", "-q", "--out-dir", str(out), str(ROOT)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def test_twine_check_passes_on_the_wheel_and_the_sdist(dist: Path) -> None:
    files = sorted(dist.glob("spotleash-*"))
    assert {p.suffix for p in files} == {".whl", ".gz"}
    done = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *map(str, files)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("PASSED") == 2, done.stdout


def test_the_wheel_metadata_names_what_a_user_looks_for(dist: Path) -> None:
    (wheel,) = dist.glob("spotleash-*.whl")
    with zipfile.ZipFile(wheel) as z:
        meta = Parser().parsestr(z.read(f"spotleash-{spotleash.__version__}.dist-info/METADATA").decode())
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in z.namelist())
    assert meta["Version"] == spotleash.__version__  # the one place the version is written
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta["Description-Content-Type"] == "text/markdown" and "# spotleash" in meta.get_payload()
    assert {"cli", "local", "instance", "ssh"} <= set(meta.get_all("Provides-Extra") or [])
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL") or [])
    assert {"Homepage", "Issues", "Changelog"} <= set(urls)
    assert "Programming Language :: Python :: 3.11" in (meta.get_all("Classifier") or [])


def test_the_sdist_builds_the_same_package_and_carries_the_changelog(dist: Path) -> None:
    (sdist,) = dist.glob("spotleash-*.tar.gz")
    assert sdist.name == f"spotleash-{spotleash.__version__}.tar.gz"
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    assert {"CHANGELOG.md", "LICENSE", "README.md", "functions/main.py", "shared/spotleash/__init__.py"} <= names


def test_the_version_is_written_in_one_place() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and "\nversion =" not in pyproject
    assert f"## {spotleash.__version__}" in (ROOT / "CHANGELOG.md").read_text()
