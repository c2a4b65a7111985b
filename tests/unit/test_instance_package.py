"""Fetch and verify on the instance: download with retries, hash before anything is kept or extracted,
unsafe archives refused, sources per provider."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import httpx
import pytest

from spotleash.instance_agent import package
from spotleash.instance_agent.package import Installer, PackageFailure, Source, fetch, launches, source_for
from spotleash.package_format import AppSpec, ComponentSpec, build_package

SHA_A = "a" * 64


def _app() -> AppSpec:
    return AppSpec(name="demo", components=[
        ComponentSpec(name="web", command=["python", "-m", "web"], port=18101, health_path="/healthz",
                      env={"MODE": "x"}, start_timeout_s=7),
        ComponentSpec(name="gpu-job", command=["python", "job.py"], port=18102, gpu=True),
    ])


def _package(tmp: Path) -> tuple[Path, str]:
    src = tmp / "src"
    src.mkdir()
    (src / "web.py").write_text("print('hi')\n")
    out = tmp / "pkg.tar.gz"
    sha, _ = build_package(out, _app(), {"web.py": src / "web.py"}, [], [])
    return out, sha


def _raw_targz(path: Path, members: list[tarfile.TarInfo], data: bytes = b"x") -> str:
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for m in members:
            if m.isreg():
                m.size = len(data)
                tar.addfile(m, io.BytesIO(data))
            else:
                tar.addfile(m)
    path.write_bytes(raw.getvalue())
    return hashlib.sha256(raw.getvalue()).hexdigest()


# ------------------------------------------------------------------ verify before extract


def test_wrong_hash_is_refused_and_nothing_is_extracted(tmp_path: Path) -> None:
    archive, sha = _package(tmp_path)
    work = tmp_path / "work"
    with pytest.raises(PackageFailure) as e:
        Installer().prepare(archive, SHA_A, work)
    assert e.value.reason == "package_unverified" and "sha256 mismatch" in e.value.detail
    assert not work.exists() or list(work.iterdir()) == []


def test_member_changed_after_the_manifest_is_refused(tmp_path: Path) -> None:
    archive, _ = _package(tmp_path)
    with tarfile.open(archive) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]  # type: ignore[union-attr]
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for m, data in members:
            if m.name == "app/web.py":
                data = b"import os; os.system('curl evil')\n"
                m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    archive.write_bytes(raw.getvalue())
    sha = hashlib.sha256(raw.getvalue()).hexdigest()  # the launch pinned the tampered archive's hash
    work = tmp_path / "work"
    with pytest.raises(PackageFailure) as e:
        Installer().prepare(archive, sha, work)
    assert e.value.reason == "package_unverified" and "app/web.py" in e.value.detail
    assert not work.exists()


@pytest.mark.parametrize("member", [
    tarfile.TarInfo("../escaped.txt"),
    tarfile.TarInfo("/tmp/absolute.txt"),
    tarfile.TarInfo("app/../../escaped.txt"),
])
def test_path_traversal_is_refused(tmp_path: Path, member: tarfile.TarInfo) -> None:
    archive = tmp_path / "evil.tar.gz"
    sha = _raw_targz(archive, [member])
    work = tmp_path / "deep" / "work"
    with pytest.raises(PackageFailure) as e:
        Installer().prepare(archive, sha, work)
    assert e.value.reason == "package_unverified" and "unsafe path" in e.value.detail
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "deep" / "escaped.txt").exists()
    assert not work.exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_links_are_refused(tmp_path: Path, kind: bytes) -> None:
    link = tarfile.TarInfo("app/passwd")
    link.type, link.linkname = kind, "/etc/passwd"
    archive = tmp_path / "link.tar.gz"
    sha = _raw_targz(archive, [link])
    with pytest.raises(PackageFailure) as e:
        Installer().prepare(archive, sha, tmp_path / "work")
    assert e.value.reason == "package_unverified" and "not a regular file" in e.value.detail


def test_not_an_archive_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"<html>captive portal</html>")
    with pytest.raises(PackageFailure) as e:
        Installer().prepare(junk, hashlib.sha256(junk.read_bytes()).hexdigest(), tmp_path / "work")
    assert e.value.reason == "package_unverified"


# ------------------------------------------------------------------ download


def _client(replies: list[httpx.Response | Exception], seen: list[httpx.Request]) -> httpx.Client:
    def reply(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        r = replies.pop(0) if len(replies) > 1 else replies[0]
        if isinstance(r, Exception):
            raise r
        return r

    return httpx.Client(transport=httpx.MockTransport(reply))


def test_download_retries_transient_errors_then_keeps_the_verified_bytes(tmp_path: Path) -> None:
    body = b"package bytes"
    sha = hashlib.sha256(body).hexdigest()
    seen: list[httpx.Request] = []
    http = _client([httpx.Response(503), httpx.ConnectError("reset"), httpx.Response(429), httpx.Response(200, content=body)],
                   seen)
    sleeps: list[float] = []
    path = fetch(http, Source("http://gcs/o", token=lambda: "tok-1"), sha, tmp_path, sleep=sleeps.append)
    assert path.read_bytes() == body and path.name == f"{sha}.tar.gz"
    assert sleeps == [1.0, 2.0, 4.0] and len(seen) == 4
    assert seen[0].headers["Authorization"] == "Bearer tok-1"
    assert list(tmp_path.iterdir()) == [path]  # no .part left


def test_cached_archive_is_reused_and_a_damaged_one_fetched_again(tmp_path: Path) -> None:
    body = b"package bytes"
    sha = hashlib.sha256(body).hexdigest()
    (tmp_path / f"{sha}.tar.gz").write_bytes(body)
    seen: list[httpx.Request] = []
    fetch(_client([httpx.Response(500)], seen), Source("http://gcs/o"), sha, tmp_path)
    assert seen == []
    (tmp_path / f"{sha}.tar.gz").write_bytes(b"truncat")
    fetch(_client([httpx.Response(200, content=body)], seen), Source("http://gcs/o"), sha, tmp_path)
    assert len(seen) == 1 and (tmp_path / f"{sha}.tar.gz").read_bytes() == body


def test_wrong_bytes_are_not_kept(tmp_path: Path) -> None:
    with pytest.raises(PackageFailure) as e:
        fetch(_client([httpx.Response(200, content=b"other")], []), Source("http://gcs/o?X-Goog-Signature=s3cret"),
              SHA_A, tmp_path)
    assert e.value.reason == "package_unverified" and list(tmp_path.iterdir()) == []
    assert "s3cret" not in str(e.value)  # a signed URL's signature never reaches a message


@pytest.mark.parametrize(("status", "reason"), [(404, "package_missing"), (403, "package_forbidden"),
                                                (401, "package_forbidden"), (400, "package_unavailable")])
def test_permanent_answers_are_not_retried(tmp_path: Path, status: int, reason: str) -> None:
    seen: list[httpx.Request] = []
    with pytest.raises(PackageFailure) as e:
        fetch(_client([httpx.Response(status)], seen), Source("http://gcs/o"), SHA_A, tmp_path)
    assert e.value.reason == reason and len(seen) == 1


def test_unreachable_storage_gives_up_within_its_budget(tmp_path: Path) -> None:
    sleeps: list[float] = []
    with pytest.raises(PackageFailure) as e:
        fetch(_client([httpx.ConnectError("down")], []), Source("http://gcs/o"), SHA_A, tmp_path,
              retry_budget_s=10.0, sleep=sleeps.append, clock=lambda: sum(sleeps))
    assert e.value.reason == "package_unavailable" and "ConnectError" in e.value.detail
    assert sleeps and sum(sleeps) <= 10.0


def test_a_pinned_hash_that_is_not_a_hash_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PackageFailure) as e:
        fetch(_client([httpx.Response(200)], []), Source("http://gcs/o"), "../../etc", tmp_path)
    assert e.value.reason == "package_unverified"


# ------------------------------------------------------------------ where the bytes come from


def test_sources() -> None:
    uri = f"gs://pkgs/packages/{SHA_A}.tar.gz"
    emu = source_for(uri, "", env={"STORAGE_EMULATOR_HOST": "http://127.0.0.1:4443"}, token=None)
    assert emu.url == f"http://127.0.0.1:4443/download/storage/v1/b/pkgs/o/packages%2F{SHA_A}.tar.gz?alt=media"
    assert emu.token is None
    assert source_for(uri, "", env={"STORAGE_EMULATOR_HOST": "127.0.0.1:4443"}, token=None).url.startswith(
        "http://127.0.0.1:4443/")
    gce = source_for(uri, "", env={}, token=lambda: "t")
    assert gce.url.startswith("https://storage.googleapis.com/download/storage/v1/b/pkgs/o/") and gce.token
    signed = source_for(uri, "https://storage.googleapis.com/pkgs/x?X-Goog-Signature=abc", env={}, token=None)
    assert signed.token is None and signed.safe_url == "https://storage.googleapis.com/pkgs/x"
    with pytest.raises(PackageFailure, match="package_forbidden"):
        source_for(uri, "", env={}, token=None)
    with pytest.raises(PackageFailure, match="package_missing"):
        source_for("https://example.com/x", "", env={}, token=None)


def test_launches_pick_the_components_the_instance_was_launched_for(tmp_path: Path) -> None:
    _, manifest = build_package(tmp_path / "p.tar.gz", _app(), {}, [], [])
    web = launches(manifest, ["web"])
    assert [(x.name, x.argv, x.port, x.health_path, x.timeout_s, dict(x.env)) for x in web] == [
        ("web", ("python", "-m", "web"), 18101, "/healthz", 7.0, {"MODE": "x"})]
    assert [x.name for x in launches(manifest, [])] == ["web", "gpu-job"]
    with pytest.raises(PackageFailure) as e:
        launches(manifest, ["web", "vision"])
    assert e.value.reason == "component_unknown" and "vision" in e.value.detail


def test_media_url_quotes_names() -> None:
    assert package.media_url("http://h/", "b", "a b/c") == "http://h/download/storage/v1/b/b/o/a%20b%2Fc?alt=media"
