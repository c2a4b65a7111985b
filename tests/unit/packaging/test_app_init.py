"""``spotleash init``: detection, the written file (loaded by the project's own parser), no overwrite,
and the port of a running process of the app."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spotleash.cli.app import app
from spotleash.packaging import app_init
from spotleash.packaging.appspec import load_app

SERVER = """import http.server, os, socketserver
if __name__ == "__main__":
    with socketserver.TCPServer(("127.0.0.1", int(os.environ.get("PORT", "0"))), http.server.SimpleHTTPRequestHandler) as s:
        print(s.server_address[1], flush=True)
        s.serve_forever()
"""


def _app(tmp_path: Path) -> Path:
    root = tmp_path / "My App"
    root.mkdir()
    (root / "requirements.txt").write_text("# deps\nnumpy>=1.26  # arrays\n\n-e ./vendored\nPillow>=10\n")
    (root / "serve.py").write_text(SERVER)
    (root / "helpers.py").write_text("def f():\n    return 1\n")  # no __main__ guard: not a component
    (root / "tests").mkdir()
    (root / "tests" / "run.py").write_text('if __name__ == "__main__":\n    pass\n')
    return root


def test_a_detected_app_is_written_commented_and_loads_with_the_project_parser(tmp_path: Path) -> None:
    root = _app(tmp_path)
    done = CliRunner().invoke(app, ["init", str(root), "--yes", "--json"])
    assert done.exit_code == 0, done.output
    out = json.loads(done.stdout)
    assert out["components"] == ["serve"] and out["requirements_from"] == "requirements.txt"
    text = (root / "spotleash.toml").read_text()
    assert "# left out (an instance installs wheels from the package only): -e ./vendored" in text
    assert "# found: serve.py (has a __main__ guard)" in text
    loaded = load_app(root, None)  # what publish reads
    assert loaded.spec.name == "my-app" and loaded.spec.requirements == ["numpy>=1.26", "Pillow>=10"]
    (c,) = loaded.spec.components
    assert (c.name, c.command, c.port, c.local_url) == ("serve", ["python", "serve.py"], 8101, "http://127.0.0.1:8101")


def test_init_refuses_to_overwrite_and_says_how_to_start_again(tmp_path: Path) -> None:
    root = _app(tmp_path)
    (root / "spotleash.toml").write_text("# mine\n")
    done = CliRunner().invoke(app, ["init", str(root), "--yes"])
    assert done.exit_code != 0
    assert "already exists: edit it, or move it away to write a new one" in str(done.exception)
    assert (root / "spotleash.toml").read_text() == "# mine\n"


def test_pyproject_dependencies_and_scripts_are_detected(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "Vision_Svc"\ndependencies = ["torch>=2"]\n'
        '[project.scripts]\nvision-api = "vision.api:main"\n')
    draft = app_init.detect(tmp_path)
    assert draft.name == "vision_svc" and draft.requirements == ["torch>=2"]
    (c,) = draft.components
    assert c.name == "vision-api" and c.command == ["python", "-c", "from vision.api import main; main()"]
    path = app_init.write(tmp_path, app_init.render(app_init.with_ports(draft)))
    assert load_app(tmp_path, None).spec.components[0].port == app_init.FIRST_PORT
    assert path.name == "spotleash.toml"


def test_an_empty_directory_gets_a_placeholder_component_that_still_loads(tmp_path: Path) -> None:
    app_init.write(tmp_path, app_init.render(app_init.with_ports(app_init.detect(tmp_path))))
    spec = load_app(tmp_path, None).spec
    assert [c.command for c in spec.components] == [["python", "main.py"]]


def test_default_ports_skip_detected_ones_and_their_route_ports() -> None:
    draft = app_init.Draft(name="a", components=[
        app_init.DraftComponent(name="x", command=["x"], port=8101),
        app_init.DraftComponent(name="y", command=["y"])])
    assert [c.port for c in app_init.with_ports(draft).components] == [8101, 8102]


@pytest.mark.parametrize(("text", "want"), [("My App!", "my-app"), ("123", "app"), ("_x_", "x"), ("a" * 50, "a" * 40)])
def test_slug_gives_a_name_the_spec_accepts(text: str, want: str) -> None:
    assert app_init.slug(text) == want


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_port_a_running_script_of_the_app_listens_on_is_used(tmp_path: Path) -> None:
    root = _app(tmp_path)
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "serve.py"], cwd=root, env={"PORT": str(port)},
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and int(proc.stdout.readline()) == port  # listening
        deadline = time.monotonic() + 10
        while str((root / "serve.py").resolve()) not in app_init.listening_ports(root, []):
            assert time.monotonic() < deadline, "the running serve.py was not found"
            time.sleep(0.1)
        assert app_init.listening_ports(root, [str(proc.pid)])[str(proc.pid)] == port
        done = CliRunner().invoke(app, ["init", str(root), "--yes", "--json"])
        assert done.exit_code == 0, done.output
    finally:
        proc.terminate()
        proc.wait(10)
    (c,) = load_app(root, None).spec.components
    assert c.port == port and c.local_url == f"http://127.0.0.1:{port}"


def test_on_a_terminal_it_asks_with_the_detected_values_as_defaults(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    root = _app(tmp_path)
    (root / "worker.py").write_text('if __name__ == "__main__":\n    pass\n')
    monkeypatch.setattr("spotleash.cli.init.on_terminal", lambda: True)
    # app name; serve: keep, name (default), port, health path, RAM; worker: leave out
    answers = "thumbs\ny\n\n9000\n/health\n2.5\nn\n"
    done = CliRunner().invoke(app, ["init", str(root)], input=answers)
    assert done.exit_code == 0, done.output
    spec = load_app(root, None).spec
    assert spec.name == "thumbs"
    (c,) = spec.components
    assert (c.name, c.port, c.health_path, c.ram_gb) == ("serve", 9000, "/health", 2.5)
