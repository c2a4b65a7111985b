"""A layered package on the instance (bootstrap, standard library only): the manifest checked against the
pinned sha256, blobs fetched in parallel, each verified before it is kept, cached so a verified blob is
never fetched twice, and the root assembled from verified blobs only."""

from __future__ import annotations

import email.message
import hashlib
import http.client
import io
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from spotleash.instance_agent import bootstrap
from spotleash.instance_agent.bootstrap import Installer, Origin, PackageFailure, Source, obtain
from spotleash.instance_agent.package import prepared
from spotleash.wire.package import AppSpec, Blob, ComponentSpec, LayeredManifest, write_archive

APP = AppSpec(name="demo", components=[ComponentSpec(name="web", command=["python", "web.py"], port=18101)])
Reply = int | bytes | Exception


class _Reply(io.BytesIO):
    status = 200

    def __enter__(self) -> _Reply:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class _Cut:
    """A body that ends early, as urllib shows it: half the declared length, then b"" (no error)."""

    status = 200

    def __init__(self, declared: int) -> None:
        self.headers = {"Content-Length": str(declared)}
        self._body = io.BytesIO(b"x" * (declared // 2))

    def read(self, n: int = -1) -> bytes:
        return self._body.read(n)

    def __enter__(self) -> _Cut:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class Store:
    """URL → replies (the last one repeats); every request seen, from any thread."""

    def __init__(self, replies: Mapping[str, list[Reply | str]]) -> None:
        self.replies = {k: list(v) for k, v in replies.items()}
        self.seen: list[str] = []
        self.lock = threading.Lock()

    def open(self, req: urllib.request.Request, timeout: float) -> Any:  # noqa: ARG002 - urlopen's shape
        with self.lock:
            self.seen.append(req.full_url)
            queue = self.replies.get(req.full_url, [404])
            r = queue.pop(0) if len(queue) > 1 else queue[0]
        if r == "cut":
            return _Cut(100)
        if r == "incomplete":
            raise http.client.IncompleteRead(b"part", 100)
        if isinstance(r, Exception):
            raise r
        if isinstance(r, int):
            raise urllib.error.HTTPError(req.full_url, r, "error", email.message.Message(), io.BytesIO(b""))
        assert isinstance(r, bytes)
        return _Reply(r)


class RecordingInstaller(Installer):
    """Installs nothing (no venv in a unit test): records what it was asked to install."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Path, Path | None]] = []

    def install(self, root: Path, manifest: Mapping[str, Any], uv: Path | None = None) -> None:  # noqa: ARG002
        self.calls.append((root, uv))


def layered(tmp: Path) -> tuple[LayeredManifest, dict[str, bytes]]:
    src = tmp / "src"
    src.mkdir()
    (src / "web.py").write_text("print('hi')\n")
    app_path = tmp / "app.tar.gz"
    app_sha = write_archive(app_path, {"web.py": src / "web.py"})
    blobs = {app_sha: app_path.read_bytes(), **{hashlib.sha256(d).hexdigest(): d for d in (b"wheel one", b"wheel two")}}
    w1, w2 = hashlib.sha256(b"wheel one").hexdigest(), hashlib.sha256(b"wheel two").hexdigest()
    m = LayeredManifest(app=APP, requirements=["one", "two"], blobs=[
        Blob(sha256=app_sha, size=len(blobs[app_sha]), kind="app", name="app.tar.gz"),
        Blob(sha256=w1, size=9, kind="wheel", name="one-1.0-py3-none-any.whl"),
        Blob(sha256=w2, size=9, kind="wheel", name="two-1.0-py3-none-any.whl")])
    return m, blobs


def url(name: str) -> str:
    return f"http://gcs/{name}"


def origin() -> Origin:
    return Origin(Source(url("manifest")), lambda sha: Source(url(sha)))


def replies(m: LayeredManifest, blobs: dict[str, bytes], **over: list[Reply | str]) -> dict[str, list[Reply | str]]:
    got: dict[str, list[Reply | str]] = {url("manifest"): [m.to_bytes()], **{url(s): [d] for s, d in blobs.items()}}
    got.update({url(k): v for k, v in over.items()})
    return got


def test_blobs_are_fetched_verified_and_assembled_and_a_verified_blob_is_never_fetched_twice(tmp_path: Path) -> None:
    m, blobs = layered(tmp_path)
    store = Store(replies(m, blobs))
    installer = RecordingInstaller()
    root, raw, steps = obtain(origin(), m.sha256, tmp_path / "work", installer, opener=store.open)
    assert sorted(store.seen) == sorted([url("manifest"), *(url(s) for s in blobs)])
    assert (root / "app" / "web.py").read_text() == "print('hi')\n"
    assert (root / "wheels" / "one-1.0-py3-none-any.whl").read_bytes() == b"wheel one"
    assert prepared(root, raw).manifest == m and installer.calls == [(root, None)]  # no uv blob: pip installs
    assert set(steps) == {"fetch_s", "install_s", "assemble_s"}  # the recording installer runs no step of its own
    assert all((tmp_path / "work" / "blobs" / s).read_bytes() == d for s, d in blobs.items())

    store.seen.clear()  # a second package root from the cache: nothing fetched again
    obtain(origin(), m.sha256, tmp_path / "work", installer, opener=store.open)
    assert store.seen == []


def test_a_manifest_that_is_not_the_pinned_one_is_refused_before_any_blob(tmp_path: Path) -> None:
    m, blobs = layered(tmp_path)
    store = Store(replies(m, blobs))
    with pytest.raises(PackageFailure) as e:
        obtain(origin(), "f" * 64, tmp_path / "work", RecordingInstaller(), opener=store.open)
    assert e.value.reason == "package_unverified" and store.seen == [url("manifest")]


def test_a_blob_whose_bytes_do_not_match_its_name_is_never_kept_or_used(tmp_path: Path) -> None:
    m, blobs = layered(tmp_path)
    bad = hashlib.sha256(b"wheel two").hexdigest()
    store = Store(replies(m, blobs, **{bad: [b"tampered"]}))
    installer = RecordingInstaller()
    with pytest.raises(PackageFailure) as e:
        obtain(origin(), m.sha256, tmp_path / "work", installer, opener=store.open)
    assert e.value.reason == "package_unverified" and bad in e.value.detail and "two-1.0" in e.value.detail
    assert not (tmp_path / "work" / "blobs" / bad).exists()
    assert installer.calls == [] and not list((tmp_path / "work").glob("pkg-*")), "nothing assembled or run"


def test_a_blob_missing_from_the_bucket_fails_at_once(tmp_path: Path) -> None:
    m, blobs = layered(tmp_path)
    gone = hashlib.sha256(b"wheel one").hexdigest()
    store = Store(replies(m, blobs, **{gone: [404]}))
    with pytest.raises(PackageFailure) as e:
        obtain(origin(), m.sha256, tmp_path / "work", RecordingInstaller(), opener=store.open)
    assert e.value.reason == "package_missing" and store.seen.count(url(gone)) == 1


def test_storage_failing_mid_download_is_retried_per_blob(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A body cut short, a refused connection, then a 404 while the store comes back (its objects not there yet),
    then the bytes: retried for that blob alone; the others are fetched once."""
    monkeypatch.setattr(bootstrap.time, "sleep", lambda _s: None)
    m, blobs = layered(tmp_path)
    flaky = hashlib.sha256(b"wheel one").hexdigest()
    store = Store(replies(m, blobs, **{flaky: ["cut", "incomplete", ConnectionRefusedError("down"), 404,
                                                          blobs[flaky]]}))
    root, _, _ = obtain(origin(), m.sha256, tmp_path / "work", RecordingInstaller(), opener=store.open)
    assert store.seen.count(url(flaky)) == 5
    assert all(store.seen.count(url(s)) == 1 for s in blobs if s != flaky)
    assert (root / "wheels" / "one-1.0-py3-none-any.whl").read_bytes() == b"wheel one"


def test_a_signed_url_per_blob_on_vast_and_none_for_an_unknown_blob() -> None:
    uri = f"gs://pkgs/packages/{'a' * 64}.json"
    o = bootstrap.origin_for(uri, "https://signed/manifest?sig=1", {"b" * 64: "https://signed/b?sig=2"}, env={},
                             token=None)
    assert o.layered and o.blob is not None and o.blob("b" * 64).url == "https://signed/b?sig=2"
    with pytest.raises(PackageFailure, match="package_forbidden"):
        o.blob("c" * 64)
    gce = bootstrap.origin_for(uri, "", {}, env={"STORAGE_EMULATOR_HOST": "http://127.0.0.1:9"}, token=lambda: "t")
    assert gce.blob is not None
    assert gce.blob("b" * 64).url == f"http://127.0.0.1:9/download/storage/v1/b/pkgs/o/blobs%2F{'b' * 64}?alt=media"
    old = bootstrap.origin_for(uri.replace(".json", ".tar.gz"), "", {}, env={}, token=lambda: "t")
    assert not old.layered  # a package published before layers: the single archive


def test_an_unsafe_app_blob_is_refused(tmp_path: Path) -> None:
    import tarfile

    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:
        info = tarfile.TarInfo("../escape.py")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(PackageFailure, match="unsafe path"):
        bootstrap.extract_blob(bad, tmp_path / "out")
    assert not (tmp_path / "escape.py").exists()


def test_uv_comes_out_of_its_wheel_and_installs_offline(tmp_path: Path) -> None:
    import zipfile

    wheel = tmp_path / "uv-0.13.9-py3-none-manylinux_2_17_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("uv-0.13.9.data/scripts/uv", "#!/bin/sh\nexit 0\n")
    uv = bootstrap.uv_from_wheel(wheel, tmp_path / "tools")
    assert uv is not None and uv.stat().st_mode & 0o111
    plan = Installer().plan(tmp_path / "root", {"requirements": ["spotleash[instance]==1"]}, uv)
    assert plan.install[:2] == [str(uv), "pip"] and "--offline" in plan.install and "--no-index" in plan.install
    assert "--no-config" in plan.make_venv and plan.install[-1] == "spotleash[instance]==1"
    assert plan.install_no_deps is None  # nothing to install without its dependencies
    with zipfile.ZipFile(tmp_path / "broken.whl", "w") as z:
        z.writestr("uv-0.13.9.data/scripts/uv", "#!/bin/sh\nexit 3\n")
    assert bootstrap.uv_from_wheel(tmp_path / "broken.whl", tmp_path / "tools") is None  # pip installs then


def test_a_package_published_before_layers_is_read_as_its_single_archive(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "web.py").write_text("print('old')\n")
    from spotleash.wire.package import build_package

    sha, _ = build_package(tmp_path / "old.tar.gz", APP, {"web.py": src / "web.py"}, [], [])
    store = Store({url("manifest"): [404], url("archive"): [(tmp_path / "old.tar.gz").read_bytes()]})
    o = Origin(Source(url("manifest")), lambda s: Source(url(s)), Source(url("archive")))
    installer = RecordingInstaller()
    root, raw, _ = obtain(o, sha, tmp_path / "work", installer, opener=store.open)
    assert store.seen == [url("manifest"), url("archive")] and raw["format"] == 1
    assert (root / "app" / "web.py").read_text() == "print('old')\n" and installer.calls == [(root, None)]


@pytest.mark.parametrize("pip", ["24.0", None])  # uv; without uv: pip --python, or the venv's own pip
def test_spotleash_installs_after_its_instance_list_and_without_its_core(tmp_path: Path, pip: str | None) -> None:
    """``no_deps`` (spotleash itself) goes in a second install with ``--no-deps``, after ``requirements`` (its
    ``instance`` extra's list and the app's): so neither installer pulls the control plane's dependencies."""
    manifest = {"requirements": ["pydantic>=2.10", "numpy"], "no_deps": ["spotleash==1"]}
    uv = tmp_path / "uv" if pip == "24.0" else None
    plan = Installer(pip_version=lambda _p: pip).plan(tmp_path / "root", manifest, uv)
    assert plan.install[-2:] == ["pydantic>=2.10", "numpy"] and "--no-deps" not in plan.install
    assert plan.install_no_deps is not None and plan.install_no_deps[-1] == "spotleash==1"
    assert "--no-deps" in plan.install_no_deps and "--no-index" in plan.install_no_deps
    assert plan.install_no_deps[0] == plan.install[0] and plan.warm is not None  # same installer; the agent warmed
