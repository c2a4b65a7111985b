"""``spotleash check`` on a local stack of its own: every line ✓ (or "not checked on the local stack" for the
Google-only ones), then each part broken in turn — a function killed, an emulator stopped, a subscription
deleted, a wrong key, a billing alert — and that line ✗ with its fix, exit 1; the part restored after.

The command runs as a user runs it: a subprocess whose only link to the stack is SPOTLEASH_STATE_DIR
(the CLI reads the stack's env file from there).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from local_emulator import stack
from local_emulator import storage as gcs
from spotleash.polling import wait_until
from spotleash.topology import load_topology
from spotleash.wire.events import BudgetAlert

pytestmark = [pytest.mark.emulator, pytest.mark.slow]

GOOGLE_ONLY = {"APIs", "the VMs' read access to the bucket", "Spot quota"}
RESTART = "spotleash local down && spotleash local up"


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    state = tmp_path_factory.mktemp("check-stack")
    try:
        stack.up(state)
        yield state
    finally:
        stack.down(state)


def check(state: Path, **env: str) -> tuple[int, dict[str, dict[str, Any]]]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SPOTLEASH_") and k not in stack.EMULATOR_VARS}
    done = subprocess.run([sys.executable, "-m", "spotleash.cli", "check", "--json", "--timeout", "8"],
                          env={**base, "SPOTLEASH_STATE_DIR": str(state), "NO_GCE_CHECK": "true", **env},
                          capture_output=True, text=True, timeout=180, check=False)
    out = json.loads(done.stdout)
    assert out["ok"] == (done.returncode == 0), done.stderr
    return done.returncode, {line["part"]: line for line in out["lines"]}


def test_every_line_passes_on_a_healthy_stack(state_dir: Path) -> None:
    code, lines = check(state_dir)
    assert code == 0, lines
    for part, line in lines.items():
        if part in GOOGLE_ONLY:
            assert line["ok"] is None and line["detail"] == "not checked on the local stack"
        else:
            assert line["ok"] is True, line
    assert "on_demand audited it" in lines["functions (a dry-run demand)"]["detail"]
    assert "(would: wait_for_lease)" in lines["functions (a dry-run demand)"]["detail"]  # no agent runs here


@contextmanager
def _pubsub_of(env: dict[str, str]) -> Iterator[None]:
    """The Pub/Sub clients made inside talk to this test's stack; the session's own value is put back after
    (the session-wide stack's tests read it from os.environ)."""
    saved = os.environ.get("PUBSUB_EMULATOR_HOST")
    os.environ["PUBSUB_EMULATOR_HOST"] = env["PUBSUB_EMULATOR_HOST"]
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PUBSUB_EMULATOR_HOST", None)
        else:
            os.environ["PUBSUB_EMULATOR_HOST"] = saved


def _publish_budget(state: Path, cost: float) -> None:
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

    env = stack.read_env(state)
    with _pubsub_of(env):
        pub = pubsub_v1.PublisherClient()
        alert = BudgetAlert(budgetDisplayName="spotleash", costAmount=cost, budgetAmount=50.0,
                            alertThresholdExceeded=cost / 50.0, currencyCode="USD")
        pub.publish(pub.topic_path(env["GOOGLE_CLOUD_PROJECT"], "spotleash-budget"),
                    alert.model_dump_json().encode()).result(timeout=10)


def _wait_budget(state: Path, exceeded: bool) -> None:
    def seen() -> bool:
        _code, lines = check(state)
        return (lines["budget"]["ok"] is False) == exceeded

    wait_until(seen, timeout_s=60, interval_s=1.0, what=f"the budget line to say exceeded={exceeded}")


def _delete_subscription(state: Path) -> Callable[[], None]:
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

    env = stack.read_env(state)
    with _pubsub_of(env):
        sub = pubsub_v1.SubscriberClient()
        try:
            sub.delete_subscription(subscription=sub.subscription_path(env["GOOGLE_CLOUD_PROJECT"],
                                                                       "spotleash-lease-push"))
        finally:
            sub.close()

    def restore() -> None:
        fn_ports = {p.name: p.port for p in stack.status(state).parts if p.name in load_topology().functions and p.port}
        stack.create_pubsub_topology(env["PUBSUB_EMULATOR_HOST"], env["GOOGLE_CLOUD_PROJECT"], fn_ports, load_topology())
    return restore


def _restart(state: Path, name: str) -> None:
    proc = stack.restart(state, name)
    if name == gcs.NAME:  # the storage emulator starts empty: the stack's bucket, as `up` makes it
        assert proc.port is not None
        gcs.create_bucket(proc.port, stack.read_env(state)["GOOGLE_CLOUD_PROJECT"], load_topology().package_bucket)


@pytest.mark.parametrize(("fault", "part", "fix"), [
    ("kill on_demand", "functions (a dry-run demand)", RESTART),
    ("kill firestore", "Firestore", RESTART),
    ("delete a subscription", "topics and subscriptions", RESTART),
    ("kill the storage emulator", "package bucket", RESTART),
    ("a bucket that does not exist", "package bucket", "fix SPOTLEASH_PACKAGE_BUCKET: the local stack's bucket is"),
    ("no bucket", "package bucket", "set SPOTLEASH_PACKAGE_BUCKET"),
    ("a wrong VAST key", "VAST.ai API key", "set SPOTLEASH_VAST_API_KEY to a valid key"),
    ("kill the VAST fake", "VAST.ai API key", RESTART),
    ("kill on_heartbeat", "heartbeat URL", RESTART),
    ("another project", "credentials and project", "unset SPOTLEASH_PROJECT"),
    ("a billing alert past the budget", "budget", "raise the budget"),
])
def test_each_broken_part_fails_its_line_with_its_fix(state_dir: Path, fault: str, part: str, fix: str) -> None:
    env: dict[str, str] = {}
    restore: Callable[[], object] = lambda: None  # noqa: E731
    if fault.startswith("kill "):
        name = {"kill the storage emulator": gcs.NAME, "kill the VAST fake": "vast"}.get(fault, fault.split()[-1])
        assert stack.kill_part(state_dir, name)
        restore = lambda: _restart(state_dir, name)  # noqa: E731
    elif fault == "delete a subscription":
        restore = _delete_subscription(state_dir)
    elif fault == "a bucket that does not exist":
        env["SPOTLEASH_PACKAGE_BUCKET"] = "no-such-bucket"
    elif fault == "no bucket":
        env["SPOTLEASH_PACKAGE_BUCKET"] = ""
    elif fault == "a wrong VAST key":
        env["SPOTLEASH_VAST_API_KEY"] = "not-the-key"
    elif fault == "another project":
        env["SPOTLEASH_PROJECT"] = "someone-elses-project"
    elif fault == "a billing alert past the budget":
        _publish_budget(state_dir, 75.0)
        _wait_budget(state_dir, exceeded=True)
        restore = lambda: (_publish_budget(state_dir, 1.0), _wait_budget(state_dir, exceeded=False))  # noqa: E731
    try:
        code, lines = check(state_dir, **env)
        assert code == 1
        assert lines[part]["ok"] is False, lines[part]
        assert fix in lines[part]["fix"], lines[part]
    finally:
        restore()
    code, lines = check(state_dir)
    assert code == 0, {p: v for p, v in lines.items() if v["ok"] is False}
