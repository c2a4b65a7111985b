"""The install's last step (the app's requirements) left by the bootstrap to the agent it execs
(``bootstrap.RestInstall``): what the bootstrap leaves, and the agent's run of it — success, failure, cancel.
The whole path on the fakes' instances: tests/e2e/test_packages.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from tests.unit.instance_agent.test_install_one_resolution import THUMBS, _wheels

from spotleash.instance_agent import bootstrap
from spotleash.instance_agent.bootstrap import REST_FILE, Installer, PackageFailure


class _Recording(Installer):
    """Records the steps instead of running them: what ``install`` orders, not what uv does."""

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.ran: list[str] = []

    def _run(self, argv: list[str], step: str, log_path: Path, drop_env: tuple[str, ...] = (),
             key: str | None = None) -> None:
        self.ran.append(key or step)


def test_the_bootstrap_leaves_the_app_s_requirements_and_imports_nothing(tmp_path: Path) -> None:
    _wheels(tmp_path)
    installer = _Recording(leave_rest=True)
    installer.install(tmp_path, THUMBS, tmp_path / "uv")
    plan = Installer().plan(tmp_path, THUMBS, tmp_path / "uv")
    assert installer.ran == ["venv_s", "deps_s"]  # no warm import: the agent's own import is the only one
    rest = json.loads((tmp_path / REST_FILE).read_text())
    assert rest["argv"] == plan.install_beside and rest["handed_over"] <= time.monotonic()
    beside = _Recording()  # an install with no exec after it leaves nothing
    (tmp_path / REST_FILE).unlink()
    beside.install(tmp_path, THUMBS, tmp_path / "uv")
    assert beside.ran[:2] == ["venv_s", "deps_s"] and sorted(beside.ran[2:]) == ["app_s", "warm_s"]  # beside
    assert not (tmp_path / REST_FILE).exists()


def test_an_agent_that_installs_in_its_own_process_imports_nothing_of_the_venv(tmp_path: Path) -> None:
    """Without a bootstrap (an image that brings spotleash), the running agent installs the package itself and
    execs nothing after: an import of the venv's agent would only write .pyc files nobody loads (~0.6 s of CPU
    beside the app's install)."""
    from spotleash.instance_agent.workload import Workload, endpoint_for

    _wheels(tmp_path)
    workload = Workload(sha256="0" * 64, source=lambda: pytest.fail("not fetched here"), components=[],
                        instance_id="i-1", work_dir=tmp_path / "work", endpoint=endpoint_for("127.0.0.1", {}))
    in_process = _Recording(warm=workload.installer.warm)
    in_process.install(tmp_path, THUMBS, tmp_path / "uv")
    assert in_process.ran == ["venv_s", "deps_s", "app_s"] and not (tmp_path / REST_FILE).exists()


def test_without_a_split_nothing_is_left(tmp_path: Path) -> None:
    _wheels(tmp_path)
    installer = _Recording(leave_rest=True, warm_also=(bootstrap.FRONT_MODULE,))
    installer.install(tmp_path, {**THUMBS, "app": {}}, tmp_path / "uv")  # nothing of the app's own to install
    assert installer.ran == ["venv_s", "deps_s", "warm_s"] and not (tmp_path / REST_FILE).exists()


def _leave(root: Path, script: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    bootstrap.write_rest(root, ["sh", "-c", script])


def test_the_agent_installs_the_rest_once_and_says_how_long_it_took(tmp_path: Path) -> None:
    root = tmp_path / "pkg"
    _leave(root, "echo the app installed")
    bootstrap.start_rest(root)
    bootstrap.start_rest(root)  # the workload's wait starts it when __main__ did not: never twice
    timings = bootstrap.finish_rest(root)
    assert set(timings) == {"app_s", "since_handover_s"} and timings["since_handover_s"] >= timings["app_s"] >= 0
    assert (root / "install.log").read_text().count("the app installed") == 1
    assert not (root / REST_FILE).exists()  # a restarted agent has nothing left to install
    assert bootstrap.finish_rest(tmp_path / "no-rest") == {}


def test_a_rest_that_fails_is_the_install_s_failure(tmp_path: Path) -> None:
    root = tmp_path / "pkg"
    _leave(root, "echo no wheel for numpy; exit 4")
    with pytest.raises(PackageFailure, match="exited with code 4: .*no wheel for numpy") as e:
        bootstrap.finish_rest(root)
    assert e.value.reason == "package_install_failed" and (root / REST_FILE).exists()


def test_a_stopping_agent_ends_the_rest(tmp_path: Path) -> None:
    root = tmp_path / "pkg"
    _leave(root, "echo started; exec sleep 600")
    bootstrap.start_rest(root)
    log = root / "install.log"
    deadline = time.monotonic() + 10
    while "started" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.02)
    bootstrap.cancel_rest()
    with pytest.raises(PackageFailure, match="exited with code -9"):
        bootstrap.finish_rest(root)
