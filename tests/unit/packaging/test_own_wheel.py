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
    assert built.is_relative_to(tmp_path) and built.name.startswith("spotleash-") and built.suffix == ".whl"


def test_the_digest_covers_every_file_the_built_wheel_carries(tmp_path: Path) -> None:
    """The cache key reads pyproject.toml's own wheel target: no file of the wheel comes from outside it."""
    from spotleash.packaging.own_wheel import wheel_sources

    sources = {p.relative_to(ROOT).as_posix() for p in wheel_sources(ROOT)}
    with zipfile.ZipFile(own_wheel(tmp_path)) as z:
        carried = [n for n in z.namelist() if ".dist-info/" not in n]
    forced = {"local_emulator/functions_source/main.py": "functions/main.py"}
    outside = [n for n in carried if forced.get(n, n) not in sources and f"shared/{n}" not in sources]
    assert carried and outside == []


def test_a_wheel_is_built_once_per_content_of_its_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from spotleash.packaging import own_wheel as ow

    root = tmp_path / "src"
    (root / "pkg" / "__pycache__").mkdir(parents=True)
    (root / "pyproject.toml").write_text('[project]\nname = "spotleash"\nreadme = "README.md"\n'
                                         '[tool.hatch.build.targets.wheel]\npackages = ["pkg"]\n')
    (root / "README.md").write_text("hi\n")
    (root / "pkg" / "a.py").write_text("A = 1\n")
    builds: list[int] = []

    def fake_build(_root: Path, dest: Path) -> Path:  # the real one is `uv build` (the test above)
        builds.append(1)
        out = dest / "spotleash-1.0-py3-none-any.whl"
        out.write_bytes(b"wheel %d" % len(builds))
        return out

    monkeypatch.setattr(ow, "_build", fake_build)
    dest = tmp_path / "cache"
    dest.mkdir()
    first = ow.build_from_source(root, dest)
    (root / "pkg" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"compiled")  # importing writes these
    assert ow.build_from_source(root, dest) == first and len(builds) == 1
    (root / "README.md").write_text("hello\n")  # the readme is the wheel's metadata
    second = ow.build_from_source(root, dest)
    assert second != first and second.read_bytes() == b"wheel 2" and first.read_bytes() == b"wheel 1"
    (root / "README.md").write_text("hi\n")
    assert ow.build_from_source(root, dest) == first and len(builds) == 2  # back to what was built before
