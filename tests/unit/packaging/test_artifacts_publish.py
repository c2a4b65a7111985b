"""``[[app.artifacts]]`` and ``[app] image_provides`` on the publisher's side: parsing (with what to fix),
the artifact blobs in the manifest (unchanged weights: nothing new to upload), the artifact left out of the
app blob, the user's own path in the local copies' environment, provided requirements not shipped."""

from __future__ import annotations

from pathlib import Path

import pytest

from spotleash.agent.local_copies import local_plan
from spotleash.errors import ConfigError
from spotleash.packaging import app_tree, layers, wheels
from spotleash.packaging.appspec import load_app
from spotleash.wire.package import (
    AppSpec,
    Blob,
    ComponentSpec,
    LayeredManifest,
    artifact_env_name,
    missing_blobs,
)

COMPONENT = """
[[app.components]]
name = "embedder"
command = ["python", "embedder.py"]
port = 18103
local_url = "http://127.0.0.1:18203"
"""


def app_dir(tmp: Path, artifacts: str, extra_app: str = "") -> Path:
    root = tmp / "app"
    root.mkdir(parents=True, exist_ok=True)
    (root / "embedder.py").write_text("print('hi')\n")
    (root / "spotleash.toml").write_text(f'[app]\nname = "ml"\n{extra_app}\n{COMPONENT}\n{artifacts}')
    return root


def model_dir(where: Path) -> Path:
    (where / "tokenizer").mkdir(parents=True)
    (where / "model.safetensors").write_bytes(b"\x00weights" * 1000)
    (where / "tokenizer" / "vocab.txt").write_text("[PAD]\nhello\n")
    return where


def test_an_artifact_outside_the_tree_by_home_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    model = model_dir(tmp_path / "home" / "models" / "mini")
    app = load_app(app_dir(tmp_path, '[[app.artifacts]]\nname = "minilm"\npath = "~/models/mini"\n'), None)
    assert app.artifacts == {"minilm": model.resolve()}
    assert app.artifact_env() == {"SPOTLEASH_ARTIFACT_MINILM": str(model.resolve())}
    assert artifact_env_name("minilm") == "SPOTLEASH_ARTIFACT_MINILM"


def test_a_relative_file_artifact_is_relative_to_the_toml(tmp_path: Path) -> None:
    root = app_dir(tmp_path, '[[app.artifacts]]\nname = "vocab"\npath = "../data/vocab.txt"\n')
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "vocab.txt").write_text("a\n")
    assert load_app(root, None).artifacts == {"vocab": (tmp_path / "data" / "vocab.txt").resolve()}


