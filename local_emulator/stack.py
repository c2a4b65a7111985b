"""The local stack: everything a deployment has, on free loopback ports, built from the topology.

``up`` starts Google's Pub/Sub and Firestore emulators, the Compute Engine, VAST.ai, Cloud
Scheduler and Cloud Billing Catalog fakes, and one functions-framework process per function of the topology
(``local_emulator.functions_server``: functions-framework's app and server, with gunicorn's shutdown
bounded); then creates the topics, push subscriptions (ack deadline, dead-letter and retry policies), the dead-letter hold
subscription and the scheduler jobs through Google's official clients.

State lives in ``STATE_DIR/local/``:
- ``stack.json``  every process started (pid, process group, create time, port), written as each
  process starts, so ``down`` can clean even an interrupted ``up``;
- ``stack.env``   the connection settings (KEY=VALUE lines) the CLI, the agent and tests read;
- ``logs/NAME.log`` each process's output.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from local_emulator import emulators
from local_emulator import storage as gcs
from local_emulator.procs import (
    LOOPBACK,
    ManagedProcess,
    MissingDependency,
    StackError,
    free_port,
    kill_marked,
    port_open,
    spawn,
    stop_all,
    wait_ready,
)
from spotleash.log import get_logger
from spotleash.packaging import extras
from spotleash.topology import Topology, load_topology
from spotleash.wire.stack_env import env_file, format_env, read_env_file

log = get_logger("spotleash.local.stack")

REPO_ROOT = Path(__file__).resolve().parent.parent  # a source checkout's root, or site-packages
# functions/main.py, the Cloud Functions' source: an installed wheel carries it inside this package
# (see pyproject.toml), a source checkout has it beside local_emulator/.
_FUNCTIONS_SOURCES = (Path(__file__).resolve().parent / "functions_source" / "main.py", REPO_ROOT / "functions" / "main.py")
DEFAULT_PROJECT = "spotleash-local"
DEFAULT_REGION = "us-central1"
ALL_FAKES = ("compute", "vast", "scheduler", "billing")
# The parts the functions call. ``down`` stops the functions first, while these still answer, so a
# request in flight ends at once instead of retrying against a backend that is already gone.
BACKING_PARTS = ("pubsub", "firestore", gcs.NAME, *ALL_FAKES)
READY_TIMEOUT_S = 120.0
MARKER_VAR = "SPOTLEASH_LOCAL_STACK"  # set in every process's environment: the state dir that owns it
EMULATOR_VARS = ("PUBSUB_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST", "DATASTORE_EMULATOR_HOST", "GCE_METADATA_HOST",
                 "STORAGE_EMULATOR_HOST")

_FAKE_MODULES = {
    "compute": ("local_emulator.compute", "the Compute Engine fake"),
    "vast": ("local_emulator.vast", "the VAST.ai fake"),
    "scheduler": ("local_emulator.scheduler", "the Cloud Scheduler fake"),
    "billing": ("local_emulator.billing", "the Cloud Billing Catalog fake"),
}


# ---------------------------------------------------------------------------- public data
@dataclass(frozen=True)
class StackInfo:
    """Where the running stack is. ``env`` holds exactly what ``stack.env`` holds."""

    state_dir: Path
    project: str
    env: dict[str, str]
    ports: dict[str, int]
    ready_s: float = 0.0

    def url_of(self, function_name: str) -> str:
        try:
            return self.env[fn_url_var(function_name)]
        except KeyError as e:
            raise StackError(f"no function {function_name!r} in this stack") from e

    @property
    def compute_url(self) -> str:
        return self.env["SPOTLEASH_COMPUTE_ENDPOINT"]

    @property
    def vast_url(self) -> str:
        return self.env["SPOTLEASH_VAST_URL"]

    @property
    def pubsub_host(self) -> str:
        return self.env["PUBSUB_EMULATOR_HOST"]

    @property
    def firestore_host(self) -> str:
        return self.env["FIRESTORE_EMULATOR_HOST"]

    @property
    def storage_url(self) -> str:
        return self.env["STORAGE_EMULATOR_HOST"]

    @property
    def scheduler_host(self) -> str:
        return self.env["SPOTLEASH_SCHEDULER_HOST"]


@dataclass(frozen=True)
class PartStatus:
    name: str
    pid: int
    port: int | None
    alive: bool
    log_path: str

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}" if self.port else ""


@dataclass(frozen=True)
class StackStatus:
    state_dir: Path
    recorded: bool  # stack.json exists
    complete: bool  # up finished
    parts: list[PartStatus] = field(default_factory=list)
    ready_s: float | None = None

    @property
    def all_alive(self) -> bool:
        return self.recorded and bool(self.parts) and all(p.alive for p in self.parts)

    @property
    def any_alive(self) -> bool:
        return any(p.alive for p in self.parts)

    def as_rows(self) -> list[dict[str, Any]]:
        return [
            {"name": p.name, "pid": p.pid, "port": p.port, "address": p.address, "alive": p.alive, "log": p.log_path}
            for p in self.parts
        ]


# ---------------------------------------------------------------------------- paths and files
def functions_source() -> Path:
    """The functions' entry module functions-framework serves, from a wheel or a source checkout."""
    for path in _FUNCTIONS_SOURCES:
        if path.is_file():
            return path
    raise StackError(
        f"the functions' source (functions/main.py) is neither in {_FUNCTIONS_SOURCES[0].parent} (an installed "
        f"wheel) nor in {_FUNCTIONS_SOURCES[1].parent} (a source checkout): the functions cannot be served "
        "(or pass functions=False)"
    )


