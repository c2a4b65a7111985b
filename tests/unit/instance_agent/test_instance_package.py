"""Fetch and verify on the instance: download with retries, hash before anything is kept or extracted,
unsafe archives refused, sources per provider."""

from __future__ import annotations

import ast
import email.message
import gzip
import hashlib
import io
import json
import sys
import tarfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from spotleash.instance_agent import bootstrap
from spotleash.instance_agent.bootstrap import Installer, PackageFailure, Source, fetch, source_for
from spotleash.instance_agent.package import launches
from spotleash.wire import agent_config as agent_config
from spotleash.wire import package as package_format
from spotleash.wire.events import Heartbeat, parse_event
from spotleash.wire.package import AppSpec, ComponentSpec, build_package

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


# ------------------------------------------------------------------ how the venv is made and installed into


@pytest.mark.parametrize(("version", "has"), [
    (None, False), ("", False), ("junk", False), ("9.0.1", False), ("22", False), ("22.2.2", False),
    ("22.3", True), ("22.3b1", True), ("23.0.1", True), ("26.3", True), ("100.0", True),
])
def test_only_a_pip_of_22_3_or_later_installs_into_another_venv(version: str | None, has: bool) -> None:
    assert bootstrap.has_python_option(version) is has


def _plan(pip_version: str | None) -> tuple[bootstrap.InstallPlan, list[str]]:
    asked: list[str] = []

    def probe(python: str) -> str | None:
        asked.append(python)
        return pip_version

    plan = Installer(python="/usr/bin/python3", pip_version=probe).plan(Path("/w/pkg"), {"requirements": ["a", "b>=2"]})
    return plan, asked


def test_a_bootstrap_python_with_a_recent_pip_installs_into_a_venv_without_pip() -> None:
    plan, asked = _plan("23.0.1")
    assert asked == ["/usr/bin/python3"]
    assert plan.make_venv == ["/usr/bin/python3", "-m", "venv", "--without-pip", "/w/pkg/venv"]
    assert plan.install == ["/usr/bin/python3", "-m", "pip", "--python", "/w/pkg/venv/bin/python", "install",
                            "--no-index", "--no-compile", "--find-links", "/w/pkg/wheels", "a", "b>=2"]
    assert "pip 23.0.1 of /usr/bin/python3" in plan.path and "--python" in plan.path


@pytest.mark.parametrize(("version", "said"), [(None, "has no pip"), ("22.2.2", "has pip 22.2.2")])
def test_a_bootstrap_python_without_a_recent_pip_gives_the_venv_its_own(version: str | None, said: str) -> None:
    plan, _ = _plan(version)
    assert plan.make_venv == ["/usr/bin/python3", "-m", "venv", "/w/pkg/venv"]  # with ensurepip
    assert plan.install == ["/w/pkg/venv/bin/python", "-m", "pip", "install", "--no-index", "--no-compile",
                            "--find-links", "/w/pkg/wheels", "a", "b>=2"]
    assert said in plan.path and "ensurepip" in plan.path and "22.3+" in plan.path


@pytest.mark.parametrize(("requirements", "warm"), [
    (["spotleash[instance]==0.1.0", "numpy>=1.26"], True),  # what a format-1 `spotleash publish` wrote
    (["Spotleash >= 0.1"], True),
    (["a", "b>=2"], False),  # no agent in the package: nothing to import ahead of time
    (["spotleash-extras==1"], False),
])
def test_the_agent_s_imports_are_compiled_while_the_bootstrap_still_beats(requirements: list[str], warm: bool) -> None:
    plan = Installer(python="/usr/bin/python3", pip_version=lambda _p: "23.0.1").plan(
        Path("/w/pkg"), {"requirements": requirements})
    want = ["/w/pkg/venv/bin/python", "-c", "import spotleash.instance_agent.__main__"] if warm else None
    assert plan.warm == want
    assert bootstrap.warm_command("/v/bin/python", {"requirements": requirements}) == (
        None if want is None else ["/v/bin/python", *want[1:]])


