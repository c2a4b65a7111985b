"""What an instance installs of spotleash: its ``instance`` extra's lines, read from the wheel's metadata."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from spotleash.packaging.wheels import WheelError, extra_requirements, instance_requirements, own_requirement

REQUIRES = [
    "pydantic>=2.10",  # core: never the instance's unless its extra repeats it
    "google-cloud-pubsub>=2.44",
    "pydantic>=2.10; extra == 'instance'",
    "psutil>=6.1; extra == 'instance'",
    "psutil>=6.1; extra == 'cli'",
    "uvloop>=0.21; (sys_platform != 'win32') and extra == 'instance'",
    "typer>=0.15; extra == 'instances'",  # another extra whose name contains this one
]


def test_the_extra_s_lines_come_without_their_extra_clause_and_keep_other_markers() -> None:
    assert extra_requirements(REQUIRES, "instance") == [
        "psutil>=6.1", "pydantic>=2.10", "uvloop>=0.21; sys_platform != 'win32'"]
    assert extra_requirements(REQUIRES, "cli") == ["psutil>=6.1"]


def test_a_marker_in_an_unknown_shape_is_refused_not_guessed() -> None:
    with pytest.raises(WheelError, match="unexpected marker"):
        extra_requirements(["x>=1; extra == 'instance' or python_version < '3.12'"], "instance")


def _wheel(tmp_path: Path, requires: list[str]) -> Path:
    wheel = tmp_path / "spotleash-1.2.3-py3-none-any.whl"
    meta = "Metadata-Version: 2.4\nName: spotleash\nVersion: 1.2.3\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("spotleash-1.2.3.dist-info/METADATA", meta)
    return wheel


def test_the_instance_list_is_read_from_the_wheel_it_ships_with(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path, REQUIRES)
    assert "pydantic>=2.10" in instance_requirements(wheel)
    assert not any(r.startswith("google") for r in instance_requirements(wheel))
    assert own_requirement(wheel) == "spotleash==1.2.3"  # pinned, no extra: installed --no-deps
    (tmp_path / "bare").mkdir()
    with pytest.raises(WheelError, match="no 'instance' extra"):
        instance_requirements(_wheel(tmp_path / "bare", ["pydantic>=2.10"]))
