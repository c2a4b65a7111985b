"""The two single emulators several emulator tests start on their own (no whole local stack):
Google's Firestore emulator, and the Cloud Storage emulator with one bucket. One definition each."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from tests.conftest import TEST_PROJECT

from local_emulator import storage as gcs
from local_emulator.emulators import start_firestore_emulator
from local_emulator.procs import free_port


@contextmanager
def firestore_emulator(log_dir: Path) -> Iterator[str]:
    """A Firestore emulator on loopback; yields its host:port, stops it (and its Java child) after."""
    proc = start_firestore_emulator(log_dir=log_dir)
    try:
        yield f"127.0.0.1:{proc.port}"
    finally:
        proc.stop()


# The emulator's first request after its start runs its lazy set-up in a cold JVM: 15.8 s once on a loaded machine
# (two test lanes and other work, load 6), past the 10 s this reset used to allow.
RESET_TIMEOUT_S = 60.0


def empty_firestore(host: str) -> None:
    """An empty database for the next test (the emulator's own reset endpoint)."""
    httpx.delete(f"http://{host}/emulator/v1/projects/{TEST_PROJECT}/databases/(default)/documents",
                 timeout=RESET_TIMEOUT_S).raise_for_status()


@contextmanager
def gcs_emulator(log_dir: Path, bucket: str) -> Iterator[str]:
    """The Cloud Storage emulator on loopback with ``bucket`` created; yields its http:// URL."""
    port = free_port()
    proc = gcs.spawn_storage(port, log_dir)
    try:
        gcs.wait_storage_ready(proc, 20.0)
        gcs.create_bucket(port, "p", bucket)
        yield gcs.url(port)
    finally:
        proc.stop()
