"""A user who installs spotleash, not one who clones it: the project's wheel, built with the project's own uv,
installed into a fresh venv outside the repository, every command run there with ``env -i`` (PATH, a fresh
HOME, NO_GCE_CHECK and nothing else) from an app directory outside any checkout.

With ``[cli]`` only: ``--help`` is plain text, ``status`` without credentials or stack names both fixes,
``local up`` names the ``local`` extra. With ``[cli,local]``: ``local up``, ``init``, ``check``, ``publish``
(spotleash's own wheel rebuilt from the installed files), an agent's demand to READY on the Compute fake
running the published package, ``status``, the agent killed (-9) and ``down`` releasing its lease until the
VM is confirmed gone, ``local down`` with nothing left.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from tests.support.tools import project_uv

from local_emulator import stack
from spotleash.polling import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "thumbs"
WHEEL_CACHE = Path(os.environ.get("SPOTLEASH_TEST_WHEEL_CACHE", Path.home() / ".cache" / "spotleash" / "test-wheels"))


def run(*argv: str | Path, cwd: Path, env: dict[str, str] | None = None, ok: bool = True,
        timeout: float = 600) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    if ok:
        assert done.returncode == 0, f"{argv} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def user(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """A venv with the built wheel and its `cli` extra (versions pinned by uv.lock), a fresh HOME, an app dir."""
    tmp = tmp_path_factory.mktemp("user")
    uv = project_uv()
    run(uv, "build", "--wheel", "-q", "-o", tmp / "dist", cwd=REPO)
    (wheel,) = (tmp / "dist").glob("spotleash-*.whl")
    venv = tmp / "venv"
    run(uv, "venv", "-q", "--python", sys.executable, venv, cwd=tmp)
    for extras in ("cli", "local"):
        run(uv, "export", "--frozen", "--no-dev", "--extra", extras, "--no-emit-project", "--no-hashes", "-q",
            "-o", tmp / f"req-{extras}.txt", cwd=REPO)
    run(uv, "pip", "install", "-q", "--python", venv / "bin" / "python", "-r", tmp / "req-cli.txt",
        f"spotleash[cli] @ {wheel.as_uri()}", cwd=tmp)
    home = tmp / "home"
    home.mkdir()
    app = tmp / "app"  # the example app as a user has it: code and requirements, no spotleash.toml yet
    # without the MiniLM embedder: it needs its model as an artifact, which the example does not declare yet
    shutil.copytree(EXAMPLE, app, ignore=shutil.ignore_patterns("spotleash.toml", "README.md", "__pycache__",
                                                                "embedder.py", "minilm.py"))
    example_requirements = tomllib.loads((EXAMPLE / "spotleash.toml").read_text())["app"]["requirements"]
    (app / "requirements.txt").write_text("".join(f"{r}\n" for r in example_requirements))
    yield {"tmp": tmp, "venv": venv, "home": home, "app": app, "wheel": wheel, "uv": Path(uv)}


def user_env(u: dict[str, Path]) -> dict[str, str]:
    """What ``env -i`` leaves plus what a user's shell has: PATH (the venv, gcloud, java), HOME."""
    tools = {str(Path(p).parent) for p in (shutil.which("gcloud"), shutil.which("java")) if p}
    path = ":".join([str(u["venv"] / "bin"), *sorted(tools), "/usr/local/bin", "/usr/bin", "/bin"])
    return {"PATH": path, "HOME": str(u["home"]), "NO_GCE_CHECK": "true", "LANG": "C.UTF-8"}


def spotleash(u: dict[str, Path], *args: str, ok: bool = True, timeout: float = 600,
              columns: int | None = None) -> subprocess.CompletedProcess[str]:
    env = user_env(u) | ({"COLUMNS": str(columns)} if columns else {})  # a terminal's width, for a table
    return run(u["venv"] / "bin" / "spotleash", *args, cwd=u["app"], env=env, ok=ok, timeout=timeout)


