"""Artifacts and ``image_provides`` on the instance: artifact blobs fetched with the others, verified, laid out
under ``<root>/artifacts/<name>`` and named to every component in ``SPOTLEASH_ARTIFACT_<NAME>``; never packed
into a snapshot; provided requirements checked against what the venv sees of the image, with a clear reason."""

from __future__ import annotations

import hashlib
import json
import sys
import tarfile
from pathlib import Path

import pytest
import zstandard
from test_layered_fetch import RecordingInstaller, Store, layered, origin, replies  # type: ignore[import-not-found]

from spotleash.instance_agent import bootstrap
from spotleash.instance_agent.bootstrap import Installer, PackageFailure, obtain
from spotleash.instance_agent.environment import component_env
from spotleash.instance_agent.package import prepared
from spotleash.instance_agent.snapshot.packing import pack
from spotleash.wire.package import AppSpec, Blob, ComponentSpec, LayeredManifest

WEIGHTS, VOCAB, ONE = b"\x00weights" * 5000, b"[PAD]\nhello\n", b"a single file"


def with_artifacts(tmp: Path) -> tuple[LayeredManifest, dict[str, bytes]]:
    base, blobs = layered(tmp)
    extra = {hashlib.sha256(d).hexdigest(): d for d in (WEIGHTS, VOCAB, ONE)}
    sha = {d: hashlib.sha256(d).hexdigest() for d in (WEIGHTS, VOCAB, ONE)}
    m = LayeredManifest(app=base.app, requirements=base.requirements, artifacts={"minilm": "dir", "vocab": "file"},
                        blobs=[*base.blobs,
                               Blob(sha256=sha[WEIGHTS], size=len(WEIGHTS), kind="artifact", name="minilm",
                                    path="model.safetensors"),
                               Blob(sha256=sha[VOCAB], size=len(VOCAB), kind="artifact", name="minilm",
                                    path="tokenizer/vocab.txt"),
                               Blob(sha256=sha[ONE], size=len(ONE), kind="artifact", name="vocab", path="v.txt")])
    return m, {**blobs, **extra}


def test_artifacts_are_fetched_verified_laid_out_and_named_to_the_components(tmp_path: Path) -> None:
    m, blobs = with_artifacts(tmp_path)
    store = Store(replies(m, blobs))
    root, raw, _ = obtain(origin(), m.sha256, tmp_path / "work", RecordingInstaller(), opener=store.open)
    assert sorted(store.seen) == sorted([bootstrap_url("manifest"), *(bootstrap_url(s) for s in blobs)])
    env = prepared(root, raw).artifact_env()
    assert env == {"SPOTLEASH_ARTIFACT_MINILM": str(root / "artifacts" / "minilm"),
                   "SPOTLEASH_ARTIFACT_VOCAB": str(root / "artifacts" / "vocab" / "v.txt")}
    model = Path(env["SPOTLEASH_ARTIFACT_MINILM"])
    assert (model / "model.safetensors").read_bytes() == WEIGHTS
    assert (model / "tokenizer" / "vocab.txt").read_bytes() == VOCAB
    assert Path(env["SPOTLEASH_ARTIFACT_VOCAB"]).read_bytes() == ONE
    # the same bytes as the verified cache, not a second copy
    assert (model / "model.safetensors").stat().st_ino == (tmp_path / "work" / "blobs" / hashlib.sha256(
        WEIGHTS).hexdigest()).stat().st_ino
    full = component_env({"PATH": "/bin", "SPOTLEASH_HEARTBEAT_TOKEN": "t"}, root / "venv", "i-1",
                         artifacts=prepared(root, raw).artifact_env())
    assert full["SPOTLEASH_ARTIFACT_MINILM"] == str(model) and "SPOTLEASH_HEARTBEAT_TOKEN" not in full


def bootstrap_url(name: str) -> str:
    return f"http://gcs/{name}"


def test_an_artifact_blob_whose_bytes_do_not_match_is_never_laid_out(tmp_path: Path) -> None:
    m, blobs = with_artifacts(tmp_path)
    store = Store(replies(m, blobs, **{hashlib.sha256(WEIGHTS).hexdigest(): [b"tampered weights"]}))
    with pytest.raises(PackageFailure, match=r"package_unverified: sha256 of .* \(blob minilm/model.safetensors\)"):
        obtain(origin(), m.sha256, tmp_path / "work", RecordingInstaller(), opener=store.open)
    assert not list((tmp_path / "work").glob("pkg-*/artifacts"))


@pytest.mark.parametrize("bad", [
    {"kind": "artifact", "name": "minilm", "path": "../../escape"},
    {"kind": "artifact", "name": "ghost", "path": "x"},
    {"kind": "artifact", "name": "minilm"},
    {"kind": "wheel", "name": "x-1-py3-none-any.whl", "path": "x"},
])
def test_the_bootstrap_refuses_a_malformed_artifact_blob(bad: dict[str, str]) -> None:
    manifest = {"format": 2, "artifacts": {"minilm": "dir"}, "blobs": [
        {"sha256": "a" * 64, "size": 1, "kind": "app", "name": "app.tar.gz", "path": None},
        {"sha256": "b" * 64, "size": 1, "path": None, **bad}]}
    with pytest.raises(PackageFailure, match="package_unverified"):
        bootstrap.parse_layered(json.dumps(manifest).encode())


