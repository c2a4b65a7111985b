"""Every instance pulls and runs the package, on the local stack (issue 12, first "Done when").

``spotleash publish`` of examples/thumbs → a demand naming its components → a Compute fake VM (its real
startup script, bash, through local_emulator.vmshim) and a VAST fake box (its real onstart) each fetch
the layered package's manifest and its blobs (in parallel; the VM with its token, the box with one signed
URL per blob) from the GCS emulator, verify each, install offline with uv (a blob itself) into a venv, start both components
and pass their health checks; the record is READY with endpoints; a request sent straight to each
endpoint gets the component's real answer; release → the instance is gone and so are its component
processes (found by their ``SPOTLEASH_COMPONENT_OF`` marker).

The session's stack runs without a package bucket (tests/conftest.py); this module switches packages on
for the functions that launch (on_demand, on_heartbeat, on_reap: restarted with the bucket in their
environment, as a redeploy would) and off again at the end. GCE and VAST instances run one after the
other: on this one machine both would bind the package's ports (a real instance has its own network).
Wheels are cached across runs in ``~/.cache/spotleash/test-wheels`` (``SPOTLEASH_TEST_WHEEL_CACHE``).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from tests.e2e.flows import Flows
from tests.e2e.packaged import MARKER, packages_on, thumbs_demand

from local_emulator import procs
from spotleash.instance_agent.bootstrap import REST_FILE, REST_STEP
from spotleash.model import InstanceRecord, State
from spotleash.polling import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

READY_TIMEOUT_S = 240.0


@pytest.fixture(scope="module")
def published(local_stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """examples/thumbs published once (through the CLI) and the launchers told the bucket; undone after."""
    with packages_on(local_stack.state_dir, tmp_path_factory.mktemp("publish-state")) as result:
        yield result


@pytest.fixture(scope="module")
def flows(published: dict[str, Any]) -> Flows:
    return Flows()


def real_answers(rec: InstanceRecord) -> None:
    thumb = rec.component_states["thumbnailer"].endpoint
    vec = rec.component_states["vectors"].endpoint
    assert thumb and vec
    buf = io.BytesIO()
    Image.new("RGB", (640, 480), (200, 30, 60)).save(buf, format="PNG")
    r = httpx.post(f"http://{thumb}/thumbnail?size=64&format=png", content=buf.getvalue(), timeout=30)
    assert r.status_code == 200, r.text
    img = Image.open(io.BytesIO(r.content))
    assert img.format == "PNG" and max(img.size) == 64 and img.getpixel((10, 10))[:3] == (200, 30, 60)
    r = httpx.post(f"http://{vec}/similar", json={"id": 7, "k": 3}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ids"][0] == 7 and body["scores"][0] == pytest.approx(1.0, abs=1e-5) and len(body["ids"]) == 3


def status_json(flows: Flows) -> list[dict[str, Any]]:
    out = subprocess.run([sys.executable, "-m", "spotleash.cli", "status", "--json", "--all"],
                         env=dict(os.environ), capture_output=True, text=True, timeout=60, check=True)
    rows: list[dict[str, Any]] = json.loads(out.stdout)["instances"]
    return rows


def timings(rec: InstanceRecord, published_at: float) -> dict[str, float]:
    """From the record: demand → intent (queue + function), intent → RUNNING (the provider's create),
    RUNNING → READY (boot, fetch, install, components healthy: the instance's own time)."""
    assert rec.running_at is not None
    ready_at = rec.updated_at
    return {"demand_to_intent_s": round(rec.created_at.timestamp() - published_at, 2),
            "create_s": round((rec.running_at - rec.created_at).total_seconds(), 2),
            "running_to_ready_s": round((ready_at - rec.running_at).total_seconds(), 2),
            "demand_to_ready_s": round(ready_at.timestamp() - published_at, 2)}


def _venv(instance_id: str) -> Path:
    """The package's venv on the instance (the agent's and its components'), from a component process."""
    components = procs.find_marked(MARKER, instance_id)
    assert components, f"no component process of {instance_id}"
    return Path(components[0].environ()["VIRTUAL_ENV"])


def installed_with_uv(instance_id: str) -> bool:
    """The package root's install log says uv (shipped as a blob) made the venv and installed."""
    return "spotleash: uv (" in (_venv(instance_id).parent / "install.log").read_text()


def agent_compiled_once(instance_id: str) -> bool:
    """The instance agent's own modules have .pyc files in its venv (installed ``--no-compile``): its first
    import wrote them, whatever ``PYTHONDONTWRITEBYTECODE`` says."""
    return any(_venv(instance_id).glob("lib/python3.*/site-packages/spotleash/instance_agent/__pycache__/agent.*.pyc"))


def agent_installed_the_rest(instance_id: str) -> bool:
    """The app's requirements were installed by the agent's process beside its own import (``RestInstall``):
    the bootstrap imported nothing and left nothing behind."""
    venv = _venv(instance_id)
    log = (venv.parent / "install.log").read_text()
    return f"spotleash: {REST_STEP}: " in log and "importing the instance agent" not in log \
        and not (venv.parent / REST_FILE).exists()


@pytest.mark.parametrize("provider", ["gce", "vast"])
def test_an_instance_pulls_the_package_and_runs_its_components(
        provider: str, flows: Flows, published: dict[str, Any], record_property: Any) -> None:
    lease = f"lease-pkg-{provider}"
    with flows.lease_kept(lease):
        t0 = time.time()
        flows.publish(thumbs_demand(lease, gpu=provider == "vast"))
        rec = flows.wait_first_ready(lease, READY_TIMEOUT_S)
        assert rec.provider == provider and rec.package_sha256 == published["sha256"]
        assert set(rec.components) == {"thumbnailer", "vectors"}
        assert {n: c.state for n, c in rec.component_states.items()} == {"thumbnailer": "healthy",
                                                                          "vectors": "healthy"}
        record_property("timings", timings(rec, t0))
        print(provider, timings(rec, t0), "publish_s", published["publish_s"])
        real_answers(rec)
        [row] = [r for r in status_json(flows) if r["instance_id"] == rec.instance_id]
        assert row["components"]["thumbnailer"]["state"] == "healthy"
        assert row["components"]["vectors"]["endpoint"] == rec.component_states["vectors"].endpoint
        assert procs.find_marked(MARKER, rec.instance_id), "the components run as marked processes"
        assert agent_compiled_once(rec.instance_id), "the agent's modules were compiled"
        assert agent_installed_the_rest(rec.instance_id)
        assert installed_with_uv(rec.instance_id), "uv, fetched as a blob, installed the package"
        flows.release(lease, rec.instance_id)
        flows.wait_state(rec.instance_id, {State.TERMINATED}, timeout_s=60)
        wait_until(lambda: not procs.find_marked(MARKER, rec.instance_id), timeout_s=20, interval_s=0.25,
                   what=f"the component processes of {rec.instance_id} to end with it")
