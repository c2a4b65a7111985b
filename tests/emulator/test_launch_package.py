"""handle_demand pins the package, against the Cloud Storage emulator (fake-gcs-server, official client).

The store is in memory and the providers are the scripted fakes of tests/support (as in the unit-tier
service tests); Cloud Storage is real: the pointer is read, the archive stat'ed, the URL a VAST box gets
is fetched. What is asserted: the sha256 is in the intent before the provider is called, a publish
during a launch (or a redelivery after it) does not change what the instance runs, a missing pointer
or archive refuses the launch with ``package_missing`` in the record and the audit, and an unreachable
Cloud Storage is transient (nothing written, the demand is redelivered).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from tests.emulator.emulator_fixtures import gcs_emulator
from tests.support.builders import DEP, actions, demand, open_lease, record_of
from tests.support.clock import FakeClock
from tests.support.fake_provider import FakeProvider, FakeSshProvider
from tests.support.memory_store import MemoryStore

from local_emulator.procs import free_port
from spotleash.adapters.storage import Storage
from spotleash.config import ENV_PREFIX, Settings
from spotleash.errors import ProviderTransient, Transient
from spotleash.model import State, instance_id_for
from spotleash.services.context import Context
from spotleash.services.launch import handle_demand
from spotleash.wire.agent_config import AgentConfig
from spotleash.wire.package import (
    AppSpec,
    Blob,
    ComponentSpec,
    LayeredManifest,
    blob_object,
    manifest_object,
    package_object,
    pointer_object,
    pointer_text,
)

pytestmark = [pytest.mark.emulator]

BUCKET = "spotleash-launch-packages"
IID = instance_id_for("ev-1")
SETTINGS: dict[str, Any] = {
    "deployment_id": DEP, "heartbeat_signing_key": "k" * 32, "heartbeat_url": "http://127.0.0.1:9/beat",
    "vast_api_key": "vast-key", "launch_retry_s": 0.0, "max_runtime_s": 3600, "package_bucket": BUCKET,
    "package_channel": "main",
}


@pytest.fixture(scope="module")
def gcs_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with gcs_emulator(tmp_path_factory.mktemp("gcs-logs"), BUCKET) as url:
        yield url


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(key)


@pytest.fixture
def bucket(gcs_url: str) -> Iterator[Storage]:
    s = Storage(BUCKET, project="p", retry_s=5.0, emulator=gcs_url)
    yield s
    for blob in s.client.list_blobs(BUCKET):
        blob.delete()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def gce(clock: FakeClock) -> FakeProvider:
    return FakeProvider("gce", clock)


@pytest.fixture
def vast(clock: FakeClock) -> FakeSshProvider:
    return FakeSshProvider("vast", clock)


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore(DEP)


def make_ctx(store: MemoryStore, gce: FakeProvider, vast: FakeSshProvider, clock: FakeClock,
             storage: Storage | None, **overrides: Any) -> Context:
    return Context(settings=Settings(**{**SETTINGS, **overrides}), store=store, clock=clock,
                   providers={"gce": gce, "vast": vast}, sleep=clock.sleep, ticks=clock.ticks, storage=storage)


@pytest.fixture
def ctx(store: MemoryStore, gce: FakeProvider, vast: FakeSshProvider, clock: FakeClock, bucket: Storage) -> Context:
    return make_ctx(store, gce, vast, clock, bucket)


def publish_bytes(bucket: Storage, data: bytes, *, move_pointer: bool = True) -> str:
    """Put an archive (content-addressed) and, unless told not to, point ``latest-main.txt`` at it."""
    sha = hashlib.sha256(data).hexdigest()
    name = package_object(sha)
    bucket.write_bytes(name, data, if_generation_match=bucket.generation(name), content_type="application/gzip")
    if move_pointer:
        ptr = pointer_object("main")
        bucket.write_bytes(ptr, pointer_text(sha).encode(), if_generation_match=bucket.generation(ptr))
    return sha


def test_the_launch_pins_the_pointer_s_package_before_the_provider_is_called(
        ctx: Context, store: MemoryStore, gce: FakeProvider, bucket: Storage) -> None:
    sha = publish_bytes(bucket, b"archive one")
    open_lease(ctx)
    seen: list[str | None] = []
    gce.on("create", lambda: seen.append(record_of(store, IID).package_sha256))
    out = handle_demand(ctx, demand())
    assert out.state is State.RUNNING
    assert seen == [sha], "the sha256 must be durable in the intent before create"
    [spec] = gce.specs
    # a VM is told the manifest's name without a Cloud Storage call after the pin; its bootstrap reads the single
    # archive beside it when there is no manifest (this package was published before layers)
    assert (spec.package_sha256, spec.package_uri) == (sha, f"gs://{BUCKET}/packages/{sha}.json")
    assert spec.components == ("ml_models",) and spec.package_url == ""  # a GCE VM reads as itself
    cfg = AgentConfig.for_launch(spec)
    assert cfg.package_sha256 == sha and cfg.components == ["ml_models"] and cfg.package_url == ""
    intent = next(e for e in store.audit_entries(IID) if e["action"] == "launch_intent")
    assert intent["package_sha256"] == sha


def test_a_vast_box_gets_a_url_that_reads_exactly_the_pinned_archive(
        ctx: Context, vast: FakeSshProvider, bucket: Storage) -> None:
    sha = publish_bytes(bucket, b"gpu archive")
    open_lease(ctx)
    assert handle_demand(ctx, demand(gpu=True)).state is State.RUNNING
    [spec] = vast.specs
    assert spec.package_sha256 == sha and spec.package_url
    got = httpx.get(spec.package_url, timeout=10)
    assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == sha
    assert spec.package_url not in spec.labels.values()
    cfg = AgentConfig.for_launch(spec)
    assert cfg.package_url == spec.package_url and "package_url" not in cfg.to_json(safe=True)


def test_a_publish_during_the_launch_and_a_redelivery_keep_the_pinned_version(
        ctx: Context, store: MemoryStore, gce: FakeProvider, bucket: Storage, clock: FakeClock) -> None:
    first = publish_bytes(bucket, b"version one")
    open_lease(ctx)
    gce.on("create", lambda: publish_bytes(bucket, b"version two"))
    gce.fail("create", ProviderTransient("503 while creating"))
    with pytest.raises(Transient):
        handle_demand(ctx, demand())  # past the (zero) retry budget: the event is redelivered
    assert record_of(store, IID).package_sha256 == first
    clock.advance(120)  # past the in-flight window
    out = handle_demand(ctx, demand())
    assert out.state is State.RUNNING
    assert [s.package_sha256 for s in gce.specs] == [first, first]
    assert record_of(store, IID).package_sha256 == first


@pytest.mark.parametrize("case", ["no_pointer", "missing_archive", "garbage_pointer"])
def test_nothing_runnable_published_refuses_the_launch_with_package_missing(
        case: str, ctx: Context, store: MemoryStore, gce: FakeProvider, bucket: Storage) -> None:
    if case == "missing_archive":
        sha = publish_bytes(bucket, b"gone")
        bucket.delete(package_object(sha))
        expect = f"gs://{BUCKET}/packages/{sha}.json does not exist"  # neither a manifest nor an archive
    elif case == "garbage_pointer":
        bucket.write_bytes(pointer_object("main"), b"not a sha\n", if_generation_match=0)
        expect = "names no package"
    else:
        expect = f"gs://{BUCKET}/latest-main.txt does not exist"
    open_lease(ctx)
    out = handle_demand(ctx, demand())
    assert (out.state, out.reason) == (State.FAILED, "package_missing")
    rec = record_of(store, IID)
    assert rec.state is State.FAILED and rec.reason is not None
    assert rec.reason.startswith("package_missing: ") and expect in rec.reason
    assert actions(store, IID) == [("launch_refused", "package_missing")]
    assert gce.calls == [], "nothing was rented"


def test_cloud_storage_unreachable_is_transient_and_writes_nothing(
        store: MemoryStore, gce: FakeProvider, vast: FakeSshProvider, clock: FakeClock) -> None:
    dead = Storage(BUCKET, project="p", retry_s=0.5, emulator=f"http://127.0.0.1:{free_port()}")
    ctx = make_ctx(store, gce, vast, clock, dead)
    open_lease(ctx)
    with pytest.raises(Transient):
        handle_demand(ctx, demand())
    assert store.get(IID) is None and gce.calls == []


def test_without_a_bucket_an_instance_pins_no_package(store: MemoryStore, gce: FakeProvider,
                                                      vast: FakeSshProvider, clock: FakeClock) -> None:
    ctx = make_ctx(store, gce, vast, clock, None, package_bucket=None)
    open_lease(ctx)
    assert handle_demand(ctx, demand()).state is State.RUNNING
    assert record_of(store, IID).package_sha256 is None
    [spec] = gce.specs
    assert spec.package_sha256 == spec.package_uri == spec.package_url == ""


def test_the_signed_url_is_never_logged(ctx: Context, bucket: Storage, vast: FakeSshProvider,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    publish_bytes(bucket, b"secret url archive")
    open_lease(ctx)
    handle_demand(ctx, demand(gpu=True))
    [spec] = vast.specs
    out = capsys.readouterr()
    assert spec.package_url not in out.out + out.err


def test_a_vast_box_gets_one_url_per_blob_of_the_pinned_layered_manifest(
        ctx: Context, vast: FakeSshProvider, bucket: Storage) -> None:
    blobs = {hashlib.sha256(d).hexdigest(): d for d in (b"app tree", b"a wheel")}
    for sha, data in blobs.items():
        bucket.write_bytes(blob_object(sha), data, if_generation_match=bucket.generation(blob_object(sha)))
    [app_sha, wheel_sha] = [hashlib.sha256(b"app tree").hexdigest(), hashlib.sha256(b"a wheel").hexdigest()]
    manifest = LayeredManifest(
        app=AppSpec(name="demo", components=[ComponentSpec(name="ml_models", command=["python", "m.py"], port=18111)]),
        requirements=["w"], blobs=[Blob(sha256=app_sha, size=8, kind="app", name="app.tar.gz"),
                                   Blob(sha256=wheel_sha, size=7, kind="wheel", name="w-1-py3-none-any.whl")])
    name = manifest_object(manifest.sha256)
    bucket.write_bytes(name, manifest.to_bytes(), if_generation_match=bucket.generation(name))
    ptr = pointer_object("main")
    bucket.write_bytes(ptr, pointer_text(manifest.sha256).encode(), if_generation_match=bucket.generation(ptr))
    open_lease(ctx)
    assert handle_demand(ctx, demand(gpu=True)).state is State.RUNNING
    [spec] = vast.specs
    assert spec.package_sha256 == manifest.sha256 and spec.package_uri == f"gs://{BUCKET}/{name}"
    assert hashlib.sha256(httpx.get(spec.package_url, timeout=10).content).hexdigest() == manifest.sha256
    assert set(spec.blob_urls) == set(blobs)
    for sha, url in spec.blob_urls.items():  # each URL reads exactly its blob
        assert hashlib.sha256(httpx.get(url, timeout=10).content).hexdigest() == sha
    cfg = AgentConfig.for_launch(spec)
    assert cfg.blob_urls == spec.blob_urls and "blob_urls" not in cfg.to_json(safe=True)