def test_artifacts_are_not_packed_into_a_snapshot(tmp_path: Path) -> None:
    state = tmp_path / "workspace"
    (state / "work" / "pkg-1" / "artifacts" / "minilm").mkdir(parents=True)
    (state / "work" / "pkg-1" / "artifacts" / "minilm" / "model.safetensors").write_bytes(WEIGHTS)
    (state / "work" / "blobs").mkdir()
    (state / "work" / "blobs" / ("c" * 64)).write_bytes(WEIGHTS)
    (state / "notes.txt").write_text("mine\n")
    packed = pack([state], tmp_path / "spool", leave_out=[state / "work" / "pkg-1" / "artifacts",
                                                         state / "work" / "blobs"])
    names = []
    for part in packed.parts:
        with zstandard.ZstdDecompressor().stream_reader(part.path.open("rb")) as z, tarfile.open(fileobj=z,
                                                                                                  mode="r|") as t:
            names += [m.name for m in t]
    assert "r0/notes.txt" in names and "r0/work/pkg-1" in names
    assert not [n for n in names if "artifacts" in n or "blobs" in n]
    assert packed.raw_bytes == len("mine\n")


# ------------------------------------------------------------------ image_provides


@pytest.mark.parametrize(("version", "spec", "ok"), [
    ("2.4.1+cu121", ">=2.4", True), ("2.3.9", ">=2.4", False), ("2.4.0", ">=2.4,<3", True), ("3.0", ">=2.4,<3", False),
    ("2.4.7", "==2.4.*", True), ("2.5.0", "==2.4.*", False), ("2.5.0", "!=2.4.*", True), ("1.26.4", "~=1.26", True),
    ("2.0.0", "~=1.26", False), ("1.0", "", True), ("2.4", "==2.4.0", True), ("2.4.0", "!=2.4", False),
    ("1!2.0", ">1.9", True), ("2.4.0rc1", ">=2.4", True), ("2.4", "===2.4", True), ("2.4.0", "===2.4", False),
])
def test_the_stdlib_fallback_compares_release_numbers(version: str, spec: str, ok: bool) -> None:
    assert bootstrap.version_satisfies(version, spec) is ok


def test_a_clause_the_fallback_cannot_read_is_an_error() -> None:
    with pytest.raises(ValueError, match="cannot read"):
        bootstrap.version_satisfies("1.0", "=>1")


@pytest.mark.parametrize("with_packaging", [True, False])
def test_unmet_requirements_name_what_the_image_has(with_packaging: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not with_packaging:  # the image's python without packaging: the standard-library comparison
        monkeypatch.setitem(sys.modules, "packaging.requirements", None)
    installed = {"torch": "2.3.1", "numpy": "1.26.4", "triton": None}
    got = bootstrap.unmet_provided(["torch>=2.4", "numpy~=1.26", "triton", "absent[x]>=1"], installed)
    assert got == ["torch>=2.4 (the image has torch 2.3.1)", "triton (the image has no triton)",
                   "absent[x]>=1 (the image has no absent)"]


def test_a_marker_that_does_not_apply_is_not_checked() -> None:
    assert bootstrap.unmet_provided(['winonly>=1; sys_platform == "win32"'], {}) == []


def test_the_check_asks_the_python_itself_and_fails_with_a_clear_reason() -> None:
    py = sys.executable  # has pydantic and packaging; has no torch
    manifest = {"app": {"image_provides": ["pydantic>=2", "packaging"]}}
    bootstrap.check_image_provides(py, manifest)  # met: no error
    with pytest.raises(PackageFailure) as e:
        bootstrap.check_image_provides(py, {"app": {"image_provides": ["pydantic>=2", "torch>=2.4"]}})
    assert e.value.reason == "image_lacks_requirement"
    assert "torch>=2.4 (the image has no torch)" in e.value.detail and "pydantic" not in e.value.detail


def test_a_package_relying_on_the_image_gets_its_packages_and_installs_with_pip(tmp_path: Path) -> None:
    uv = tmp_path / "uv"
    manifest = {"requirements": ["spotleash[instance]==1"], "app": {"image_provides": ["torch>=2.4"]}}
    installer = Installer(pip_version=lambda _p: "24.0")
    plan = installer.plan(tmp_path / "root", manifest, uv)
    assert "--system-site-packages" in plan.make_venv and plan.install[:3] == [installer.python, "-m", "pip"]
    plain = installer.plan(tmp_path / "root", {"requirements": ["x"]}, uv)
    assert "--system-site-packages" not in plain.make_venv and plain.install[0] == str(uv)
    assert "--system-site-packages" in bootstrap.uv_venv_command(uv, "py", tmp_path, tmp_path, system_site=True)


def test_components_see_no_artifact_variable_when_there_is_none(tmp_path: Path) -> None:
    m, blobs = layered(tmp_path)
    root, raw, _ = obtain(origin(), m.sha256, tmp_path / "work", RecordingInstaller(), opener=Store(
        replies(m, blobs)).open)
    assert prepared(root, raw).artifact_env() == {} and prepared(root, raw).artifact_dirs == []
    assert AppSpec(name="x", components=[ComponentSpec(name="c", command=["x"], port=18000)]).artifacts == []