@pytest.mark.parametrize(("artifacts", "says"), [
    ('[[app.artifacts]]\nname = "m"\npath = "nowhere"\n', r'app.artifacts \("m"\).path: .*nowhere does not exist'),
    ('[[app.artifacts]]\nname = "m"\n', r"app.artifacts\[0\] \(\"m\"\).path: Field required"),
    ('[[app.artifacts]]\nname = "m"\npath = "."\n[[app.artifacts]]\nname = "m"\npath = "."\n',
     r"two artifacts are named 'm'.*SPOTLEASH_ARTIFACT_M"),
    ('[[app.artifacts]]\nname = "Mini-LM"\npath = "."\n', r"app.artifacts\[0\] \(\"Mini-LM\"\).name: String should"),
    ('[[app.artifacts]]\nname = "m"\npath = ""\n', r"app.artifacts\[0\] \(\"m\"\).path: String should have at least"),
    ('[[app.artifacts]]\nname = "m"\npath = "."\nsize = 3\n', r"app.artifacts\[0\] \(\"m\"\).size: Extra inputs"),
])
def test_a_wrong_artifact_fails_at_parse_saying_what_to_fix(tmp_path: Path, artifacts: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        load_app(app_dir(tmp_path, artifacts), None)


@pytest.mark.parametrize(("provides", "says"), [
    ('["torch>=2.4", "Torch==2.5"]', "image_provides names a package twice"),
    ('["git+https://x/y"]', "is not a requirement"),
    ('["torch @ https://x/torch.whl"]', "is not a requirement"),
])
def test_a_wrong_image_provides_fails_at_parse(tmp_path: Path, provides: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        load_app(app_dir(tmp_path, "", f"image_provides = {provides}"), None)


def test_image_provides_reads_markers_and_extras(tmp_path: Path) -> None:
    provides = '["torch>=2.4,<3", "numpy[extra]~=1.26", "triton; platform_system == \\"Linux\\""]'
    spec = load_app(app_dir(tmp_path, "", f"image_provides = {provides}"), None).spec
    assert len(spec.image_provides) == 3


def test_provided_requirements_and_wheels_are_not_shipped(tmp_path: Path) -> None:
    assert wheels.without_provided(["Torch>=2", "numpy", "sentence_transformers"], ["torch>=2.4"]) == \
        ["numpy", "sentence_transformers"]
    assert wheels.wheel_name(Path("Torch_Audio-2.4.0-cp311-cp311-linux_x86_64.whl")) == "torch-audio"


def test_artifact_files_are_blobs_listed_under_the_artifact_and_unchanged_weights_upload_nothing(
        tmp_path: Path) -> None:
    model = model_dir(tmp_path / "model")
    hashes = layers.HashCache(tmp_path / "state" / "hashes.json")
    kind, files = layers.artifact_blobs("minilm", model, hashes)
    assert kind == "dir"
    assert sorted((b.blob.path, b.path) for b in files) == [
        ("model.safetensors", model / "model.safetensors"), ("tokenizer/vocab.txt", model / "tokenizer" / "vocab.txt")]
    assert all(b.blob.kind == "artifact" and b.blob.name == "minilm" for b in files)
    app = load_app(app_dir(tmp_path, f'[[app.artifacts]]\nname = "minilm"\npath = "{model}"\n'), None)
    app_blob = layers.app_blob(app_tree.collect(app.root, app.spec), tmp_path / "blobs")
    m1 = layers.layered_manifest(app.spec, ["x"], [app_blob, *files], {"minilm": kind})
    assert m1.artifacts == {"minilm": "dir"} and [b.path for b in m1.artifact_blobs("minilm")] == \
        ["model.safetensors", "tokenizer/vocab.txt"]
    hashes.save()
    # a republish with the same weights: the same blobs, all already in the bucket
    again = layers.artifact_blobs("minilm", model, layers.HashCache(tmp_path / "state" / "hashes.json"))[1]
    m2 = layers.layered_manifest(app.spec, ["x"], [app_blob, *again], {"minilm": kind})
    assert m2.sha256 == m1.sha256
    assert missing_blobs(m2, {b.sha256: b.size for b in m1.blobs}) == []
    (model / "model.safetensors").write_bytes(b"new weights")  # changed weights: that file only
    changed = layers.artifact_blobs("minilm", model, layers.HashCache(tmp_path / "state" / "hashes.json"))[1]
    m3 = layers.layered_manifest(app.spec, ["x"], [app_blob, *changed], {"minilm": kind})
    assert [b.path for b in missing_blobs(m3, {b.sha256: b.size for b in m1.blobs})] == ["model.safetensors"]


def test_a_file_artifact_is_one_blob_by_its_base_name(tmp_path: Path) -> None:
    (tmp_path / "w.bin").write_bytes(b"w")
    kind, files = layers.artifact_blobs("w", tmp_path / "w.bin", layers.HashCache(tmp_path / "h.json"))
    assert kind == "file" and [b.blob.path for b in files] == ["w.bin"]


def test_the_manifest_refuses_artifact_blobs_it_cannot_place() -> None:
    app = AppSpec(name="ml", components=[ComponentSpec(name="e", command=["x"], port=18103)])
    good = Blob(sha256="a" * 64, size=1, kind="app", name="app.tar.gz")
    art = {"sha256": "b" * 64, "size": 1, "kind": "artifact", "name": "m"}
    with pytest.raises(ValueError, match="unsafe path"):
        Blob.model_validate({**art, "path": "../etc/passwd"})
    with pytest.raises(ValueError, match="names its path"):
        Blob.model_validate(art)
    with pytest.raises(ValueError, match="undeclared artifact"):
        LayeredManifest(app=app, requirements=[], blobs=[good, Blob.model_validate({**art, "path": "x"})])
    with pytest.raises(ValueError, match="exactly one blob"):
        LayeredManifest(app=app, requirements=[], artifacts={"m": "file"}, blobs=[good, Blob.model_validate(
            {**art, "path": "x"}), Blob.model_validate({**art, "path": "y"})])


def test_an_artifact_inside_the_app_tree_is_left_out_of_the_app_blob(tmp_path: Path) -> None:
    root = app_dir(tmp_path, '[[app.artifacts]]\nname = "minilm"\npath = "models/mini"\n'
                             '[[app.artifacts]]\nname = "vocab"\npath = "vocab.txt"\n')
    model_dir(root / "models" / "mini")
    (root / "models" / "README").write_text("kept\n")
    (root / "vocab.txt").write_text("a\n")
    app = load_app(root, None)
    tree = app_tree.collect(app.root, app.spec, leave_out=list(app.artifacts.values()))
    assert sorted(tree.files) == ["embedder.py", "models/README", "spotleash.toml"]
    assert "models/mini/model.safetensors" in app_tree.collect(app.root, app.spec).files  # without: packed twice


def test_a_local_copy_sees_the_users_own_path(tmp_path: Path) -> None:
    model = model_dir(tmp_path / "model")
    app = load_app(app_dir(tmp_path, f'[[app.artifacts]]\nname = "minilm"\npath = "{model}"\n'), None)
    (launch,) = local_plan(app.spec, ["embedder"], app.artifact_env()).launches
    assert launch.env["SPOTLEASH_ARTIFACT_MINILM"] == str(model.resolve())
