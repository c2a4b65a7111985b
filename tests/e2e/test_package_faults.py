"""Bad packages and faults, on the local stack: real fake VMs run their real startup script (issue 12,
"Bad input and faults").

Each case launches a Compute fake VM through Pub/Sub → on_demand, and the VM's bootstrap or instance agent
meets the fault. What every failing case asserts: the record ends FAILED with the reason code first
(``package_unverified: …``), the audit has a ``launch_failed`` entry with that code, ``spotleash status
--json`` (the CLI, as a subprocess) shows the same reason, the provider confirms the VM is gone, and no
process of the VM (its bootstrap, pip, a component) is left.

- an archive overwritten in the bucket after the launch pinned its sha256 → ``package_unverified``, never
  extracted;
- a package whose offline install fails (a requirement with no wheel) → ``package_install_failed``;
- a component that crashes at start / never answers its health path → ``component_unhealthy`` naming it,
  at its ``start_timeout_s`` (4 s here);
- Cloud Storage down during the VM's download: retried, READY once it is back; down for good →
  ``package_unavailable`` after ``SPOTLEASH_PACKAGE_FETCH_RETRY_S`` (20 s here);
- a layered package (the CLI's): a blob deleted from the bucket after the pin → ``package_missing`` naming
  it; a blob overwritten with other bytes → ``package_unverified``, nothing assembled or run; a VAST box
  whose signed URLs name a fault proxy that cuts one blob's download half-way, twice → that blob alone
  is fetched again and the box is READY;
- a VM deleted while its bootstrap is installing (pip building a package that never finishes) leaves no
  process behind.

"After the launch pinned it" is made certain, not raced: a latency fault holds the Compute fake's
``instances.insert`` for a few seconds, so the intent (with the sha256) is written and the VM does not
exist yet when the test changes the bucket or stops Cloud Storage. Broken apps are built here, in tmp
dirs: small hand-made packages (no spotleash wheel: they never get that far) and one app published through
the CLI (its components need the instance agent).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.flows import Flows
from tests.support.failed_launch import assert_failed_cleanly, vm_processes, wait_ended
from tests.support.wheels import tiny_wheel

from local_emulator import stack
from local_emulator import storage as gcs
from local_emulator.storage.fault_proxy import FaultProxy
from spotleash.adapters.storage import Storage
from spotleash.model import InstanceRecord, State
from spotleash.packaging.appspec import load_app
from spotleash.packaging.publish import publish
from spotleash.polling import wait_until
from spotleash.providers.base import LABEL_LEASE
from spotleash.topology import load_topology
from spotleash.wire.events import Component, DemandEvent
from spotleash.wire.package import (
    AppSpec,
    Blob,
    ComponentSpec,
    LayeredManifest,
    blob_object,
    build_package,
    manifest_object,
    package_object,
    parse_layered,
    pointer_object,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

LAUNCHERS = ("on_demand", "on_heartbeat", "on_reap")  # the functions that call handle_demand
FETCH_RETRY_S = "20"
INSERT_HOLD_S = 4.0  # latency fault on instances.insert: the window between the pinned intent and the VM
WHEEL_CACHE = Path(os.environ.get("SPOTLEASH_TEST_WHEEL_CACHE", Path.home() / ".cache" / "spotleash" / "test-wheels"))

SERVER = '''\
import http.server, os, sys

MODE = os.environ.get("MODE", "ok")
if MODE == "crash":
    print("boom: the model file is missing", flush=True)
    sys.exit(3)


class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(503 if MODE == "sick" else 200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *a):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
'''

APP_TOML = '''\
[app]
name = "faulty"
dir = "."

[[app.components]]
name = "steady"
command = ["python", "server.py"]
port = 18361

[[app.components]]
name = "crasher"
command = ["python", "server.py"]
port = 18362
env = { MODE = "crash" }
start_timeout_s = 4

[[app.components]]
name = "silent"
command = ["python", "server.py"]
port = 18363
env = { MODE = "sick" }
start_timeout_s = 4
'''

# An sdist whose in-tree build backend never finishes: pip (offline, no build requirements) runs it in a
# subprocess of its own, which is what a VM deleted mid-install must still take down.
SLOW_BACKEND = '''\
import time


def get_requires_for_build_wheel(config_settings=None):
    time.sleep(3600)
    return []


build_wheel = get_requires_for_build_wheel
'''


def _set_env(state_dir: Path, values: dict[str, str]) -> None:
    """Rewrite the stack's env file with ``values`` and restart the launchers (as a redeploy would)."""
    path = stack.env_file(state_dir)
    lines = [ln for ln in path.read_text().splitlines() if ln.split("=", 1)[0] not in values]
    path.write_text("\n".join([*lines, *(f"{k}={v}" for k, v in values.items())]) + "\n")
    for name in LAUNCHERS:  # one at a time: each restart rewrites stack.json
        stack.restart(state_dir, name)


