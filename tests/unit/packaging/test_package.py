"""The package: spotleash.toml validation, the app tree's ignore and secret rules, the deterministic archive."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from spotleash.config import CONFIG_FILE_VAR, load_settings
from spotleash.errors import BadInput, ConfigError
from spotleash.packaging.app_tree import SecretRefused, collect
from spotleash.packaging.appspec import load_app, parse_app, settings_values
from spotleash.wire.package import (
    MANIFEST_NAME,
    AppSpec,
    Manifest,
    PackageError,
    build_package,
    extract_archive,
    package_object,
    parse_pointer,
    pointer_object,
    pointer_text,
    verify_archive,
)

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "thumbs"

TOML = """
project = "p1"

[app]
name = "demo"
requirements = ["numpy"]

[[app.components]]
name = "web"
command = ["python", "web.py"]
port = 8201
ram_gb = 3

[[app.components]]
name = "gpu-worker"
command = ["python", "worker.py"]
port = 8202
gpu = true
ram_gb = 16
"""


def spec(**kw: object) -> AppSpec:
    base: dict[str, object] = {"name": "demo", "components": [{"name": "web", "command": ["python", "w.py"],
                                                                "port": 8201}]}
    base.update(kw)
    return AppSpec.model_validate(base)


def make_tree(root: Path, files: dict[str, str | bytes]) -> Path:
    for rel, content in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content.encode() if isinstance(content, str) else content)
    return root


# ------------------------------------------------------------------ spotleash.toml
def test_the_example_app_spec_is_valid() -> None:
    app = load_app(EXAMPLE, None)
    assert [c.name for c in app.spec.components] == ["thumbnailer", "vectors"]
    assert app.root == EXAMPLE.resolve()
    assert app.spec.component("vectors").env["VECTORS_DIM"] == "128"


@pytest.mark.parametrize(("patch", "field"), [
    ({"port": 80}, "app.components[0] (\"web\").port"),
    ({"port": "x"}, "app.components[0] (\"web\").port"),
    ({"command": []}, "app.components[0] (\"web\").command"),
    ({"health_path": "healthz"}, "app.components[0] (\"web\").health_path"),
    ({"ram_gb": 0}, "app.components[0] (\"web\").ram_gb"),
    ({"gpu": "maybe"}, "app.components[0] (\"web\").gpu"),
    ({"env": {"1BAD": "x"}}, "app.components[0] (\"web\").env"),
    ({"colour": "red"}, "app.components[0] (\"web\").colour"),
])
def test_a_wrong_component_field_is_named(patch: dict[str, object], field: str) -> None:
    comp = {"name": "web", "command": ["python", "w.py"], "port": 8201, **patch}
    with pytest.raises(ConfigError) as e:
        parse_app({"name": "demo", "components": [comp]}, Path("spotleash.toml"))
    assert field in str(e.value)


def test_missing_fields_and_duplicates_are_named() -> None:
    with pytest.raises(ConfigError, match=r"app\.components: "):
        parse_app({"name": "demo"}, Path("x.toml"))
    with pytest.raises(ConfigError, match=r"app\.components\[1\] \(\"web\"\)\.port"):
        parse_app({"name": "demo", "components": [{"name": "web", "command": ["a"], "port": 8201},
                                                  {"name": "web", "command": ["b"]}]}, Path("x.toml"))
    with pytest.raises(ConfigError, match="share the name 'web'"):
        parse_app({"name": "demo", "components": [{"name": "web", "command": ["a"], "port": 8201},
                                                  {"name": "web", "command": ["b"], "port": 8202}]}, Path("x"))


def test_settings_are_derived_from_the_app_and_the_environment_still_wins(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "spotleash.toml").write_text(TOML)
    monkeypatch.chdir(tmp_path / ".")
    monkeypatch.delenv(CONFIG_FILE_VAR, raising=False)
    s = load_settings()  # found from the working directory
    assert s.project == "p1"
    assert s.components == ["web", "gpu-worker"]
    assert s.component_ram_gb == {"web": 3.0, "gpu-worker": 16.0}
    assert s.gpu_components == ["gpu-worker"]
    monkeypatch.setenv("SPOTLEASH_GPU_COMPONENTS", "[]")
    monkeypatch.setenv("SPOTLEASH_COMPONENTS", '["web"]')
    s = load_settings()
    assert s.gpu_components == [] and s.components == ["web"]
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)  # found upward
    assert load_settings().project == "p1"


def test_the_config_file_variable_names_the_file_and_top_level_keys_win_over_derived(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "other.toml"
    f.write_text('components = ["x"]\n' + TOML.replace('project = "p1"', ""))
    monkeypatch.setenv(CONFIG_FILE_VAR, str(f))
    assert load_settings().components == ["x"]
    vals = settings_values({"app": {"name": "demo", "components": [
        {"name": "web", "command": ["a"], "port": 8201}]}}, f)
    assert vals["components"] == ["web"] and vals["gpu_components"] == []


def test_a_bad_app_table_stops_settings_with_the_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "spotleash.toml"
    f.write_text(TOML.replace("port = 8202", "port = 99999"))
    monkeypatch.setenv(CONFIG_FILE_VAR, str(f))
    with pytest.raises(ConfigError, match=r"app\.components\[1\] \(\"gpu-worker\"\)\.port"):
        load_settings()


def test_load_app_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no spotleash.toml"):
        load_app(tmp_path, None)
    (tmp_path / "spotleash.toml").write_text('project = "x"\n')
    with pytest.raises(ConfigError, match=r"no \[app\] table"):
        load_app(tmp_path, None)
    (tmp_path / "spotleash.toml").write_text(TOML.replace('requirements = ["numpy"]', 'dir = "nope"'))
    with pytest.raises(ConfigError, match="app.dir"):
        load_app(tmp_path, None)


# ------------------------------------------------------------------ the app tree
def test_ignore_rules(tmp_path: Path) -> None:
    root = make_tree(tmp_path, {
        "app.py": "x", "lib/util.py": "y", "lib/__pycache__/util.cpython-311.pyc": "z", "mod.pyc": "z",
        ".git/config": "g", ".venv/bin/python": "v", "myenv/pyvenv.cfg": "home=/usr", "myenv/lib/x.py": "v",
        ".mypy_cache/x": "c", "build/out.bin": "b", "debug.log": "l", "keep.log": "k",
        "data/big.csv": "d", "data/small.csv": "s", "notes/secret-plan.md": "n",
        ".gitignore": "build/\n*.log\n!keep.log\n", "data/.gitignore": "big.csv\n",
        ".spotleashignore": "notes/\n",
    })
    tree = collect(root, spec(exclude=["lib/util.py"]))
    assert sorted(tree.files) == [".gitignore", ".spotleashignore", "app.py", "data/.gitignore",
                                  "data/small.csv", "keep.log"]
    assert {".git/", ".venv/", "myenv/", "build/", "notes/"} <= set(tree.skipped)


def test_a_deeper_ignore_file_can_bring_a_file_back(tmp_path: Path) -> None:
    root = make_tree(tmp_path, {"a.txt": "1", "sub/a.txt": "2", ".gitignore": "*.txt\n", "sub/.gitignore": "!a.txt\n"})
    assert sorted(collect(root, spec()).files) == [".gitignore", "sub/.gitignore", "sub/a.txt"]


PEM = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n"
SA = json.dumps({"type": "service_account", "project_id": "p", "private_key_id": "1", "private_key": "k",
                 "client_email": "a@p.iam.gserviceaccount.com"})


@pytest.mark.parametrize(("rel", "content", "why"), [
    (".env", "TOKEN=1", ".env"),
    ("config/.env.production", "TOKEN=1", ".env"),
    ("deploy/key.txt", PEM, "private key"),
    ("server.key", "anything", "key file"),
    ("creds/sa.json", SA, "service-account"),
    ("adc.json", json.dumps({"type": "authorized_user", "refresh_token": "r", "client_id": "c"}), "credential"),
])
def test_secrets_are_refused_with_the_file_named_unless_listed(tmp_path: Path, rel: str, content: str,
                                                               why: str) -> None:
    root = make_tree(tmp_path, {"app.py": "x", rel: content})
    with pytest.raises(SecretRefused) as e:
        collect(root, spec())
    assert rel in str(e.value) and why in str(e.value) and "include" in str(e.value)
    assert rel in collect(root, spec(include=[rel])).files


def test_harmless_look_alikes_pass(tmp_path: Path) -> None:
    root = make_tree(tmp_path, {".env.example": "TOKEN=", "package.json": '{"type": "module"}',
                                "cert.pem": "-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n",
                                "docs/keys.md": "never commit a PRIVATE KEY"})
    assert len(collect(root, spec()).files) == 4


def test_an_empty_app_is_refused(tmp_path: Path) -> None:
    make_tree(tmp_path, {".git/x": "1"})
    with pytest.raises(BadInput, match="no files"):
        collect(tmp_path, spec())


# ------------------------------------------------------------------ the archive
def _build(root: Path, out: Path, wheels: list[Path]) -> str:
    tree = collect(root, spec())
    sha, _ = build_package(out, spec(), tree.files, wheels, ["spotleash[instance]==0.1.0"], tree.executable)
    return sha


def test_same_files_give_the_same_bytes_whatever_mtimes_paths_or_umask(tmp_path: Path) -> None:
    files: dict[str, str | bytes] = {"app.py": "print('hi')\n", "lib/x.py": "X = 1\n", "run.sh": "#!/bin/sh\n",
                                     "blob.bin": os.urandom(200_000)}
    a = make_tree(tmp_path / "a", files)
    b = make_tree(tmp_path / "elsewhere" / "b", dict(reversed(list(files.items()))))
    for root in (a, b):
        (root / "run.sh").chmod(0o755)
    os.utime(b / "app.py", (1, 1))
    (b / "lib" / "x.py").chmod(0o600)
    wheel = tmp_path / "w" / "demo-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    wheel.write_bytes(b"PK fake wheel")
    sha_a = _build(a, tmp_path / "a.tgz", [wheel])
    sha_b = _build(b, tmp_path / "b.tgz", [wheel])
    assert sha_a == sha_b
    assert (tmp_path / "a.tgz").read_bytes() == (tmp_path / "b.tgz").read_bytes()
    (b / "lib" / "x.py").write_text("X = 2\n")
    assert _build(b, tmp_path / "c.tgz", [wheel]) != sha_a

    with tarfile.open(tmp_path / "a.tgz") as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names) and MANIFEST_NAME in names
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == "" and m.gname == "" for m in members)
    modes = {m.name: m.mode for m in members}
    assert modes["app/run.sh"] == 0o755 and modes["app/lib/x.py"] == 0o644
    raw = (tmp_path / "a.tgz").read_bytes()
    assert raw[4:8] == b"\0\0\0\0" and raw[3] & 0x08 == 0  # gzip mtime 0, no file name


def test_manifest_lists_every_member_and_verify_checks_them(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "src", {"app.py": "x"})
    out = tmp_path / "p.tgz"
    sha = _build(root, out, [])
    manifest = Manifest.model_validate(verify_archive(out, sha))
    assert manifest.format == 1 and manifest.python == "3.11" and manifest.platform.endswith("x86_64")
    assert list(manifest.files) == ["app/app.py"] and manifest.app.name == "demo"
    assert manifest.requirements[-1] == "spotleash[instance]==0.1.0"  # what the instance installs
    with pytest.raises(PackageError, match="sha256 mismatch"):
        verify_archive(out, "0" * 64)
    dest = tmp_path / "x"
    extract_archive(out, dest)
    assert (dest / "app" / "app.py").read_text() == "x"
    with pytest.raises(PackageError, match="not empty"):
        extract_archive(out, dest)


def test_a_tampered_member_fails_verification(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "src", {"app.py": "x"})
    out = tmp_path / "p.tgz"
    _build(root, out, [])
    with tarfile.open(out) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    members["app/app.py"] = b"evil"
    bad = tmp_path / "bad.tgz"
    with tarfile.open(bad, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    from spotleash.wire.package import sha256_file
    with pytest.raises(PackageError, match="does not match its manifest"):
        verify_archive(bad, sha256_file(bad))


def test_object_names_and_pointer() -> None:
    sha = "a" * 64
    assert package_object(sha) == f"packages/{sha}.tar.gz"
    assert pointer_object("main") == "latest-main.txt"
    assert parse_pointer(pointer_text(sha).encode()) == sha
    for bad in ("", "../x", "A" * 64):
        with pytest.raises(PackageError):
            parse_pointer(bad)
    with pytest.raises(PackageError):
        pointer_object("../main")
