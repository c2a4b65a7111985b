"""Google's own Pub/Sub and Firestore emulators (shipped with the gcloud CLI), started and stopped.

    proc = start_pubsub_emulator("my-project", log_dir=tmp)
    os.environ["PUBSUB_EMULATOR_HOST"] = proc.address
    ...
    proc.stop()

Each emulator runs in its own process group, so ``stop()`` takes the gcloud wrapper *and* its
Java child down together and waits for the port to close.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from local_emulator.procs import (
    LOOPBACK,
    ManagedProcess,
    MissingDependency,
    free_port,
    port_open,
    spawn,
    wait_ready,
)

PUBSUB_READY = "Server started, listening on"
FIRESTORE_READY = "Dev App Server is now running"
DEFAULT_TIMEOUT_S = 60.0

_INSTALL_SDK = (
    "install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install, or the "
    "`google-cloud-cli` apt package) and put `gcloud` on PATH"
)


def _component_hint(component: str, apt: str) -> str:
    return (
        f"the gcloud emulator component {component!r} is missing: run "
        f"`gcloud components install {component} beta` (or `apt-get install {apt}` when gcloud came from apt)"
    )


def _require_tools() -> str:
    """The gcloud executable; MissingDependency naming what to install if gcloud or Java is absent."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        raise MissingDependency(f"gcloud not found on PATH: the local stack needs Google's emulators; {_INSTALL_SDK}")
    if shutil.which("java") is None:
        raise MissingDependency(
            "java not found on PATH: Google's Pub/Sub and Firestore emulators need a Java runtime; "
            "install OpenJDK 17 or newer (e.g. `apt-get install openjdk-17-jre-headless`)"
        )
    return gcloud


def _explainer(component: str, apt: str) -> Callable[[str], str | None]:
    def explain(tail: str) -> str | None:
        low = tail.lower()
        if "not installed" in low or ("component" in low and ("missing" in low or "install" in low)):
            return _component_hint(component, apt)
        if "java" in low and ("not found" in low or "unable to locate" in low or "no java" in low):
            return "the emulator could not find Java: install OpenJDK 17 or newer and put `java` on PATH"
        return None

    return explain


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # gcloud must not prompt or phone home, and must not pick up a project's emulator env of ours.
    env.setdefault("CLOUDSDK_CORE_DISABLE_PROMPTS", "1")
    env.setdefault("CLOUDSDK_CORE_DISABLE_USAGE_REPORTING", "1")
    for var in ("PUBSUB_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST"):
        env.pop(var, None)
    return env


def spawn_pubsub_emulator(
    project: str,
    port: int | None = None,
    log_dir: Path | None = None,
    *,
    name: str = "pubsub",
    on_start: Callable[[ManagedProcess], None] | None = None,
    env: dict[str, str] | None = None,
) -> ManagedProcess:
    """Start the Pub/Sub emulator without waiting; pair with :func:`wait_pubsub_ready`."""
    gcloud = _require_tools()
    port = port or free_port()
    argv = [gcloud, "beta", "emulators", "pubsub", "start", f"--host-port={LOOPBACK}:{port}", f"--project={project}"]
    return spawn(name, argv, log_path=Path(log_dir or ".") / f"{name}.log", port=port,
                 env={**_env(), **(env or {})}, on_start=on_start)


def wait_pubsub_ready(proc: ManagedProcess, timeout: float = DEFAULT_TIMEOUT_S) -> None:
    port = proc.port or 0
    wait_ready(proc, timeout=timeout, line=PUBSUB_READY, check=lambda: port_open(port),
               explain_exit=_explainer("pubsub-emulator", "google-cloud-cli-pubsub-emulator"))


def spawn_firestore_emulator(
    port: int | None = None,
    log_dir: Path | None = None,
    *,
    name: str = "firestore",
    on_start: Callable[[ManagedProcess], None] | None = None,
    env: dict[str, str] | None = None,
) -> ManagedProcess:
    """Start the Firestore emulator without waiting; pair with :func:`wait_firestore_ready`."""
    gcloud = _require_tools()
    port = port or free_port()
    argv = [gcloud, "emulators", "firestore", "start", f"--host-port={LOOPBACK}:{port}"]
    return spawn(name, argv, log_path=Path(log_dir or ".") / f"{name}.log", port=port,
                 env={**_env(), **(env or {})}, on_start=on_start)


def wait_firestore_ready(proc: ManagedProcess, timeout: float = DEFAULT_TIMEOUT_S) -> None:
    """Ready once it has answered a read (``firestore_ready``)."""
    wait_ready(proc, timeout=timeout, line=FIRESTORE_READY, check=firestore_ready(proc.port or 0),
               explain_exit=_explainer("cloud-firestore-emulator", "google-cloud-cli-firestore-emulator"))


def firestore_ready(port: int) -> Callable[[], bool]:
    """The Firestore emulator's readiness check, at its start and at a restart: listening and answering a read.
    Its first request runs its lazy set-up in a cold JVM (0.7 s on an idle machine, 15.8 s once on a loaded one),
    and a `spotleash check` run just after `local up` in CI lost its one 10 s read to it: the stack pays that
    cost itself, under its own deadline (each try is bounded; a slow first one is simply tried again)."""
    return lambda: port_open(port) and _firestore_answers(port)


def _firestore_answers(port: int, timeout_s: float = 10.0) -> bool:
    """One read, through the official client, of a document that does not exist: NOT_FOUND is an answer."""
    import grpc
    from google.api_core import exceptions as gexc
    from google.cloud.firestore_v1.services.firestore import FirestoreClient
    from google.cloud.firestore_v1.services.firestore.transports import FirestoreGrpcTransport

    channel = grpc.insecure_channel(f"{LOOPBACK}:{port}")
    try:
        client = FirestoreClient(transport=FirestoreGrpcTransport(channel=channel))
        client.get_document(request={"name": "projects/ready/databases/(default)/documents/ready/probe"},
                            retry=None, timeout=timeout_s)
    except gexc.NotFound:
        return True
    except gexc.GoogleAPICallError:
        return False  # not listening yet, or the deadline passed: wait_ready says which, with the log's end
    finally:
        channel.close()
    return True


def start_pubsub_emulator(
    project: str,
    port: int | None = None,
    log_dir: Path | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    name: str = "pubsub",
    on_start: Callable[[ManagedProcess], None] | None = None,
) -> ManagedProcess:
    """Start ``gcloud beta emulators pubsub start`` on a free loopback port; return once it listens.

    Logs go to ``log_dir/NAME.log`` (``log_dir`` defaults to the current directory). On failure
    the process group is stopped before the error propagates.
    """
    proc = spawn_pubsub_emulator(project, port, log_dir, name=name, on_start=on_start)
    try:
        wait_pubsub_ready(proc, timeout)
    except BaseException:
        proc.stop()
        raise
    return proc


def start_firestore_emulator(
    port: int | None = None,
    log_dir: Path | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    name: str = "firestore",
    on_start: Callable[[ManagedProcess], None] | None = None,
) -> ManagedProcess:
    """Start ``gcloud emulators firestore start`` on a free loopback port; return once it serves."""
    proc = spawn_firestore_emulator(port, log_dir, name=name, on_start=on_start)
    try:
        wait_firestore_ready(proc, timeout)
    except BaseException:
        proc.stop()
        raise
    return proc
