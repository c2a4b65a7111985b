"""The example app published and packages switched on for the launchers, for tests that run it on instances.

The session's stack runs without a package bucket (tests/conftest.py); ``packages_on`` publishes
examples/thumbs through the CLI, restarts the functions that launch (on_demand, on_heartbeat, on_reap)
with the bucket in their environment, as a redeploy would, and switches packages off again at the end.
Wheels are cached across runs in ``~/.cache/spotleash/test-wheels`` (``SPOTLEASH_TEST_WHEEL_CACHE``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from local_emulator import stack
from spotleash.topology import load_topology
from spotleash.wire.events import Component, DemandEvent

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "thumbs"
LAUNCHERS = ("on_demand", "on_heartbeat", "on_reap")  # the functions that call handle_demand
MARKER = "SPOTLEASH_COMPONENT_OF"  # every component process on an instance carries its instance id in it


def _set_bucket(state_dir: Path, bucket: str) -> None:
    path = stack.env_file(state_dir)
    lines = [ln for ln in path.read_text().splitlines() if not ln.startswith("SPOTLEASH_PACKAGE_BUCKET=")]
    path.write_text("\n".join([*lines, f"SPOTLEASH_PACKAGE_BUCKET={bucket}"]) + "\n")
    for name in LAUNCHERS:  # one at a time: each restart rewrites stack.json
        stack.restart(state_dir, name)


@contextmanager
def packages_on(state_dir: Path, pub_state: Path, app: Path = EXAMPLE) -> Iterator[dict[str, Any]]:
    """Publish ``app`` (examples/thumbs) and switch packages on; yields ``publish --json``'s result plus
    ``publish_s``."""
    bucket = load_topology().package_bucket
    cache = Path(os.environ.get("SPOTLEASH_TEST_WHEEL_CACHE", Path.home() / ".cache" / "spotleash" / "test-wheels"))
    cache.mkdir(parents=True, exist_ok=True)
    (pub_state / "wheels").symlink_to(cache, target_is_directory=True)
    env = {**os.environ, "SPOTLEASH_PACKAGE_BUCKET": bucket, "SPOTLEASH_STATE_DIR": str(pub_state)}
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "spotleash.cli", "publish", "--app", str(app), "--json"],
                         env=env, capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    result: dict[str, Any] = json.loads(out.stdout)
    result["publish_s"] = round(time.monotonic() - t0, 2)
    saved = os.environ.get("SPOTLEASH_PACKAGE_BUCKET")
    _set_bucket(state_dir, bucket)
    os.environ["SPOTLEASH_PACKAGE_BUCKET"] = bucket
    try:
        yield result
    finally:
        _set_bucket(state_dir, "")
        if saved is None:
            os.environ.pop("SPOTLEASH_PACKAGE_BUCKET", None)
        else:
            os.environ["SPOTLEASH_PACKAGE_BUCKET"] = saved


def thumbs_demand(lease_id: str, *, gpu: bool) -> DemandEvent:
    return DemandEvent(lease_id=lease_id, trigger="manual", ram_percent=91.0, components=[
        Component(name="thumbnailer", ram_gb=2.0, gpu=gpu), Component(name="vectors", ram_gb=4.0, gpu=gpu)])