# ------------------------------------------------------------------ download


class _Reply:
    def __init__(self, body: bytes) -> None:
        self._body = io.BytesIO(body)
        self.status = 200

    def read(self, n: int = -1) -> bytes:
        return self._body.read(n)

    def __enter__(self) -> _Reply:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _opener(replies: list[int | bytes | Exception], seen: list[urllib.request.Request]) -> bootstrap.Opener:
    """urlopen's shape: an int is an HTTP error status, bytes a 200 body, an exception is raised."""

    def open_(req: urllib.request.Request, timeout: float) -> Any:
        seen.append(req)
        r = replies.pop(0) if len(replies) > 1 else replies[0]
        if isinstance(r, Exception):
            raise r
        if isinstance(r, int):
            raise urllib.error.HTTPError(req.full_url, r, "error", email.message.Message(), io.BytesIO(b""))
        return _Reply(r)

    return open_


def test_download_retries_transient_errors_then_keeps_the_verified_bytes(tmp_path: Path) -> None:
    body = b"package bytes"
    sha = hashlib.sha256(body).hexdigest()
    seen: list[urllib.request.Request] = []
    sleeps: list[float] = []
    opener = _opener([503, ConnectionResetError("reset"), urllib.error.URLError("dns"), 429, body], seen)
    path = fetch(Source("http://gcs/o", token=lambda: "tok-1"), sha, tmp_path, opener=opener, sleep=sleeps.append)
    assert path.read_bytes() == body and path.name == f"{sha}.tar.gz"
    assert sleeps == [1.0, 2.0, 4.0, 8.0] and len(seen) == 5
    assert seen[0].get_header("Authorization") == "Bearer tok-1"
    assert list(tmp_path.iterdir()) == [path]  # no .part left


def test_cached_archive_is_reused_and_a_damaged_one_fetched_again(tmp_path: Path) -> None:
    body = b"package bytes"
    sha = hashlib.sha256(body).hexdigest()
    (tmp_path / f"{sha}.tar.gz").write_bytes(body)
    seen: list[urllib.request.Request] = []
    fetch(Source("http://gcs/o"), sha, tmp_path, opener=_opener([500], seen))
    assert seen == []
    (tmp_path / f"{sha}.tar.gz").write_bytes(b"truncat")
    fetch(Source("http://gcs/o"), sha, tmp_path, opener=_opener([body], seen))
    assert len(seen) == 1 and (tmp_path / f"{sha}.tar.gz").read_bytes() == body


def test_wrong_bytes_are_not_kept(tmp_path: Path) -> None:
    with pytest.raises(PackageFailure) as e:
        fetch(Source("http://gcs/o?X-Goog-Signature=s3cret"), SHA_A, tmp_path, opener=_opener([b"other"], []))
    assert e.value.reason == "package_unverified" and list(tmp_path.iterdir()) == []
    assert "s3cret" not in str(e.value)  # a signed URL's signature never reaches a message


@pytest.mark.parametrize(("status", "reason"), [(404, "package_missing"), (403, "package_forbidden"),
                                                (401, "package_forbidden"), (400, "package_unavailable")])
def test_permanent_answers_are_not_retried(tmp_path: Path, status: int, reason: str) -> None:
    seen: list[urllib.request.Request] = []
    with pytest.raises(PackageFailure) as e:
        fetch(Source("http://gcs/o"), SHA_A, tmp_path, opener=_opener([status], seen))
    assert e.value.reason == reason and len(seen) == 1


def test_unreachable_storage_gives_up_within_its_budget(tmp_path: Path) -> None:
    sleeps: list[float] = []
    with pytest.raises(PackageFailure) as e:
        fetch(Source("http://gcs/o"), SHA_A, tmp_path, opener=_opener([ConnectionRefusedError("down")], []),
              retry_budget_s=10.0, sleep=sleeps.append, clock=lambda: sum(sleeps))
    assert e.value.reason == "package_unavailable" and "ConnectionRefusedError" in e.value.detail
    assert sleeps and sum(sleeps) <= 10.0