def local_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "local"


def stack_file(state_dir: Path) -> Path:
    return local_dir(state_dir) / "stack.json"


def logs_dir(state_dir: Path) -> Path:
    return local_dir(state_dir) / "logs"


def handled_message_ids(state_dir: Path, function: str) -> set[str]:
    """The Pub/Sub message ids ``function`` has handled, from its log (``services.entry.handle_message``)."""
    found: set[str] = set()
    try:
        lines = (logs_dir(Path(state_dir).resolve()) / f"{function}.log").read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return found
    for line in lines:
        if '"handled"' not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("message") == "handled" and entry.get("message_id"):
            found.add(str(entry["message_id"]))
    return found


def fn_url_var(function_name: str) -> str:
    return f"SPOTLEASH_FN_{function_name.upper()}_URL"


def _write_atomic(path: Path, text: str, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_state(state_dir: Path) -> dict[str, Any] | None:
    path = stack_file(state_dir)
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as e:
        raise StackError(f"{path} is unreadable ({e}); stop its processes by hand and delete it") from e
    return data


class _Recorder:
    """Keeps stack.json current: every process is on disk before we wait for it."""

    def __init__(self, state_dir: Path, project: str) -> None:
        self.state_dir = state_dir
        self.state: dict[str, Any] = {
            "project": project,
            "started_at": time.time(),
            "owner_pid": os.getpid(),
            "complete": False,
            "ready_s": None,
            "processes": [],
        }
        self.procs: list[ManagedProcess] = []
        self.flush()

    def flush(self) -> None:
        _write_atomic(stack_file(self.state_dir), json.dumps(self.state, indent=2))

    def add(self, proc: ManagedProcess) -> None:
        self.procs.append(proc)
        self.state["processes"].append(proc.to_record())
        self.flush()

    def complete(self, ready_s: float) -> None:
        self.state["complete"] = True
        self.state["ready_s"] = round(ready_s, 3)
        self.flush()


# ---------------------------------------------------------------------------- checks
def _check_prerequisites(topo: Topology, fakes: Sequence[str], functions: bool) -> list[str] | None:
    """Everything that must exist before anything starts; returns the command that serves a function."""
    extras.require("local", "the local stack")  # before the fakes: their packages import its packages
    unknown = [f for f in fakes if f not in _FAKE_MODULES]
    if unknown:
        raise StackError(f"unknown fake(s) {unknown}; choose from {list(ALL_FAKES)}")
    for fake in fakes:
        module, what = _FAKE_MODULES[fake]
        try:
            spec = importlib.util.find_spec(f"{module}.__main__")
        except ModuleNotFoundError:
            spec = None
        if spec is None:
            raise StackError(
                f"{what} is missing: `python -m {module}` cannot run ({module.replace('.', '/')}/__main__.py not found). "
                f"Start the stack without it, e.g. up(..., fakes={tuple(f for f in fakes if f != fake)!r})"
            )
    emulators._require_tools()
    gcs.binary()
    if not functions:
        return None
    functions_source()
    if importlib.util.find_spec("functions_framework") is None:
        raise MissingDependency("functions-framework is not installed in this environment: run `uv sync`")
    if not topo.functions:
        raise StackError("the topology defines no functions")
    return [sys.executable, "-m", "local_emulator.functions_server"]


def _project(overrides: Mapping[str, str]) -> str:
    return overrides.get("SPOTLEASH_PROJECT") or os.environ.get("SPOTLEASH_PROJECT") or DEFAULT_PROJECT


def _region(overrides: Mapping[str, str]) -> str:
    return overrides.get("SPOTLEASH_REGION") or os.environ.get("SPOTLEASH_REGION") or DEFAULT_REGION


def _http_ready(url: str, *, want_200: bool) -> bool:
    try:
        r = httpx.get(url, timeout=1.0)
    except httpx.HTTPError:
        return False
    return r.status_code == 200 if want_200 else True


def _billing_ready(port: int) -> bool:
    if not port_open(port):
        return False
    from local_emulator.billing import control_call

    try:
        return bool(control_call(f"{LOOPBACK}:{port}", "Health", timeout=1.0).get("ok"))
    except Exception:  # noqa: BLE001 - any failure here just means "not ready yet"
        return False


def _scheduler_ready(port: int) -> bool:
    if not port_open(port):
        return False
    from local_emulator.scheduler import control_call

    try:
        return bool(control_call(f"{LOOPBACK}:{port}", "Health", timeout=1.0).get("ok"))
    except Exception:  # noqa: BLE001 - any failure here just means "not ready yet"
        return False


# ---------------------------------------------------------------------------- wiring
def _pubsub_clients(host: str) -> tuple[Any, Any]:
    import grpc
    from google.cloud import pubsub_v1
    from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
    from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

    pub = pubsub_v1.PublisherClient(transport=PublisherGrpcTransport(channel=grpc.insecure_channel(host)))
    sub = pubsub_v1.SubscriberClient(transport=SubscriberGrpcTransport(channel=grpc.insecure_channel(host)))
    return pub, sub


def create_pubsub_topology(pubsub_host: str, project: str, fn_ports: Mapping[str, int], topo: Topology) -> None:
    """Topics, push subscriptions (with dead-letter and retry policies) and the hold subscription."""
    from google.api_core import exceptions as gexc
    from google.cloud import pubsub_v1
    from google.protobuf import duration_pb2

    pub, sub = _pubsub_clients(pubsub_host)
    try:
        for topic in topo.topics:
            with contextlib.suppress(gexc.AlreadyExists):
                pub.create_topic(name=pub.topic_path(project, topic))
        dead_letter = pub.topic_path(project, topo.dead_letter_topic)
        for s in topo.subscriptions.values():
            req: dict[str, Any] = {
                "name": sub.subscription_path(project, s.name),
                "topic": pub.topic_path(project, s.topic),
                "ack_deadline_seconds": s.ack_deadline_s,
            }
            if s.function is not None:
                if s.function not in fn_ports:
                    continue  # functions not served: no push target
                req["push_config"] = pubsub_v1.types.PushConfig(
                    push_endpoint=f"http://{LOOPBACK}:{fn_ports[s.function]}/projects/{project}/topics/{s.topic}"
                )
            if s.max_delivery_attempts is not None:
                req["dead_letter_policy"] = pubsub_v1.types.DeadLetterPolicy(
                    dead_letter_topic=dead_letter, max_delivery_attempts=s.max_delivery_attempts
                )
            if s.min_backoff_s is not None and s.max_backoff_s is not None:
                req["retry_policy"] = pubsub_v1.types.RetryPolicy(
                    minimum_backoff=duration_pb2.Duration(seconds=s.min_backoff_s),
                    maximum_backoff=duration_pb2.Duration(seconds=s.max_backoff_s),
                )
            with contextlib.suppress(gexc.AlreadyExists):
                sub.create_subscription(request=req)
    finally:
        pub.stop()
        sub.close()


def create_schedules(scheduler_host: str, project: str, region: str, topo: Topology) -> list[str]:
    """The topology's scheduler jobs, created through the official google-cloud-scheduler client."""
    from google.api_core import exceptions as gexc
    from google.cloud import scheduler_v1

    from local_emulator.scheduler import scheduler_client

    client = scheduler_client(scheduler_host)
    parent = f"projects/{project}/locations/{region}"
    names = []
    try:
        for sch in topo.schedules.values():
            job = scheduler_v1.Job(
                name=f"{parent}/jobs/{sch.name}",
                schedule=sch.cron,
                time_zone=sch.time_zone,
                pubsub_target=scheduler_v1.PubsubTarget(
                    topic_name=f"projects/{project}/topics/{sch.topic}", data=json.dumps(sch.payload).encode()
                ),
            )
            with contextlib.suppress(gexc.AlreadyExists):
                client.create_job(parent=parent, job=job)
            names.append(job.name)
    finally:
        client.transport.close()
    return names


# ---------------------------------------------------------------------------- up / down / status
def up(
    state_dir: Path,
    *,
    overrides: dict[str, str] | None = None,
    fakes: Iterable[str] = ALL_FAKES,
    functions: bool = True,
    fake_args: Mapping[str, Sequence[str]] | None = None,
    timeout: float = READY_TIMEOUT_S,
) -> StackInfo:
    """Start the whole local stack in ``state_dir``; return once every part answers.

    ``overrides`` are SPOTLEASH_* (or other) variables given to every function and written to the
    env file; ``fake_args`` adds command-line flags per fake, e.g. ``{"compute": ["--boot-delay", "0.5"]}``.
    On failure everything started is stopped and StackError (or MissingDependency) is raised.
    """
    started = time.monotonic()
    state_dir = Path(state_dir).resolve()
    overrides = dict(overrides or {})
    fakes = tuple(fakes)
    topo = load_topology()
    serve = _check_prerequisites(topo, fakes, functions)

    previous = _read_state(state_dir)
    if previous is not None:
        if status(state_dir).any_alive:
            raise StackError(f"a local stack already runs in {state_dir}: run `spotleash local down` first")
        down(state_dir)

    project, region = _project(overrides), _region(overrides)
    logs = logs_dir(state_dir)
    logs.mkdir(parents=True, exist_ok=True)
    rec = _Recorder(state_dir, project)
    try:
        info = _start_all(state_dir, rec, topo, project, region, overrides, fakes, serve, fake_args or {}, timeout, started)
    except BaseException as e:
        log.error("local stack failed to start; cleaning up", state_dir=str(state_dir), error=str(e))
        try:
            down(state_dir)
        except Exception as cleanup_error:  # noqa: BLE001 - report both, the original first
            log.error("cleanup after a failed up also failed", error=str(cleanup_error))
        if isinstance(e, StackError | KeyboardInterrupt | SystemExit):
            raise
        raise StackError(f"local stack failed to start: {type(e).__name__}: {e}") from e
    return info


def _start_all(
    state_dir: Path,
    rec: _Recorder,
    topo: Topology,
    project: str,
    region: str,
    overrides: Mapping[str, str],
    fakes: tuple[str, ...],
    serve: list[str] | None,
    fake_args: Mapping[str, Sequence[str]],
    timeout: float,
    started: float,
) -> StackInfo:
    logs = logs_dir(state_dir)
    deadline = time.monotonic() + timeout

    def left() -> float:
        return max(1.0, deadline - time.monotonic())

    ports: dict[str, int] = {"pubsub": free_port(), "firestore": free_port(), gcs.NAME: free_port()}
    for fake in fakes:
        ports[fake] = free_port()
    fn_ports = {name: free_port() for name in topo.functions} if serve else {}
    ports.update(fn_ports)

    # --- the environment every process (and the env file) gets
    env_vars: dict[str, str] = {
        "PUBSUB_EMULATOR_HOST": f"{LOOPBACK}:{ports['pubsub']}",
        "FIRESTORE_EMULATOR_HOST": f"{LOOPBACK}:{ports['firestore']}",
        "GOOGLE_CLOUD_PROJECT": project,
        "SPOTLEASH_PROJECT": project,
        "SPOTLEASH_REGION": region,
        "SPOTLEASH_HEARTBEAT_SIGNING_KEY": secrets.token_urlsafe(32),
        "STORAGE_EMULATOR_HOST": gcs.url(ports[gcs.NAME]),
        "SPOTLEASH_PACKAGE_BUCKET": topo.package_bucket,
        # as Terraform's sl-vm: the Compute fake's metadata server then gives the VM a token
        "SPOTLEASH_VM_SERVICE_ACCOUNT": f"sl-vm@{project}.iam.gserviceaccount.com",
    }
    if "compute" in fakes:
        env_vars["SPOTLEASH_COMPUTE_ENDPOINT"] = f"http://{LOOPBACK}:{ports['compute']}"
    vast_key = secrets.token_hex(24)
    if "vast" in fakes:
        env_vars["SPOTLEASH_VAST_URL"] = f"http://{LOOPBACK}:{ports['vast']}"
        env_vars["SPOTLEASH_VAST_API_KEY"] = vast_key
    if "scheduler" in fakes:
        env_vars["SPOTLEASH_SCHEDULER_HOST"] = f"{LOOPBACK}:{ports['scheduler']}"
    if "billing" in fakes:  # gRPC, no TLS: the pricing adapter reads it (Settings.billing_endpoint)
        env_vars["SPOTLEASH_BILLING_ENDPOINT"] = f"{LOOPBACK}:{ports['billing']}"
    if "on_heartbeat" in fn_ports:
        env_vars["SPOTLEASH_HEARTBEAT_URL"] = f"http://{LOOPBACK}:{fn_ports['on_heartbeat']}/"
    for name, port in fn_ports.items():
        env_vars[fn_url_var(name)] = f"http://{LOOPBACK}:{port}/"
    caller = {k: v for k, v in os.environ.items() if k.startswith("SPOTLEASH_") and k != MARKER_VAR}
    file_env = {**caller, **env_vars, **overrides}
    try:
        env_text = format_env(file_env)  # checked before anything starts
    except ValueError as e:
        raise StackError(str(e)) from e

    base = {k: v for k, v in os.environ.items() if not k.startswith("SPOTLEASH_") and k not in EMULATOR_VARS}
    proc_env = {**base, **file_env, MARKER_VAR: str(state_dir), "PYTHONUNBUFFERED": "1",
                "SPOTLEASH_VAST_FAKE_LOG_DIR": str(logs / "vast-boxes")}  # vast.models.KEEP_LOGS_ENV

    # --- start everything at once (ports are known up front), then wait for each
    waits: list[tuple[ManagedProcess, Any]] = []
    ps = emulators.spawn_pubsub_emulator(project, ports["pubsub"], logs, on_start=rec.add,
                                         env={MARKER_VAR: str(state_dir)})
    waits.append((ps, lambda p: emulators.wait_pubsub_ready(p, left())))
    fs = emulators.spawn_firestore_emulator(ports["firestore"], logs, on_start=rec.add,
                                            env={MARKER_VAR: str(state_dir)})
    waits.append((fs, lambda p: emulators.wait_firestore_ready(p, left())))
    st = gcs.spawn_storage(ports[gcs.NAME], logs, on_start=rec.add, env={**emulators._env(), MARKER_VAR: str(state_dir)})
    waits.append((st, lambda p: gcs.wait_storage_ready(p, left())))

    py = sys.executable
    for fake in fakes:
        module = _FAKE_MODULES[fake][0]
        argv = [py, "-m", module, "--host", LOOPBACK, "--port", str(ports[fake])]
        if fake in ("compute", "scheduler"):
            argv += ["--project", project]
        if fake == "vast":
            argv += ["--api-key", vast_key]
        argv += list(fake_args.get(fake, ()))
        proc = spawn(fake, argv, log_path=logs / f"{fake}.log", port=ports[fake], env=proc_env, cwd=REPO_ROOT,
                     on_start=rec.add)
        if fake in ("scheduler", "billing"):
            port, ready = ports[fake], _scheduler_ready if fake == "scheduler" else _billing_ready
            waits.append((proc, lambda p, port=port, ready=ready: wait_ready(p, timeout=left(),
                                                                             check=lambda: ready(port))))
        else:
            url = f"http://{LOOPBACK}:{ports[fake]}/_control/health"
            waits.append((proc, lambda p, url=url: wait_ready(p, timeout=left(),
                                                              check=lambda: _http_ready(url, want_200=True))))

    if serve:
        source = functions_source()
        for name, fn in topo.functions.items():
            sig = "http" if fn.trigger == "http" else "cloudevent"
            argv = [*serve, "--target", name, "--source", str(source), "--signature-type", sig,
                    "--host", LOOPBACK, "--port", str(fn_ports[name])]
            proc = spawn(name, argv, log_path=logs / f"{name}.log", port=fn_ports[name], env=proc_env,
                         cwd=source.parent, on_start=rec.add)
            url = f"http://{LOOPBACK}:{fn_ports[name]}/_spotleash/ready"
            waits.append((proc, lambda p, url=url: wait_ready(p, timeout=left(),
                                                              check=lambda: _http_ready(url, want_200=False))))

    for proc, wait in waits:
        wait(proc)
        log.info("part ready", part=proc.name, port=proc.port, after_s=round(time.monotonic() - started, 2))

    # --- wire: topics and subscriptions, then scheduler jobs (subscriptions first: nothing is lost)
    create_pubsub_topology(env_vars["PUBSUB_EMULATOR_HOST"], project, fn_ports, topo)
    gcs.create_bucket(ports[gcs.NAME], project, topo.package_bucket)
    if "scheduler" in fakes:
        create_schedules(env_vars["SPOTLEASH_SCHEDULER_HOST"], project, region, topo)

    _write_atomic(env_file(state_dir), env_text)
    ready_s = time.monotonic() - started
    rec.complete(ready_s)
    log.info("local stack ready", state_dir=str(state_dir), ready_s=round(ready_s, 2), parts=len(rec.procs))
    return StackInfo(state_dir=state_dir, project=project, env=dict(file_env), ports=ports, ready_s=ready_s)


def down(state_dir: Path) -> list[str]:
    """Stop exactly what ``stack.json`` records (whole process groups) and remove the state files.

    Returns the names of the parts that were still running. Safe to call twice, or after an
    interrupted ``up``.
    """
    state_dir = Path(state_dir).resolve()
    state = _read_state(state_dir)
    procs = [ManagedProcess.from_record(r) for r in reversed((state or {}).get("processes", []))]
    try:
        stopped = stop_all([p for p in procs if p.name not in BACKING_PARTS])  # the functions, first
        stopped += stop_all([p for p in procs if p.name in BACKING_PARTS])
        # Safety net: a process started an instant before an interrupted up could record it still
        # carries our marker in its environment.
        stray = kill_marked(MARKER_VAR, str(state_dir))
    except StackError as e:
        raise StackError(f"local stack in {state_dir} not fully stopped (state kept in place): {e}") from e
    if stray:
        log.warning("stopped unrecorded processes of this stack", pids=[p.pid for p in stray])
        stopped += [f"unrecorded:{p.pid}" for p in stray]
    if state is None:
        return stopped
    for path in (env_file(state_dir), stack_file(state_dir)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    log.info("local stack stopped", state_dir=str(state_dir), stopped=stopped)
    return stopped


def status(state_dir: Path) -> StackStatus:
    """What the state dir records, and whether each part is still alive."""
    state_dir = Path(state_dir).resolve()
    state = _read_state(state_dir)
    if state is None:
        return StackStatus(state_dir=state_dir, recorded=False, complete=False)
    parts = []
    for record in state.get("processes", []):
        proc = ManagedProcess.from_record(record)
        alive = proc.alive() and (proc.port is None or port_open(proc.port))
        parts.append(PartStatus(proc.name, proc.pid, proc.port, alive, str(proc.log_path)))
    return StackStatus(state_dir, True, bool(state.get("complete")), parts, state.get("ready_s"))


def read_env(state_dir: Path) -> dict[str, str]:
    """The connection settings of the stack running in ``state_dir``."""
    path = env_file(Path(state_dir).resolve())
    try:
        return read_env_file(path)
    except FileNotFoundError as e:
        raise StackError(f"no local stack env file at {path}: run `spotleash local up` first") from e


# ---------------------------------------------------------------------------- one part at a time
def _part_env_and_cwd(state_dir: Path, name: str) -> tuple[dict[str, str], Path | None]:
    """The environment and working directory ``up`` gave part ``name`` (rebuilt from stack.env)."""
    marker = {MARKER_VAR: str(state_dir)}
    if name in ("pubsub", "firestore", gcs.NAME):
        return {**emulators._env(), **marker}, None
    base = {k: v for k, v in os.environ.items() if not k.startswith("SPOTLEASH_") and k not in EMULATOR_VARS}
    env = {**base, **read_env(state_dir), **marker, "PYTHONUNBUFFERED": "1"}
    return env, (REPO_ROOT if name in _FAKE_MODULES else functions_source().parent)


def _part_ready_check(name: str, port: int | None) -> Any:
    if port is None:
        return None
    if name == "scheduler":
        return lambda: _scheduler_ready(port)
    if name == "billing":
        return lambda: _billing_ready(port)
    if name in _FAKE_MODULES:
        return lambda: _http_ready(f"http://{LOOPBACK}:{port}/_control/health", want_200=True)
    if name == gcs.NAME:
        return lambda: gcs.ready(port)
    if name == "firestore":
        return emulators.firestore_ready(port)
    if name == "pubsub":
        return lambda: port_open(port)
    return lambda: _http_ready(f"http://{LOOPBACK}:{port}/_spotleash/ready", want_200=False)


def _recorded(state_dir: Path, name: str) -> tuple[dict[str, Any], int]:
    state = _read_state(state_dir)
    if state is None:
        raise StackError(f"no local stack recorded in {state_dir}")
    for i, record in enumerate(state.get("processes", [])):
        if record.get("name") == name:
            return state, i
    names = [r.get("name") for r in state.get("processes", [])]
    raise StackError(f"no part {name!r} in the stack in {state_dir}; parts: {names}")


LAUNCHERS = ("on_demand", "on_heartbeat", "on_reap")  # the functions that launch instances


def set_launcher_env(state_dir: Path, values: Mapping[str, str | None]) -> None:
    """The launchers restarted with ``values`` in their environment (None: the variable removed, its default)."""
    path = env_file(state_dir)
    lines = [ln for ln in path.read_text().splitlines() if ln.split("=", 1)[0] not in values]
    path.write_text("\n".join([*lines, *(f"{k}={v}" for k, v in values.items() if v is not None)]) + "\n")
    for name in LAUNCHERS:  # one at a time: each restart rewrites stack.json
        restart(state_dir, name)


def kill_part(state_dir: Path, name: str, *, timeout: float = 10.0) -> bool:
    """Stop one recorded part's whole process group (SIGTERM, then SIGKILL). True if it was running."""
    state_dir = Path(state_dir).resolve()
    state, i = _recorded(state_dir, name)
    return ManagedProcess.from_record(state["processes"][i]).stop(timeout=timeout)


def restart(state_dir: Path, name: str, *, timeout: float = READY_TIMEOUT_S) -> ManagedProcess:
    """Stop part ``name`` (if it still runs) and start it again with the same argv, env and port.

    stack.json is updated with the new process. Emulators keep their data in memory: a restarted
    Firestore or Pub/Sub emulator starts empty (and a restarted Pub/Sub emulator has no topics).
    """
    state_dir = Path(state_dir).resolve()
    state, i = _recorded(state_dir, name)
    old = ManagedProcess.from_record(state["processes"][i])
    old.stop()
    if not old.argv:
        raise StackError(f"{name} has no recorded argv: it cannot be restarted")
    env, cwd = _part_env_and_cwd(state_dir, name)
    proc = spawn(name, old.argv, log_path=old.log_path, port=old.port, env=env, cwd=cwd)
    try:
        wait_ready(proc, timeout=timeout, check=_part_ready_check(name, old.port))
    finally:
        state, i = _recorded(state_dir, name)
        state["processes"][i] = proc.to_record()
        _write_atomic(stack_file(state_dir), json.dumps(state, indent=2))
    log.info("part restarted", part=name, pid=proc.pid, port=proc.port)
    return proc