def _sdist(out_dir: Path, name: str = "slowpkg", version: str = "1.0") -> Path:
    top = f"{name}-{version}"
    files = {
        f"{top}/pyproject.toml": f'[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'
                                 f'\n[project]\nname = "{name}"\nversion = "{version}"\n',
        f"{top}/backend.py": SLOW_BACKEND,
        f"{top}/PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
    }
    path = out_dir / f"{top}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for member, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@dataclass
class Packages:
    bucket: Storage
    state_dir: Path
    full_sha: str  # published through the CLI (layered): spotleash's wheels + the three components above
    app_dir: Path
    pub_state: Path
    tiny: dict[str, str]  # name → sha256 of the hand-made single-archive packages (already in the bucket)
    tiny_bytes: dict[str, bytes]

    def republish(self) -> None:
        """The layered package again (blobs the bucket lacks, the manifest); the pointer is set by the test."""
        got = publish(load_app(self.app_dir, None), self.bucket, "republish", self.pub_state)
        assert got.sha256 == self.full_sha

    def full_manifest(self) -> LayeredManifest:
        return parse_layered(self.bucket.read_bytes(manifest_object(self.full_sha))[0], self.full_sha)

    def a_wheel(self) -> Blob:
        """A small wheel blob of the published package (the one the faults are done to)."""
        return min((b for b in self.full_manifest().blobs if b.kind == "wheel"), key=lambda b: b.size)

    def point_at(self, sha: str) -> None:
        name = pointer_object("main")
        self.bucket.write_bytes(name, f"{sha}\n".encode(), if_generation_match=self.bucket.generation(name))

    def put_archive(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        name = package_object(sha)
        gen = self.bucket.generation(name)
        if gen == 0:
            self.bucket.write_bytes(name, data, if_generation_match=0, content_type="application/gzip")
        return sha


def _tiny_package(tmp: Path, label: str, requirements: list[str], extra_wheels: list[Path]) -> bytes:
    app_dir = tmp / label
    app_dir.mkdir()
    (app_dir / "server.py").write_text(SERVER)
    app = AppSpec(name=f"tiny-{label}", components=[
        ComponentSpec(name="steady", command=["python", "server.py"], port=18361)])
    out = tmp / f"{label}.tar.gz"
    build_package(out, app, {"server.py": app_dir / "server.py", "label.txt": _write(app_dir / "label.txt", label)},
                  [tiny_wheel(tmp), *extra_wheels], requirements)
    return out.read_bytes()


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def packages(local_stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Packages]:
    state_dir: Path = local_stack.state_dir
    bucket_name = load_topology().package_bucket
    WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
    pub_state = tmp_path_factory.mktemp("faults-publish-state")
    (pub_state / "wheels").symlink_to(WHEEL_CACHE, target_is_directory=True)
    app = tmp_path_factory.mktemp("faulty-app")
    (app / "spotleash.toml").write_text(APP_TOML)
    (app / "server.py").write_text(SERVER)
    env = {**os.environ, "SPOTLEASH_PACKAGE_BUCKET": bucket_name, "SPOTLEASH_STATE_DIR": str(pub_state)}
    out = subprocess.run([sys.executable, "-m", "spotleash.cli", "publish", "--app", str(app), "--json"],
                         env=env, capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    full_sha = json.loads(out.stdout)["sha256"]
    bucket = Storage(bucket_name, project=os.environ["SPOTLEASH_PROJECT"], retry_s=10.0,
                     emulator=os.environ["STORAGE_EMULATOR_HOST"])
    tmp = tmp_path_factory.mktemp("tiny-packages")
    wheels = tmp / "extra-wheels"
    wheels.mkdir()
    tiny_bytes = {
        "good": _tiny_package(tmp, "good", ["tinylib"], []),
        "other": _tiny_package(tmp, "other", ["tinylib"], []),
        "no_wheel": _tiny_package(tmp, "no_wheel", ["tinylib", "not-in-the-package==9"], []),
        "slow_build": _tiny_package(tmp, "slow_build", ["slowpkg"], [_sdist(wheels)]),
    }
    pk = Packages(bucket, state_dir, full_sha, app, pub_state, {}, tiny_bytes)
    pk.tiny = {name: pk.put_archive(data) for name, data in tiny_bytes.items() if name != "other"}
    saved = {k: os.environ.get(k) for k in ("SPOTLEASH_PACKAGE_BUCKET", "SPOTLEASH_PACKAGE_FETCH_RETRY_S")}
    _set_env(state_dir, {"SPOTLEASH_PACKAGE_BUCKET": bucket_name, "SPOTLEASH_PACKAGE_FETCH_RETRY_S": FETCH_RETRY_S})
    os.environ.update({"SPOTLEASH_PACKAGE_BUCKET": bucket_name, "SPOTLEASH_PACKAGE_FETCH_RETRY_S": FETCH_RETRY_S})
    try:
        yield pk
    finally:
        _set_env(state_dir, {"SPOTLEASH_PACKAGE_BUCKET": "", "SPOTLEASH_PACKAGE_FETCH_RETRY_S": "300"})
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def flows(packages: Packages) -> Flows:
    return Flows()


@pytest.fixture(autouse=True)
def _no_faults_left(flows: Flows) -> Iterator[None]:
    yield
    flows.compute("DELETE", "faults")


def demand(lease_id: str, component: str) -> DemandEvent:
    return DemandEvent(lease_id=lease_id, trigger="manual", ram_percent=91.0,
                       components=[Component(name=component, ram_gb=1.0, gpu=False)])


def hold_inserts(flows: Flows) -> None:
    flows.compute("POST", "faults", operation="instances.insert", latency_s=INSERT_HOLD_S, count=1)


def wait_pinned(flows: Flows, lease_id: str, sha: str) -> InstanceRecord:
    """The intent of the lease's launch, with its pinned sha256, written while the insert is held."""
    def check() -> InstanceRecord | None:
        recs = [r for r in flows.records_of(lease_id) if r.package_sha256]
        return recs[0] if recs else None

    rec: InstanceRecord = wait_until(check, timeout_s=30, interval_s=0.05, what=f"the pinned intent of {lease_id}")
    assert rec.package_sha256 == sha and rec.state in (State.REQUESTED, State.PROVISIONING)
    assert flows.vm(rec.provider_id or "-") is None, "the VM must not exist yet (insert held)"
    return rec


def journal(vm_dirs: set[str]) -> str:
    return "".join(p.read_text(errors="replace") for d in vm_dirs
                   for p in sorted((Path(d) / "root" / "var" / "log" / "journal").glob("*.log")))


def wait_retrying(flows: Flows, lease: str, dirs: set[str]) -> None:
    """Until the lease's VM's bootstrap logs a retried download. Read while the VM lives: a deleted VM's
    disk, its journal included, goes with it (as on GCE)."""
    def retrying() -> bool:
        dirs.update(str(vm["workdir"]) for vm in flows.vms()
                    if vm.get("labels", {}).get(LABEL_LEASE) == lease and vm.get("workdir"))
        return "package download failed; retrying" in journal(dirs)

    wait_until(retrying, timeout_s=60, interval_s=0.2, what="the VM's bootstrap to retry its download")


# --------------------------------------------------------------------------- the cases


def test_an_archive_overwritten_after_the_launch_pinned_it_is_refused_and_never_run(
        flows: Flows, packages: Packages) -> None:
    sha = packages.tiny["good"]
    packages.point_at(sha)
    lease = "lease-fault-unverified"
    with flows.lease_kept(lease):
        hold_inserts(flows)
        flows.publish(demand(lease, "steady"))
        wait_pinned(flows, lease, sha)
        name = package_object(sha)  # someone overwrites the object the launch pinned
        packages.bucket.write_bytes(name, packages.tiny_bytes["other"], if_generation_match=packages.bucket.generation(name))
        seen = wait_ended(flows, lease)
    rec = assert_failed_cleanly(flows, seen, "package_unverified", sha, hashlib.sha256(packages.tiny_bytes["other"]).hexdigest())
    work = [Path(d) / "root" / "opt" / "spotleash" / "work" for d in seen.vm_dirs]
    assert not [p for w in work for p in w.glob("pkg-*")], "an unverified archive is never extracted"
    assert not [p for w in work for p in (w / "logs").glob("*")], "no component ever started"
    assert rec.component_states["steady"].state != "healthy"
    packages.bucket.write_bytes(name, packages.tiny_bytes["good"], if_generation_match=packages.bucket.generation(name))


def test_a_package_whose_install_fails_is_refused(flows: Flows, packages: Packages) -> None:
    packages.point_at(packages.tiny["no_wheel"])
    lease = "lease-fault-install"
    with flows.lease_kept(lease):
        flows.publish(demand(lease, "steady"))
        seen = wait_ended(flows, lease)
    assert_failed_cleanly(flows, seen, "package_install_failed", "pip install (offline) exited with code 1",
                          "not-in-the-package")


@pytest.mark.parametrize(("component", "needle"), [("crasher", "boom: the model file is missing"),
                                                   ("silent", "HTTP 503")])
def test_a_component_not_healthy_by_its_deadline_fails_the_launch(
        component: str, needle: str, flows: Flows, packages: Packages) -> None:
    packages.point_at(packages.full_sha)
    lease = f"lease-fault-{component}"
    with flows.lease_kept(lease):
        flows.publish(demand(lease, component))
        seen = wait_ended(flows, lease)
    rec = assert_failed_cleanly(flows, seen, "component_unhealthy", f"{component}: not healthy within 4 s", needle)
    assert rec.component_states[component].state == "failing"


def test_a_vm_deleted_while_its_bootstrap_installs_leaves_no_process(flows: Flows, packages: Packages) -> None:
    packages.point_at(packages.tiny["slow_build"])
    lease = "lease-fault-midinstall"
    dirs: set[str] = set()
    with flows.lease_kept(lease):
        flows.publish(demand(lease, "steady"))

        def building() -> InstanceRecord | None:
            for vm in flows.vms():
                if vm.get("labels", {}).get(LABEL_LEASE) == lease and vm.get("workdir"):
                    dirs.add(str(vm["workdir"]))
            recs = flows.records_of(lease)
            hooks = [p for p in vm_processes(dirs, recs[0].instance_id if recs else "-")
                     if "_in_process" in " ".join(p.cmdline())]
            return recs[0] if hooks else None

        rec: InstanceRecord = wait_until(building, timeout_s=120, interval_s=0.25,
                                         what="pip to be building the never-ending package on the VM")
        flows.release(lease, rec.instance_id)
        done = flows.wait_gone(rec, timeout_s=60)
    assert done.state is State.TERMINATED
    wait_until(lambda: not vm_processes(dirs, rec.instance_id), timeout_s=15, interval_s=0.25,
               what="every process of the deleted VM (bootstrap, pip, its build step) to be gone")


def _restart_storage(packages: Packages) -> None:
    """Cloud Storage back (the emulator keeps objects in memory): the bucket and what it held."""
    proc = stack.restart(packages.state_dir, gcs.NAME)
    assert proc.port is not None
    gcs.create_bucket(proc.port, os.environ["SPOTLEASH_PROJECT"], packages.bucket.bucket.name)
    for name, data in packages.tiny_bytes.items():
        if name != "other":
            packages.put_archive(data)
    packages.republish()


def test_cloud_storage_down_during_the_download_is_retried_until_it_is_back(
        flows: Flows, packages: Packages) -> None:
    packages.point_at(packages.full_sha)
    lease = "lease-fault-gcs-blip"
    dirs: set[str] = set()
    with flows.lease_kept(lease):
        hold_inserts(flows)
        flows.publish(demand(lease, "steady"))
        wait_pinned(flows, lease, packages.full_sha)
        try:
            stack.kill_part(packages.state_dir, gcs.NAME)

            wait_retrying(flows, lease, dirs)
        finally:
            _restart_storage(packages)
            packages.point_at(packages.full_sha)
        rec = flows.wait_ready(lease, timeout_s=240)
        assert rec.component_states["steady"].state == "healthy"
        downloaded = [json.loads(ln) for ln in journal(dirs).splitlines()
                      if ln.startswith("{") and '"package downloaded"' in ln]
        assert downloaded and downloaded[0]["what"] == "manifest" and downloaded[0]["attempts"] > 1, \
            "the manifest's download succeeded on a later attempt"
        assert len(downloaded) == 1 + len({b.sha256 for b in packages.full_manifest().blobs}), "each blob once"
        flows.release(lease, rec.instance_id)
        flows.wait_gone(rec, timeout_s=60)
    wait_until(lambda: not vm_processes(dirs, rec.instance_id), timeout_s=15, interval_s=0.25,
               what="the released VM's processes to be gone")


def test_cloud_storage_down_for_good_fails_the_launch_with_package_unavailable(
        flows: Flows, packages: Packages) -> None:
    sha = packages.tiny["good"]
    packages.point_at(sha)
    lease = "lease-fault-gcs-down"
    with flows.lease_kept(lease):
        hold_inserts(flows)
        flows.publish(demand(lease, "steady"))
        wait_pinned(flows, lease, sha)
        try:
            stack.kill_part(packages.state_dir, gcs.NAME)
            wait_retrying(flows, lease, set())  # retried before it gave up
            seen = wait_ended(flows, lease)
        finally:
            _restart_storage(packages)
    assert_failed_cleanly(flows, seen, "package_unavailable", f"{sha}.json unreachable after",
                          "Connection refused")


# --------------------------------------------------------------------------- layered packages: blob faults


def test_a_blob_deleted_after_the_pin_fails_the_launch_with_package_missing(flows: Flows, packages: Packages) -> None:
    packages.point_at(packages.full_sha)
    wheel = packages.a_wheel()
    lease = "lease-fault-blob-missing"
    try:
        with flows.lease_kept(lease):
            hold_inserts(flows)
            flows.publish(demand(lease, "steady"))
            wait_pinned(flows, lease, packages.full_sha)
            packages.bucket.delete(blob_object(wheel.sha256))
            seen = wait_ended(flows, lease)
    finally:
        packages.republish()
    assert_failed_cleanly(flows, seen, "package_missing", f"blobs%2F{wheel.sha256}")


def test_a_blob_whose_bytes_do_not_match_its_name_is_refused_and_nothing_runs(
        flows: Flows, packages: Packages) -> None:
    packages.point_at(packages.full_sha)
    wheel = packages.a_wheel()
    name = blob_object(wheel.sha256)
    lease = "lease-fault-blob-tampered"
    try:
        with flows.lease_kept(lease):
            hold_inserts(flows)
            flows.publish(demand(lease, "steady"))
            wait_pinned(flows, lease, packages.full_sha)
            packages.bucket.write_bytes(name, b"not the wheel", if_generation_match=packages.bucket.generation(name))
            seen = wait_ended(flows, lease)
    finally:
        packages.bucket.delete(name)
        packages.republish()
    rec = assert_failed_cleanly(flows, seen, "package_unverified", wheel.sha256, wheel.name,
                                hashlib.sha256(b"not the wheel").hexdigest())
    work = [Path(d) / "root" / "opt" / "spotleash" / "work" for d in seen.vm_dirs]
    assert not [p for w in work for p in w.glob("pkg-*")], "nothing assembled from an unverified blob"
    assert not [p for w in work for p in (w / "blobs").glob(wheel.sha256)], "the bad bytes were not kept"
    assert rec.component_states["steady"].state != "healthy"


def test_a_vast_box_refetches_a_blob_cut_mid_download_and_is_ready(flows: Flows, packages: Packages) -> None:
    """The launchers sign URLs for a fault proxy (their STORAGE_EMULATOR_HOST); it cuts one blob's body
    half-way twice. The box retries that blob alone and answers."""
    packages.point_at(packages.full_sha)
    wheel = packages.a_wheel()
    upstream = os.environ["STORAGE_EMULATOR_HOST"]
    proxy = FaultProxy(upstream).start()
    rule = proxy.plan.add({"operation": "download", "path": f"blobs%2F{wheel.sha256}", "effect": "cut", "count": 2})
    lease = "lease-fault-blob-cut"
    _set_env(packages.state_dir, {"STORAGE_EMULATOR_HOST": proxy.url})
    try:
        with flows.lease_kept(lease):
            flows.publish(DemandEvent(lease_id=lease, trigger="manual", ram_percent=91.0,
                                      components=[Component(name="steady", ram_gb=1.0, gpu=True)]))
            rec = flows.wait_ready(lease, timeout_s=240)
            assert rec.provider == "vast" and rec.component_states["steady"].state == "healthy"
            assert rule.fired == 2, "the blob's download was cut twice, then fetched whole"
            flows.release(lease, rec.instance_id)
            flows.wait_gone(rec, timeout_s=60)
    finally:
        _set_env(packages.state_dir, {"STORAGE_EMULATOR_HOST": upstream})
        proxy.stop()