def test_with_the_cli_extra_only_every_error_names_its_fix(user: dict[str, Path]) -> None:
    shown = spotleash(user, "--help").stdout
    assert "``" not in shown and "Usage: spotleash" in shown
    status = spotleash(user, "status", ok=False)
    assert status.returncode == 1 and "unexpected" not in status.stderr
    assert "gcloud auth application-default login" in status.stderr and "spotleash local up" in status.stderr
    up = spotleash(user, "local", "up", ok=False)
    assert up.returncode == 2, up.stderr
    assert "the local stack needs spotleash's `local` extra (missing: " in up.stderr
    assert "paramiko" in up.stderr and "run `pip install 'spotleash[local]'`" in up.stderr
    assert not (user["home"] / ".spotleash" / "local" / "stack.json").exists() or \
        not stack.status(user["home"] / ".spotleash").any_alive


def _instances(u: dict[str, Path]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(spotleash(u, "status", "--json").stdout)["instances"]
    return rows


def test_the_whole_user_path_from_the_installed_wheel(user: dict[str, Path]) -> None:
    run(user["uv"], "pip", "install", "-q", "--python", user["venv"] / "bin" / "python", "-r",
        user["tmp"] / "req-local.txt", f"spotleash[cli,local] @ {user['wheel'].as_uri()}", cwd=user["tmp"])
    state = user["home"] / ".spotleash"
    state.mkdir()
    WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
    (state / "wheels").symlink_to(WHEEL_CACHE, target_is_directory=True)  # the instance's wheels, from PyPI once
    agent: subprocess.Popen[bytes] | None = None
    try:
        spotleash(user, "local", "up", "--json")
        served = json.loads(spotleash(user, "local", "status", "--json").stdout)
        fn = next(r for r in served if r["name"] == "on_demand")
        assert str(user["venv"]) in " ".join(psutil.Process(fn["pid"]).cmdline())  # the wheel's functions
        where = run(user["venv"] / "bin" / "python", "-c", "from local_emulator import stack; "
                    "print(stack.functions_source())", cwd=user["app"], env=user_env(user)).stdout.strip()
        assert Path(where).is_relative_to(user["venv"])  # the wheel's copy of functions/main.py
        assert Path(where).read_text() == (REPO / "functions" / "main.py").read_text()

        init = json.loads(spotleash(user, "init", "--yes", "--json").stdout)
        assert init["components"] == ["thumbnailer", "vectors"] and init["requirements_from"] == "requirements.txt"
        assert spotleash(user, "init", "--yes", ok=False).returncode == 2  # never over the file it wrote

        checked = spotleash(user, "check", "--json")
        assert json.loads(checked.stdout)["ok"] is True, checked.stdout

        published = json.loads(spotleash(user, "publish", "--json").stdout)
        assert published["wheels"] > 2 and published["uri"].startswith("gs://")
        own = sorted((state / "wheels" / "spotleash").glob("spotleash-*.whl"))
        assert own, "publish left no spotleash wheel in its cache"

        trace = user["tmp"] / "high.csv"  # RAM high from the first second: the agent demands at once
        trace.write_text("t_seconds,percent\n" + "".join(f"{t},95\n" for t in range(0, 900, 5)))
        log = (user["tmp"] / "agent.log").open("wb")
        agent = subprocess.Popen([str(user["venv"] / "bin" / "spotleash"), "agent", "--trace", str(trace)],
                                 cwd=user["app"], env=user_env(user), stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        ready = wait_until(lambda: [r for r in _instances(user) if r["state"] == "READY"], timeout_s=300,
                           interval_s=2, what="an instance READY (see agent.log and the stack's logs)")
        assert ready[0]["package_sha256"] == published["sha256"]  # the VM runs what was published
        table = spotleash(user, "status", columns=250).stdout
        assert ready[0]["instance_id"] in table and "READY" in table

        os.killpg(agent.pid, signal.SIGKILL)  # the agent dies without releasing: `down` is the user's way out
        agent.wait(10)
        agent = None
        down = json.loads(spotleash(user, "down", "--yes", "--json", "--timeout", "180").stdout)
        assert not _instances(user), down
    finally:
        if agent is not None:
            os.killpg(agent.pid, signal.SIGKILL)
            agent.wait(10)
        spotleash(user, "local", "down")
    assert not stack.status(state).recorded
