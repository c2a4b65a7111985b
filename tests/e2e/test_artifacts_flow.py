"""Model weights as artifacts and ``image_provides``, on the local stack (issue 23, items 2 and 3).

``spotleash publish`` of examples/embedder (the MiniLM weights as its ``minilm`` artifact: one blob per file,
not inside the app blob) → a demand → a Compute fake VM (its real startup script) and a VAST fake box (one
signed URL per blob, artifact blobs included) fetch and verify every blob, lay the artifact out, and start the
embedder with ``SPOTLEASH_ARTIFACT_MINILM`` naming the fetched copy: its files are byte for byte the user's,
and the component answers real embeddings (two paraphrases score closer than an unrelated pair).

``[app] image_provides``: an app relying on a package the image's python has (whichever of numpy, six, pyparsing, PyYAML the fake image has)
runs with the image's copy (not shipped, the venv sees it); one relying on a package the image lacks (torch)
fails with ``image_lacks_requirement`` naming it, in the record, the audit and ``status``, nothing left running.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.e2e.flows import Flows
from tests.e2e.packaged import MARKER, REPO, packages_on
from tests.support.failed_launch import assert_failed_cleanly, wait_ended

from local_emulator import procs
from spotleash.adapters.storage import Storage
from spotleash.demo.model import example_model_dir, prepare_artifact
from spotleash.model import InstanceRecord, State
from spotleash.packaging.appspec import load_app
from spotleash.packaging.publish import publish
from spotleash.polling import wait_until
from spotleash.topology import load_topology
from spotleash.wire.events import Component, DemandEvent

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EMBEDDER_APP = REPO / "examples" / "embedder"
WHEEL_CACHE = Path.home() / ".cache" / "spotleash" / "test-wheels"
READY_TIMEOUT_S = 240.0
PARAPHRASE = ("A man is playing a guitar.", "Someone plays an acoustic guitar.")
UNRELATED = ("A man is playing a guitar.", "The stock market fell sharply today.")

# What the fake image's python has: the fakes' interpreter stands in for the image's python3, and a venv made
# from it with --system-site-packages sees its *base* interpreter's packages. Which ones depends on the machine
# (pyenv's Python here has numpy, Debian's /usr/bin/python3 in CI has six and pyparsing), so the test asks.
IMAGE_CANDIDATES = (("numpy", "numpy"), ("six", "six"), ("pyparsing", "pyparsing"), ("PyYAML", "yaml"))

PROVIDED_SERVER = '''\
import http.server, importlib, json, os

mod = importlib.import_module(os.environ["PROVIDED_MODULE"])  # from the image: the package does not ship it
BODY = json.dumps({"from": mod.__file__}).encode()


class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *a):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
'''


def image_package() -> tuple[str, str]:
    """(distribution, module) of a package the fake image's python has and a new venv does not install itself."""
    base = getattr(sys, "_base_executable", sys.executable)
    for dist, module in IMAGE_CANDIDATES:
        found = subprocess.run([base, "-c", f"import importlib.metadata as m; m.version({dist!r})"],
                               capture_output=True, check=False, timeout=30)
        if found.returncode == 0:
            return dist, module
    raise AssertionError(f"the fake image's python ({base}) has none of {[d for d, _ in IMAGE_CANDIDATES]}")


def provided_app(root: Path, provides: list[str], module: str) -> Path:
    root.mkdir(parents=True)
    (root / "server.py").write_text(PROVIDED_SERVER)
    listed = ", ".join(f'"{p}"' for p in provides)
    (root / "spotleash.toml").write_text(
        f'[app]\nname = "provided"\nrequirements = ["{provides[0]}"]\nimage_provides = [{listed}]\n\n'
        '[[app.components]]\nname = "onimage"\ncommand = ["python", "server.py"]\nport = 18371\n'
        f'env = {{ PROVIDED_MODULE = "{module}" }}\nstart_timeout_s = 30\n')
    return root


@pytest.fixture(scope="module")
def model() -> Path:
    """The weights at the path examples/embedder declares (``make model``), and the test's own reference copy."""
    declared = prepare_artifact(EMBEDDER_APP, WHEEL_CACHE)
    assert (declared / "model.safetensors").is_file()
    return example_model_dir(WHEEL_CACHE)


