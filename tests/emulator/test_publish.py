"""``spotleash publish`` against the Cloud Storage emulator (fake-gcs-server), through the official client.

Wheels come from PyPI once and are cached in ``~/.cache/spotleash/test-wheels`` (or
``SPOTLEASH_TEST_WHEEL_CACHE``) across runs.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from tests.emulator.emulator_fixtures import gcs_emulator

import spotleash
from local_emulator import stack
from local_emulator.procs import free_port, port_open
from local_emulator.storage.fault_proxy import FaultProxy
from spotleash.adapters.storage import GenerationConflict, ObjectNotFound, Storage, StorageTransient
from spotleash.errors import BadInput, Transient
from spotleash.packaging.appspec import load_app
from spotleash.packaging.package_gc import collect_garbage
from spotleash.packaging.publish import build, move_pointer, publish
from spotleash.topology import load_topology
from spotleash.wire.package import (
    LayeredManifest,
    blob_object,
    manifest_object,
    parse_layered,
    parse_pointer,
    pointer_object,
)

pytestmark = [pytest.mark.emulator, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "thumbs"
BUCKET = "spotleash-test-packages"


@pytest.fixture(scope="module")
def gcs_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with gcs_emulator(tmp_path_factory.mktemp("gcs-logs"), BUCKET) as url:
        yield url


@pytest.fixture()
def state_dir(tmp_path: Path) -> Path:
    """A fresh state dir whose wheel cache is shared across tests and runs."""
    cache = Path(os.environ.get("SPOTLEASH_TEST_WHEEL_CACHE", Path.home() / ".cache" / "spotleash" / "test-wheels"))
    cache.mkdir(parents=True, exist_ok=True)
    sd = tmp_path / "state"
    sd.mkdir()
    (sd / "wheels").symlink_to(cache, target_is_directory=True)
    return sd


def small_app(root: Path, marker: str) -> Path:
    root.mkdir(parents=True)
    (root / "spotleash.toml").write_text(
        '[app]\nname = "tiny"\n\n[[app.components]]\nname = "web"\ncommand = ["python", "web.py"]\nport = 8301\n'
    )
    (root / "web.py").write_text(f"print({marker!r})\n")
    return root


def read_manifest(store: Storage, sha: str) -> LayeredManifest:
    return parse_layered(store.read_bytes(manifest_object(sha))[0], sha)


def test_publish_uploads_once_and_the_pointer_names_a_verifiable_manifest(gcs_url: str, state_dir: Path,
                                                                          tmp_path: Path) -> None:
    store = Storage(BUCKET, project="p", emulator=gcs_url)
    first = publish(load_app(EXAMPLE, None), store, "main", state_dir)
    assert first.uploaded_bytes > 0 and first.blobs_uploaded + first.blobs_reused > 3
    assert first.uri == f"gs://{BUCKET}/{manifest_object(first.sha256)}"
    assert first.pointer == f"gs://{BUCKET}/latest-main.txt"

    pointer, _ = store.read_bytes(pointer_object("main"))
    assert parse_pointer(pointer) == first.sha256
    manifest = read_manifest(store, first.sha256)  # its bytes hash to the name the pointer gives
    names = " ".join(b.name for b in manifest.blobs).lower()
    assert "numpy-" in names and "pillow-" in names and "spotleash-" in names
    assert [b.name for b in manifest.blobs if b.kind == "tool"][0].startswith("uv-")
    for b in manifest.blobs:  # every blob whole under its content address
        info = store.stat(blob_object(b.sha256))
        assert info is not None and info.size == b.size
    [app_blob] = [b for b in manifest.blobs if b.kind == "app"]
    data = store.read_bytes(blob_object(app_blob.sha256))[0]
    assert hashlib.sha256(data).hexdigest() == app_blob.sha256
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        assert {"thumbnailer.py", "vectors.py", "spotleash.toml"} <= set(tar.getnames())
    # spotleash without its core (the control plane's Google clients) plus its `instance` extra's own list
    assert manifest.no_deps == [f"spotleash=={spotleash.__version__}"] and "pydantic>=2.10" in manifest.requirements
    assert not any(n.startswith(("google_cloud", "grpcio", "flask", "functions_framework")) for n in names.split())

    # the same tree again, through the real CLI: same sha256, 0 bytes uploaded, every blob reused
    env = {**os.environ, "STORAGE_EMULATOR_HOST": gcs_url, "SPOTLEASH_PACKAGE_BUCKET": BUCKET,
           "SPOTLEASH_STATE_DIR": str(state_dir), "SPOTLEASH_PROJECT": "p"}
    done = subprocess.run([sys.executable, "-m", "spotleash.cli", "publish", "--app", str(EXAMPLE), "--json"],
                          env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    second = json.loads(done.stdout)
    assert second["sha256"] == first.sha256
    assert (second["uploaded_bytes"], second["blobs_uploaded"]) == (0, 0)
    assert second["blobs_reused"] == len({b.sha256 for b in manifest.blobs})


def test_a_one_line_change_uploads_the_app_blob_and_the_manifest_only(gcs_url: str, state_dir: Path,
                                                                      tmp_path: Path) -> None:
    app_dir = tmp_path / "thumbs"
    shutil.copytree(EXAMPLE, app_dir, ignore=shutil.ignore_patterns("__pycache__"))
    store = Storage(BUCKET, emulator=gcs_url)
    before = publish(load_app(app_dir, None), store, "oneline", state_dir)
    with (app_dir / "thumbnailer.py").open("a") as f:
        f.write("# one more line\n")
    after = publish(load_app(app_dir, None), store, "oneline", state_dir)
    assert after.sha256 != before.sha256 and after.previous == before.sha256
    old, new = read_manifest(store, before.sha256), read_manifest(store, after.sha256)
    [new_app] = [b for b in new.blobs if b.kind == "app"]
    assert {b for b in new.blobs if b.kind != "app"} == {b for b in old.blobs if b.kind != "app"}
    assert after.blobs_uploaded == 1 and after.blobs_reused == len(new.blobs) - 1
    assert after.uploaded_bytes == new_app.size + len(new.to_bytes()) < 1_000_000


def test_an_interrupted_publish_is_finished_by_the_next_and_never_pointed_at(gcs_url: str, state_dir: Path,
                                                                           tmp_path: Path) -> None:
    bucket = "spotleash-test-interrupted"
    Storage(bucket, emulator=gcs_url).ensure_bucket()
    app = load_app(small_app(tmp_path / "app", "interrupted"), None)
    proxy = FaultProxy(gcs_url).start()
    try:
        faulty = Storage(bucket, emulator=proxy.url, retry_s=2.0)
        built = build(app, state_dir, {})
        [held] = [b for b in built.manifest.blobs if b.kind == "app"]  # small: one request names the object
        proxy.plan.add({"operation": "upload", "path": held.sha256, "status": 503, "count": 1000})
        with pytest.raises(StorageTransient):
            publish(app, faulty, "main", state_dir)
        plain = Storage(bucket, emulator=gcs_url)
        assert plain.stat(pointer_object("main")) is None, "no pointer to an incomplete package"
        assert plain.stat(manifest_object(built.sha256)) is None, "no manifest before every blob is whole"
        there = {b.sha256 for b in built.manifest.blobs if plain.stat(blob_object(b.sha256)) is not None}
        assert held.sha256 not in there  # the blobs not yet started when it failed were cancelled: some went up

        proxy.plan.reset()
        done = publish(app, faulty, "main", state_dir)
    finally:
        proxy.stop()
    left = [b for b in built.manifest.blobs if b.sha256 not in there]
    assert (done.sha256, done.blobs_uploaded, done.blobs_reused) == (built.sha256, len(left), len(there))
    assert done.uploaded_bytes == sum(b.size for b in left) + len(built.manifest.to_bytes())
    assert parse_pointer(plain.read_bytes(pointer_object("main"))[0]) == built.sha256


def test_two_concurrent_publishes_leave_the_pointer_on_one_complete_archive(gcs_url: str, state_dir: Path,
                                                                            tmp_path: Path) -> None:
    apps = [small_app(tmp_path / f"app{i}", f"copy {i}") for i in range(2)]
    publish(load_app(apps[0], None), Storage(BUCKET, emulator=gcs_url), "warm", state_dir)  # wheels cached
    env = {**os.environ, "STORAGE_EMULATOR_HOST": gcs_url, "SPOTLEASH_PACKAGE_BUCKET": BUCKET,
           "SPOTLEASH_PROJECT": "p"}
    procs = []
    for i, app in enumerate(apps):
        sd = tmp_path / f"sd{i}"
        sd.mkdir()
        (sd / "wheels").symlink_to((state_dir / "wheels").resolve(), target_is_directory=True)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "spotleash.cli", "publish", "--app", str(app), "--channel", "race", "--json"],
            env={**env, "SPOTLEASH_STATE_DIR": str(sd)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    shas = {r["sha256"] for r in results}
    assert len(shas) == 2

    store = Storage(BUCKET, emulator=gcs_url)
    named = parse_pointer(store.read_bytes(pointer_object("race"))[0])
    assert named in shas
    for sha in shas:  # both manifests whole, every blob they name there
        for b in read_manifest(store, sha).blobs:
            assert store.stat(blob_object(b.sha256)) is not None


class RivalBeforeWrite(Storage):
    """Fault injection: another publisher moves the pointer between our read and our conditional write."""

    def __init__(self, rival_sha: str, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.rival_sha = rival_sha
        self.fired = False

    def write_bytes(self, name: str, data: bytes, *, if_generation_match: int, content_type: str = "text/plain") -> int:
        if not self.fired:
            self.fired = True
            super().write_bytes(name, f"{self.rival_sha}\n".encode(), if_generation_match=if_generation_match)
        return super().write_bytes(name, data, if_generation_match=if_generation_match, content_type=content_type)


def test_a_stale_generation_is_refused_and_the_publisher_reads_again(gcs_url: str, state_dir: Path,
                                                                     tmp_path: Path) -> None:
    plain = Storage(BUCKET, emulator=gcs_url)
    a = publish(load_app(small_app(tmp_path / "a", "a"), None), plain, "gen", state_dir)
    b = publish(load_app(small_app(tmp_path / "b", "b"), None), plain, "other", state_dir)
    gen = plain.generation(pointer_object("gen"))
    plain.write_bytes(pointer_object("gen"), f"{b.sha256}\n".encode(), if_generation_match=gen)
    with pytest.raises(GenerationConflict):  # the emulator honours ifGenerationMatch
        plain.write_bytes(pointer_object("gen"), f"{a.sha256}\n".encode(), if_generation_match=gen)

    racing = RivalBeforeWrite(b.sha256, bucket=BUCKET, emulator=gcs_url)
    previous = move_pointer(racing, "gen", a.sha256, len(read_manifest(plain, a.sha256).to_bytes()))
    assert racing.fired
    assert previous == b.sha256  # it re-read the rival's pointer, then moved it
    assert parse_pointer(plain.read_bytes(pointer_object("gen"))[0]) == a.sha256


def test_the_pointer_never_names_a_manifest_that_is_not_in_the_bucket(gcs_url: str) -> None:
    store = Storage(BUCKET, emulator=gcs_url)
    with pytest.raises(BadInput, match="not whole"):
        move_pointer(store, "ghost", "b" * 64, 10)
    with pytest.raises(ObjectNotFound):
        store.read_bytes(pointer_object("ghost"))


def test_cloud_storage_unavailable_is_a_clear_transient_error(state_dir: Path) -> None:
    port = free_port()
    store = Storage(BUCKET, emulator=f"http://127.0.0.1:{port}", retry_s=2.0)
    with pytest.raises(StorageTransient) as e:
        publish(load_app(EXAMPLE, None), store, "main", state_dir)
    assert isinstance(e.value, Transient)
    assert f"gs://{BUCKET}/blobs/" in str(e.value) and "Cloud Storage" in str(e.value)


def test_a_missing_bucket_and_a_schemeless_emulator_host_are_bad_input(gcs_url: str, state_dir: Path) -> None:
    with pytest.raises(ObjectNotFound, match="nope-bucket"):
        publish(load_app(EXAMPLE, None), Storage("nope-bucket", emulator=gcs_url), "main", state_dir)
    with pytest.raises(BadInput, match="scheme"):
        Storage(BUCKET, emulator="127.0.0.1:4443")


def test_the_local_stack_runs_cloud_storage_on_loopback_with_the_bucket(tmp_path: Path) -> None:
    if shutil.which("gcloud") is None or shutil.which("java") is None:
        pytest.skip("Google's emulators are not installed")
    state = tmp_path / "stack"
    info = stack.up(state, fakes=(), functions=False)
    try:
        url = info.env["STORAGE_EMULATOR_HOST"]
        assert url.startswith("http://127.0.0.1:")
        assert info.env["SPOTLEASH_PACKAGE_BUCKET"] == load_topology().package_bucket
        assert stack.read_env(state)["STORAGE_EMULATOR_HOST"] == url
        part = next(p for p in stack.status(state).parts if p.name == "storage")
        assert part.alive
        listening = [c.laddr for c in psutil.Process(part.pid).net_connections("inet") if c.status == "LISTEN"]
        assert listening and all(addr.ip == "127.0.0.1" for addr in listening), listening
        store = Storage(load_topology().package_bucket, emulator=url)
        assert store.client.lookup_bucket(store.bucket_name) is not None
        port = int(url.rsplit(":", 1)[1])
    finally:
        stack.down(state)
    assert not port_open(port)
    assert not psutil.pid_exists(part.pid) or psutil.Process(part.pid).status() == psutil.STATUS_ZOMBIE


def test_concurrent_uploads_of_the_same_blobs_both_succeed(gcs_url: str, state_dir: Path, tmp_path: Path) -> None:
    """Two publishers of the same tree race on the content addresses: both finish with one manifest.

    (Cloud Storage, and the stack's front before fake-gcs-server, refuses the second writer of a blob with a
    412 whatever the upload's kind — tests/emulator/test_storage_preconditions.py — which ``upload_blobs``
    counts as 0 bytes. Same content either way.)"""
    app = load_app(small_app(tmp_path / "same", "same"), None)
    results: list[object] = []

    def run(i: int) -> None:
        sd = tmp_path / f"s{i}"
        sd.mkdir()
        (sd / "wheels").symlink_to((state_dir / "wheels").resolve(), target_is_directory=True)
        try:
            results.append(publish(app, Storage(BUCKET, emulator=gcs_url), "same", sd))
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            results.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert all(not isinstance(r, Exception) for r in results), results
    shas = {r.sha256 for r in results}  # type: ignore[attr-defined]
    assert len(shas) == 1
    sha = shas.pop()
    store = Storage(BUCKET, emulator=gcs_url)
    assert all(store.stat(blob_object(b.sha256)) for b in read_manifest(store, sha).blobs)


def test_gc_deletes_what_no_kept_manifest_names_and_nothing_a_pointer_needs(gcs_url: str, state_dir: Path,
                                                                            tmp_path: Path) -> None:
    bucket = "spotleash-test-gc"
    store = Storage(bucket, emulator=gcs_url)
    store.ensure_bucket()
    app_dir = small_app(tmp_path / "app", "v1")
    v1 = publish(load_app(app_dir, None), store, "main", state_dir)
    (app_dir / "web.py").write_text("print('v2')\n")
    v2 = publish(load_app(app_dir, None), store, "main", state_dir)
    [old_app] = [b for b in read_manifest(store, v1.sha256).blobs if b.kind == "app"]
    dry = collect_garbage(store, keep_recent=0, grace_s=0, dry_run=True)
    assert (dry.manifests_deleted, dry.blobs_deleted) == (1, 1) and store.stat(manifest_object(v1.sha256))
    done = collect_garbage(store, keep_recent=0, grace_s=0)
    assert (done.manifests_deleted, done.blobs_deleted, done.bytes_freed) == (1, 1, dry.bytes_freed)
    assert store.stat(manifest_object(v1.sha256)) is None and store.stat(blob_object(old_app.sha256)) is None
    for b in read_manifest(store, v2.sha256).blobs:  # the pointer's package is whole
        assert store.stat(blob_object(b.sha256)) is not None
    assert collect_garbage(store, keep_recent=0, grace_s=0).blobs_deleted == 0  # nothing left to collect