def test_a_pinned_hash_that_is_not_a_hash_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PackageFailure) as e:
        fetch(Source("http://gcs/o"), "../../etc", tmp_path, opener=_opener([b""], []))
    assert e.value.reason == "package_unverified"


def test_the_metadata_token_is_fetched_per_attempt() -> None:
    seen: list[urllib.request.Request] = []
    token = bootstrap.metadata_token({"GCE_METADATA_HOST": "md:80"},
                                     _opener([json.dumps({"access_token": "ya29.x"}).encode()], seen))
    assert token() == "ya29.x"
    assert seen[0].full_url == "http://md:80/computeMetadata/v1/instance/service-accounts/default/token"
    assert seen[0].get_header("Metadata-flavor") == "Google"
    with pytest.raises(PackageFailure, match="package_forbidden: the VM has no service account"):
        bootstrap.metadata_token({}, _opener([404], []))()


# ------------------------------------------------------------------ where the bytes come from


def test_sources() -> None:
    uri = f"gs://pkgs/packages/{SHA_A}.tar.gz"
    emu = source_for(uri, "", env={"STORAGE_EMULATOR_HOST": "http://127.0.0.1:4443"}, token=None)
    assert emu.url == f"http://127.0.0.1:4443/download/storage/v1/b/pkgs/o/packages%2F{SHA_A}.tar.gz?alt=media"
    assert emu.token is None
    with_token = source_for(uri, "", env={"STORAGE_EMULATOR_HOST": "http://127.0.0.1:4443"}, token=lambda: "t")
    assert with_token.token is not None and with_token.token() == "t"  # a fake VM sends its token as a real one
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
    assert bootstrap.media_url("http://h/", "b", "a b/c") == "http://h/download/storage/v1/b/b/o/a%20b%2Fc?alt=media"


# ------------------------------------------------------------------ the bootstrap's contract with the rest


def test_bootstrap_imports_only_the_standard_library() -> None:
    tree = ast.parse(Path(bootstrap.__file__).read_text())
    roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    roots |= {n.module.split(".")[0] for n in ast.walk(tree)
              if isinstance(n, ast.ImportFrom) and n.module and n.level == 0}
    assert roots - {"__future__"} <= set(sys.stdlib_module_names), roots - set(sys.stdlib_module_names)


def test_bootstrap_names_match_their_one_definition() -> None:
    assert (bootstrap.CONFIG_KEY, bootstrap.TOKEN_KEY) == (agent_config.CONFIG_KEY, agent_config.TOKEN_KEY)
    assert (bootstrap.CONFIG_ENV, bootstrap.TOKEN_ENV) == (agent_config.CONFIG_ENV, agent_config.TOKEN_ENV)
    assert bootstrap.MANIFEST_NAME == package_format.MANIFEST_NAME
    assert bootstrap.FORMAT_VERSION == package_format.FORMAT_VERSION


def test_bootstrap_verifies_what_publish_builds(tmp_path: Path) -> None:
    archive, sha = _package(tmp_path)
    assert bootstrap.verify_archive(archive, sha) == package_format.verify_archive(archive, sha)


def test_bootstrap_heartbeats_are_heartbeats() -> None:
    cfg = {"lease_id": "l-1", "instance_id": "sl-1"}
    beat = parse_event(bootstrap.heartbeat_body(cfg, {"web": {"state": "starting"}}, None), Heartbeat)
    assert isinstance(beat, Heartbeat) and beat.components["web"].state == "starting"
    failed = parse_event(bootstrap.heartbeat_body(
        cfg, {"web": {"state": "failing", "error": "package_missing: gone"}},
        {"reason": "package_missing", "detail": "gone"}), Heartbeat)
    assert isinstance(failed, Heartbeat) and failed.failure is not None and failed.failure.reason == "package_missing"