@pytest.fixture(scope="module")
def published(local_stack: Any, model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    pub_state = tmp_path_factory.mktemp("artifacts-publish-state")
    with packages_on(local_stack.state_dir, pub_state, EMBEDDER_APP) as result:
        result["pub_state"] = pub_state
        yield result


@pytest.fixture(scope="module")
def flows(published: dict[str, Any]) -> Flows:
    return Flows()


def demand(lease_id: str, component: str, *, gpu: bool = False) -> DemandEvent:
    return DemandEvent(lease_id=lease_id, trigger="manual", ram_percent=91.0,
                       components=[Component(name=component, ram_gb=1.0, gpu=gpu)])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def score(endpoint: str, pair: tuple[str, str]) -> float:
    r = httpx.get(f"http://{endpoint}/similarity", params={"a": pair[0], "b": pair[1]}, timeout=60)
    assert r.status_code == 200, r.text
    return float(r.json()["score"])


@pytest.mark.parametrize("provider", ["gce", "vast"])
def test_an_instance_fetches_the_weights_and_the_embedder_answers_from_them(
        provider: str, flows: Flows, published: dict[str, Any], model: Path) -> None:
    lease = f"lease-artifact-{provider}"
    with flows.lease_kept(lease):
        flows.publish(demand(lease, "embedder", gpu=provider == "vast"))
        rec = flows.wait_first_ready(lease, READY_TIMEOUT_S)
        assert rec.provider == provider and rec.package_sha256 == published["sha256"]
        [proc, *_] = procs.find_marked(MARKER, rec.instance_id)
        fetched = Path(proc.environ()["SPOTLEASH_ARTIFACT_MINILM"])
        assert fetched != model and fetched.name == "minilm" and fetched.parent.name == "artifacts"
        mine = sorted(p.relative_to(model).as_posix() for p in model.rglob("*") if p.is_file())
        theirs = sorted(p.relative_to(fetched).as_posix() for p in fetched.rglob("*") if p.is_file())
        assert theirs == mine
        assert all(sha256(fetched / rel) == sha256(model / rel) for rel in mine)
        assert not (fetched.parent.parent / "app" / "model.safetensors").exists()
        endpoint = rec.component_states["embedder"].endpoint
        assert endpoint
        health = httpx.get(f"http://{endpoint}/healthz", timeout=30).json()
        assert health["model"] == str(fetched) and health["dim"] == 384
        close, far = score(endpoint, PARAPHRASE), score(endpoint, UNRELATED)
        print(provider, "paraphrase", close, "unrelated", far)
        assert close > far + 0.3
        release(flows, lease, rec)


def release(flows: Flows, lease: str, rec: InstanceRecord) -> None:
    """Release and wait until the instance's component processes are gone (the next one binds the same port)."""
    flows.release(lease, rec.instance_id)
    flows.wait_state(rec.instance_id, {State.TERMINATED}, timeout_s=60)
    wait_until(lambda: not procs.find_marked(MARKER, rec.instance_id), timeout_s=20, interval_s=0.25,
               what=f"the component processes of {rec.instance_id} to end with it")


def test_a_republish_with_unchanged_weights_uploads_nothing_for_them(published: dict[str, Any]) -> None:
    store = Storage(load_topology().package_bucket, emulator=_emulator())
    again = publish(load_app(EMBEDDER_APP, None), store, "artifacts-again", published["pub_state"])
    assert again.sha256 == published["sha256"] and again.uploaded_bytes == 0 and again.blobs_uploaded == 0


def _emulator() -> str:
    return os.environ["STORAGE_EMULATOR_HOST"]


def test_a_requirement_the_image_provides_is_not_shipped_and_one_it_lacks_fails_clearly(
        flows: Flows, published: dict[str, Any], tmp_path: Path) -> None:
    store = Storage(load_topology().package_bucket, emulator=_emulator())
    dist, module = image_package()
    met = publish(load_app(provided_app(tmp_path / "met", [f"{dist}>=0.1"], module), None), store, "main",
                  published["pub_state"])
    lease = "lease-provided-met"
    with flows.lease_kept(lease):
        flows.publish(demand(lease, "onimage"))
        rec = flows.wait_first_ready(lease, READY_TIMEOUT_S)
        assert rec.package_sha256 == met.sha256
        endpoint = rec.component_states["onimage"].endpoint
        body = httpx.get(f"http://{endpoint}/", timeout=30).json()
        [proc, *_] = procs.find_marked(MARKER, rec.instance_id)
        venv = proc.environ()["VIRTUAL_ENV"]
        assert not body["from"].startswith(venv), f"{dist} came from the package's venv: {body}"
        assert "spotleash: uv (" not in (Path(venv).parent / "install.log").read_text(), "pip installs, not uv"
        release(flows, lease, rec)

    lacking = publish(load_app(provided_app(tmp_path / "lacking", [f"{dist}>=0.1", "torch>=2.4"], module), None), store,
                      "main", published["pub_state"])
    lease = "lease-provided-lacking"
    with flows.lease_kept(lease):
        flows.publish(demand(lease, "onimage"))
        seen = wait_ended(flows, lease)
    assert seen.rec.package_sha256 == lacking.sha256
    rec = assert_failed_cleanly(flows, seen, "image_lacks_requirement", "torch>=2.4 (the image has no torch)")
    assert dist not in rec.reason.split("image_provides declares:")[1].split(" — ")[0]
