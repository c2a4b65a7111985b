"""spotleash's own wheel rebuilt from an installed distribution: the same files as the wheel that was
installed, deterministic, and refused when an installed file no longer matches its RECORD."""

from __future__ import annotations

import importlib.metadata
import subprocess
import zipfile
from pathlib import Path

import pytest
from tests.support.tools import project_uv

from spotleash.packaging.own_wheel import own_wheel, rebuild_installed, source_root
from spotleash.packaging.wheels import WheelError

ROOT = Path(__file__).resolve().parents[3]


def _run(*argv: str | Path) -> None:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, importlib.metadata.Distribution]:
    """The project's wheel built with uv and installed (no dependencies) into a fresh venv."""
    tmp = tmp_path_factory.mktemp("own-wheel")
    uv = project_uv()
    _run(uv, "build", "--wheel", "-q", "--out-dir", tmp / "dist", ROOT)
    (wheel,) = (tmp / "dist").glob("spotleash-*.whl")
    _run(uv, "venv", "-q", tmp / "venv")
    _run(uv, "pip", "install", "-q", "--no-deps", "--python", tmp / "venv" / "bin" / "python", wheel)
    (info,) = (tmp / "venv").glob("lib/python*/site-packages/spotleash-*.dist-info")
    return wheel, importlib.metadata.PathDistribution(info)


def _contents(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as z:
        return {n: z.read(n) for n in z.namelist() if not n.endswith(".dist-info/RECORD")}


def test_the_source_tree_is_found_when_running_from_a_checkout() -> None:
    assert source_root() == ROOT


def test_the_rebuilt_wheel_carries_exactly_the_installed_wheels_files(
        installed: tuple[Path, importlib.metadata.Distribution], tmp_path: Path) -> None:
    wheel, dist = installed
    rebuilt = rebuild_installed(tmp_path / "a", dist)
    assert rebuilt.name == wheel.name
    assert _contents(rebuilt) == _contents(wheel)  # no installer file, no script, no .pyc added or lost
    with zipfile.ZipFile(rebuilt) as z:
        assert z.testzip() is None
        record = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/RECORD"))).decode()
    assert len(record.splitlines()) == len(_contents(wheel)) + 1
    again = rebuild_installed(tmp_path / "b", dist)
    assert again.read_bytes() == rebuilt.read_bytes()  # same install → same bytes → same package sha256


def test_an_installed_file_changed_after_install_is_refused_with_the_fix(
        installed: tuple[Path, importlib.metadata.Distribution], tmp_path: Path) -> None:
    _, dist = installed
    target = Path(str(dist.locate_file("spotleash/errors.py")))
    original = target.read_bytes()
    target.write_bytes(original + b"\n# edited\n")
    try:
        with pytest.raises(WheelError, match=r"errors\.py differs from .*RECORD.*pip install --force-reinstall"):
            rebuild_installed(tmp_path, dist)
    finally:
        target.write_bytes(original)


def test_own_wheel_from_the_checkout_builds_it(tmp_path: Path) -> None:
    built = own_wheel(tmp_path)
    assert built.parent == tmp_path and built.name.startswith("spotleash-") and built.suffix == ".whl"