def test_bootstrap_heartbeat_answers() -> None:
    cfg = {"heartbeat_url": "http://cp/hb", "lease_id": "l", "instance_id": "i"}
    seen: list[urllib.request.Request] = []
    body = bootstrap.heartbeat_body(cfg, {}, None)
    assert bootstrap.send_heartbeat(cfg, "tok", body, _opener([b'{"action":"stop"}'], seen)) == "stop"
    assert seen[0].get_header("Authorization") == "Bearer tok" and seen[0].data == body
    assert bootstrap.send_heartbeat(cfg, "tok", body, _opener([401], [])) == "stop"
    assert bootstrap.send_heartbeat(cfg, "tok", body, _opener([503], [])) is None
    assert bootstrap.send_heartbeat(cfg, "tok", body, _opener([OSError("down")], [])) is None
    assert bootstrap.send_heartbeat({}, "tok", body, _opener([b"{}"], [])) is None  # no URL: nothing to send


def test_extract_checks_each_member_again_as_it_writes(tmp_path: Path) -> None:
    archive, sha = _package(tmp_path)
    manifest = bootstrap.verify_archive(archive, sha)
    changed = {**manifest["files"], "app/web.py": "0" * 64}  # as if the file changed after verify
    with pytest.raises(PackageFailure, match="changed since it was verified"):
        bootstrap.extract_archive(archive, tmp_path / "x", changed)
    with pytest.raises(PackageFailure, match="not in the manifest"):
        bootstrap.extract_archive(archive, tmp_path / "y", {})
    evil = tmp_path / "evil.tar.gz"
    _raw_targz(evil, [tarfile.TarInfo("../escaped.txt")])
    with pytest.raises(PackageFailure, match="unsafe path"):
        bootstrap.extract_archive(evil, tmp_path / "z", {"../escaped.txt": "x"})
    assert not (tmp_path / "escaped.txt").exists()
    ok = tmp_path / "ok"
    bootstrap.extract_archive(archive, ok, manifest["files"])
    assert (ok / "app" / "web.py").read_text() == "print('hi')\n" and (ok / "manifest.json").exists()
    assert (ok / "app" / "web.py").stat().st_mode & 0o777 == 0o644


def test_only_gpu_components_see_the_box_s_gpus(tmp_path: Path) -> None:
    _, manifest = build_package(tmp_path / "p.tar.gz", _app(), {}, [], [])
    web, job = launches(manifest, [])
    assert (web.sees_gpus, job.sees_gpus) == (False, True)
    box = {"PATH": "/usr/bin", "CUDA_VISIBLE_DEVICES": "0,1"}
    assert job.process_env(box, 18102) == {**box, "PORT": "18102"}  # the box's GPUs, as the box sets them
    hidden = web.process_env(box, 18101)
    assert hidden["CUDA_VISIBLE_DEVICES"] == "" and hidden["PORT"] == "18101" and hidden["MODE"] == "x"
    assert web.process_env({"PATH": "/usr/bin"}, 1)["CUDA_VISIBLE_DEVICES"] == ""  # hidden on any box
    assert "CUDA_VISIBLE_DEVICES" not in job.process_env({"PATH": "/usr/bin"}, 1)  # unset stays unset: all GPUs


def test_a_package_that_marks_no_gpu_component_hides_no_gpu(tmp_path: Path) -> None:
    app = AppSpec(name="demo", components=[ComponentSpec(name="web", command=["python", "web.py"], port=18101),
                                           ComponentSpec(name="job", command=["python", "job.py"], port=18102)])
    _, manifest = build_package(tmp_path / "p.tar.gz", app, {}, [], [])
    box = {"CUDA_VISIBLE_DEVICES": "0"}
    assert [x.process_env(box, 1)["CUDA_VISIBLE_DEVICES"] for x in launches(manifest, [])] == ["0", "0"]
