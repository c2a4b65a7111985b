"""Shared fixtures: the local stack (once per session) and a lone Pub/Sub emulator.

    def test_something(local_stack):          # the whole stack, env vars set for this process
        url = local_stack.url_of("on_heartbeat")

    def test_other(pubsub_emulator):          # only Pub/Sub (or the stack's, if it already runs)
        PublisherClient()  # PUBSUB_EMULATOR_HOST is set

Both restore ``os.environ`` and stop every process they started at the end of the session, even
when tests fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

# Short timings so lease loss, heartbeat loss and reaping happen within seconds in tests.
# Tests may import this dict (``from tests.conftest import FAST_TIMINGS`` or ``from conftest import ...``).
FAST_TIMINGS: dict[str, str] = {
    "SPOTLEASH_LEASE_TTL_S": "6",
    "SPOTLEASH_LEASE_RENEW_S": "2",
    "SPOTLEASH_HEARTBEAT_INTERVAL_S": "1",
    "SPOTLEASH_HEARTBEAT_TIMEOUT_S": "5",
    "SPOTLEASH_ORPHAN_GRACE_S": "3",
    "SPOTLEASH_PROVISIONING_TIMEOUT_S": "30",
    "SPOTLEASH_SAMPLE_INTERVAL_S": "0.25",
    "SPOTLEASH_DEMAND_COOLDOWN_S": "5",
    "SPOTLEASH_CONFIRM_DELETE_S": "20",
    # The control plane pins no package (heartbeat-only instances, READY on the first beat): a launch with a
    # bucket but nothing published is refused. tests/e2e/test_packages.py switches packages on (and off).
    "SPOTLEASH_PACKAGE_BUCKET": "",
}

TEST_PROJECT = "spotleash-test"
# The scheduler fake runs its clock 12x: the reaper's "every minute" cron fires every 5 s.
REAP_TIME_SCALE = 12
REAP_PERIOD_S = 60 / REAP_TIME_SCALE
FAST_FAKE_ARGS: dict[str, list[str]] = {"scheduler": ["--time-scale", str(REAP_TIME_SCALE)]}

_active_stack: object | None = None  # the StackInfo while local_stack is up


@dataclass(frozen=True)
class PubsubEmulator:
    host: str  # 127.0.0.1:PORT, also in os.environ["PUBSUB_EMULATOR_HOST"] while the fixture lives
    project: str


def _restore_env(saved: dict[str, str]) -> None:
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The whole local stack, started once per session with FAST_TIMINGS; torn down at the end."""
    global _active_stack
    from local_emulator import stack

    state_dir = tmp_path_factory.mktemp("local-stack")
    saved = dict(os.environ)
    try:
        info = stack.up(state_dir, overrides={"SPOTLEASH_PROJECT": TEST_PROJECT, **FAST_TIMINGS},
                        fake_args=FAST_FAKE_ARGS)
        os.environ.update(stack.read_env(state_dir))
        os.environ["SPOTLEASH_STATE_DIR"] = str(state_dir)
        _active_stack = info
        yield info
    finally:
        _active_stack = None
        _restore_env(saved)
        stack.down(state_dir)


@pytest.fixture()
def pubsub_emulator(_pubsub_emulator_session: PubsubEmulator, monkeypatch: pytest.MonkeyPatch) -> PubsubEmulator:
    """Point this test's clients at the emulator: another session fixture (the stack) may have moved the env."""
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", _pubsub_emulator_session.host)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", _pubsub_emulator_session.project)
    return _pubsub_emulator_session


@pytest.fixture(scope="session")
def _pubsub_emulator_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PubsubEmulator]:
    """Google's Pub/Sub emulator alone (or the running stack's), with PUBSUB_EMULATOR_HOST set."""
    if _active_stack is not None:
        env = getattr(_active_stack, "env", {})
        yield PubsubEmulator(env["PUBSUB_EMULATOR_HOST"], env["GOOGLE_CLOUD_PROJECT"])
        return
    from local_emulator.emulators import start_pubsub_emulator

    saved = dict(os.environ)
    proc = start_pubsub_emulator(TEST_PROJECT, log_dir=tmp_path_factory.mktemp("pubsub-emulator"))
    try:
        os.environ["PUBSUB_EMULATOR_HOST"] = proc.address
        os.environ["GOOGLE_CLOUD_PROJECT"] = TEST_PROJECT
        yield PubsubEmulator(proc.address, TEST_PROJECT)
    finally:
        _restore_env(saved)
        proc.stop()
