"""The instance agent: heartbeats, the preemption watch (GCE), snapshots, an optional backend child.

What a heartbeat's reply means is the pure functions ``interpret_beat_reply`` and ``snapshot_request_of``;
everything else is plumbing. Snapshots and the restore at boot run on the ``SnapshotKeeper``'s thread
(``instance_agent.keeper``): an instance with a package restores before its components start, one
without restores at once; a reply's ``snapshot_request`` and the preemption notice queue a snapshot
there. Each beat carries ``idle_s`` (``instance_agent.idle`` has the rule) and the GPUs' readings.
Failures to reach the control plane are logged and retried at the next interval — the agent never
crashes on them. It exits 0 when told to stop (answer ``{"action":"stop"}``, 401/404/410) or on SIGTERM.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum
from pathlib import Path

import httpx
from pydantic import ValidationError

from spotleash.instance_agent.idle import CpuMeter, GpuProbe, IdleClock
from spotleash.instance_agent.keeper import SnapshotKeeper, resolve_state_paths
from spotleash.instance_agent.metadata import MetadataClient, MetadataError
from spotleash.instance_agent.package import Prepared
from spotleash.instance_agent.snapshot.channel import HeartbeatChannel
from spotleash.instance_agent.snapshot.common import SnapshotError
from spotleash.instance_agent.workload import DEFAULT_WORK_ROOT, Workload, workload_for
from spotleash.log import get_logger
from spotleash.providers import AgentTransport
from spotleash.signal_event import SignalEvent
from spotleash.wire.agent_config import CONFIG_KEY, TOKEN_KEY, AgentConfig, from_env
from spotleash.wire.events import GpuReport, Heartbeat, InstanceFailure
from spotleash.wire.snapshot import SNAPSHOT_REQUEST_FIELD, SnapshotAsk, SnapshotRequest

log = get_logger(__name__)

IDLE_POLL_S = 5.0
STOP_STATUSES = frozenset({401, 404, 410})
BACKEND_GRACE_S = 5.0
STOP_CHECK_S = 0.05  # how often a loop waiting on a heartbeat's reply looks for a stop


class BeatOutcome(StrEnum):
    """What the instance agent does after one heartbeat (not the laptop agent's ``TriggerAction``)."""


    CONTINUE = "continue"
    STOP = "stop"
    RETRY = "retry"  # the heartbeat did not get through; try again next interval


def interpret_beat_reply(status_code: int | None, body: str | None) -> BeatOutcome:
    """What the control plane's reply to one heartbeat means (``status_code`` None = no reply at all)."""
    if status_code is None:
        return BeatOutcome.RETRY
    if status_code in STOP_STATUSES:
        return BeatOutcome.STOP
    if not 200 <= status_code < 300:
        return BeatOutcome.RETRY
    try:
        data = json.loads(body or "{}")
    except json.JSONDecodeError:
        return BeatOutcome.CONTINUE
    if isinstance(data, dict) and data.get("action") == "stop":
        return BeatOutcome.STOP
    return BeatOutcome.CONTINUE


def snapshot_request_of(status_code: int | None, body: str | None) -> SnapshotRequest | None:
    """The ``SnapshotRequest`` a 2xx heartbeat reply carries (``wire.snapshot.SNAPSHOT_REQUEST_FIELD``), or None;
    a malformed one is logged and ignored (the control plane repeats a request until it is served)."""
    if status_code is None or not 200 <= status_code < 300:
        return None
    try:
        data = json.loads(body or "{}")
    except json.JSONDecodeError:
        return None
    raw = data.get(SNAPSHOT_REQUEST_FIELD) if isinstance(data, dict) else None
    if raw is None:
        return None
    try:
        return SnapshotRequest.model_validate(raw)
    except ValidationError as e:
        log.warning("heartbeat reply carries a malformed snapshot request; ignored", reason=str(e)[:300])
        return None


def parse_config(raw: str | None) -> AgentConfig | None:
    if not raw:
        return None
    try:
        return AgentConfig.parse(raw)
    except ValidationError as e:
        log.error("agent config is invalid; idling", reason=str(e)[:300])
        return None


class Backend:
    """The optional app the box exists for, run as a child in the agent's process group."""

    def __init__(self, cmd: list[str] | None) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        if cmd:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)  # noqa: S603 - cmd is our config
            log.info("backend started", pid=self._proc.pid)

    @property
    def alive(self) -> bool:
        return self._proc is None or self._proc.poll() is None

    def stop(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=BACKEND_GRACE_S)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=BACKEND_GRACE_S)
        log.info("backend stopped", returncode=self._proc.returncode)


ConfigSource = Callable[[], "tuple[AgentConfig | None, str]"]


class InstanceAgent:
    def __init__(
        self,
        provider: str,
        load: ConfigSource,
        *,
        metadata: MetadataClient | None = None,
        http: httpx.Client | None = None,
        stop: threading.Event | None = None,
        work_dir: Path | None = None,
        package_root: Path | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.provider = provider
        self._environ = dict(os.environ if environ is None else environ)  # where SPOTLEASH_VM_ROOT is read
        self._load = load
        self._metadata = metadata
        self._http = http or httpx.Client(timeout=10.0, trust_env=False)
        self.stop_event = stop or SignalEvent()  # both set by the SIGTERM handler (request_stop)
        self.wake = SignalEvent()
        self.preempted = False
        self.config: AgentConfig | None = None
        self._token = ""
        self.backend: Backend | None = None
        self.beats_sent = 0
        self.work_dir = work_dir
        self.package_root = package_root
        self.workload: Workload | None = None
        self.keeper: SnapshotKeeper | None = None
        self.idle: IdleClock | None = None
        self.idle_s = 0.0
        self._cpu = 0.0
        self._gpu = GpuProbe()
        self._gpus: list[GpuReport] = []  # the GPUs' readings at the last beat (instance_agent.idle)
        self._cpu_meter: CpuMeter | None = None

    # ------------------------------------------------------------------ one heartbeat
    def build_beat(self, snapshot: SnapshotAsk | None = None) -> Heartbeat:
        """This instance's heartbeat now (ValidationError when the config cannot make one)."""
        cfg = self.config
        assert cfg is not None
        components, failure = self.workload.snapshot() if self.workload else ({}, None)
        if failure is None and self.keeper is not None:
            failure = self.keeper.failure
        return Heartbeat(
            lease_id=cfg.lease_id,
            instance_id=cfg.instance_id,
            preempted=self.preempted,
            backend_alive=self.backend.alive if self.backend else True,
            cpu_percent=self._cpu,
            idle_s=self.idle_s,
            components=components,
            failure=failure,
            tls_fingerprint=self.workload.tls_fingerprint if self.workload else None,
            started_at=self.workload.started_at if self.workload else None,
            timings=dict(self.workload.timings) if self.workload else {},
            snapshot=snapshot,
            gpus=self._gpus,
        )

    def _sample_idle(self, cfg: AgentConfig) -> None:
        """CPU since the last beat, GPUs now and the front's last request → ``idle_s`` (instance_agent.idle);
        the GPUs' readings also go into the beat."""
        now = time.monotonic()
        if self._cpu_meter is None:
            self._cpu_meter = CpuMeter()
        self._cpu = self._cpu_meter.sample()
        if self.idle is None:
            self.idle = IdleClock(now, cpu_threshold=cfg.idle_cpu_percent, gpu_threshold=cfg.idle_gpu_percent)
        self._gpus = self._gpu.sample()
        self.idle_s = self.idle.observe(now, cpu_percent=self._cpu, gpus=self._gpus,
                                        last_request_at=self.workload.last_request_at if self.workload else None)

    def heartbeat(self) -> BeatOutcome:
        cfg = self.config
        assert cfg is not None
        self._sample_idle(cfg)
        try:
            beat = self.build_beat()
        except ValidationError as e:
            log.error("cannot build a heartbeat from the config", reason=str(e)[:300])
            return BeatOutcome.RETRY
        status: int | None = None
        body: str | None = None
        try:
            r = self._http.post(
                cfg.heartbeat_url,
                content=beat.wire_json(),
                headers={"Authorization": f"Bearer {self._token}", "Content-Type": "application/json"},
            )
            status, body = r.status_code, r.text
        except httpx.HTTPError as e:
            log.warning("heartbeat failed", instance_id=cfg.instance_id, reason=type(e).__name__, detail=str(e)[:200])
        action = interpret_beat_reply(status, body)
        request = snapshot_request_of(status, body)
        if request is not None and self.keeper is not None:
            self.keeper.ask("requested", request.request_id, request.reason)
        self.beats_sent += 1
        log.info(
            "heartbeat", instance_id=cfg.instance_id, lease_id=cfg.lease_id, event_id=beat.event_id,
            status=status, action=str(action), preempted=self.preempted,
        )
        return action

    # ------------------------------------------------------------------ the loop
    def _refresh_config(self) -> None:
        try:
            cfg, token = self._load()
        except MetadataError as e:
            log.warning("cannot read agent config yet", reason=str(e)[:200])
            return
        if cfg != self.config:
            log.info(
                "agent config loaded", instance_id=cfg.instance_id if cfg else None,
                heartbeats=bool(cfg and cfg.heartbeat_url),
            )
        self.config, self._token = cfg, token
        if cfg and cfg.backend_cmd and self.backend is None:
            self.backend = Backend(cfg.backend_cmd)
        if cfg and cfg.heartbeat_url and self.keeper is None:
            self.keeper = self._keeper_for(cfg, token)
            if not cfg.package_sha256:  # nothing to wait for: restore now (the package's restore waits for it)
                self._begin_keeper(cfg, ())
        if cfg and cfg.package_sha256 and self.workload is None:
            self.workload = workload_for(cfg, self._metadata, self.work_dir, on_change=self.wake.set,
                                         package_root=self.package_root, before_components=self._restore_before)
            self.workload.start()

    # ------------------------------------------------------------------ snapshots
    def _keeper_for(self, cfg: AgentConfig, token: str) -> SnapshotKeeper:
        work = self.work_dir or DEFAULT_WORK_ROOT / f"spotleash-{cfg.instance_id or 'instance'}"

        def beat(ask: SnapshotAsk) -> Heartbeat:
            return self.build_beat(ask)

        http = httpx.Client(timeout=120.0, trust_env=False)
        stop = threading.Event()
        return SnapshotKeeper(lease_id=cfg.lease_id, instance_id=cfg.instance_id,
                              channel=HeartbeatChannel(http, cfg.heartbeat_url, token, beat, stop=stop),
                              spool=work / "snapshot-spool", interval_s=cfg.snapshot_interval_s, http=http,
                              on_change=self.wake.set, stop=stop)

    def _begin_keeper(self, cfg: AgentConfig, declared: Sequence[str]) -> InstanceFailure | None:
        assert self.keeper is not None
        try:
            roots = resolve_state_paths(self.provider, cfg.state_paths, declared, self._environ)
        except SnapshotError as e:
            self.keeper.failure = InstanceFailure(reason="state_paths_invalid", detail=str(e)[:500])
            self.keeper.restored.set()
            return self.keeper.failure
        log.info("state paths", instance_id=cfg.instance_id, paths=[str(r) for r in roots],
                 snapshot_interval_s=cfg.snapshot_interval_s)
        self.keeper.begin(roots)
        return None

    def _restore_before(self, prepared: Prepared) -> InstanceFailure | None:
        """The workload's hook: restore the lease's state before any component starts."""
        cfg = self.config
        if cfg is None or self.keeper is None:
            return None
        # artifacts are in the bucket already: never packed, even when a state path holds the work dir
        self.keeper.leave_out = [*prepared.artifact_dirs, *([self.work_dir / "blobs"] if self.work_dir else [])]
        failed = self._begin_keeper(cfg, list(prepared.manifest.app.state_paths))
        if self.workload is not None:  # the components learn where their state survives (SPOTLEASH_STATE_PATHS)
            self.workload.state_paths = list(self.keeper.roots)
        return failed or self.keeper.wait_restored()

    def run(self) -> int:
        log.info("instance agent starting", provider=self.provider, pid=os.getpid())
        watcher: threading.Thread | None = None
        if self._metadata is not None:  # instance metadata is where GCE posts its preemption notice
            watcher = threading.Thread(target=self.watch_preemption, name="preemption-watch", daemon=True)
            watcher.start()
        reason = "terminated"
        try:
            while not self.stop_event.is_set():
                if self.config is None or not self.config.heartbeat_url:
                    self._refresh_config()  # idle: keep reading our metadata until there is work
                interval = IDLE_POLL_S
                if self.config is not None and self.config.heartbeat_url:
                    interval = self.config.heartbeat_interval_s
                    if self._beat_unless_stopped() is BeatOutcome.STOP:
                        reason = "told to stop"
                        break
                self.wake.wait(timeout=interval)
                self.wake.clear()
        finally:
            took: dict[str, float] = {}  # each part's way down, in seconds (a deletion waits for all of them)
            began = time.monotonic()
            if self.keeper is not None:
                if self.preempted:  # the state of a preempted box: its last chance to be saved
                    self.keeper.settle_preemption()
                self.keeper.stop()
                took["keeper_s"] = round(time.monotonic() - began, 3)
            self.stop_event.set()
            if self.workload:
                mark = time.monotonic()
                self.workload.stop()
                took["workload_s"] = round(time.monotonic() - mark, 3)
            if self.backend:
                mark = time.monotonic()
                self.backend.stop()
                took["backend_s"] = round(time.monotonic() - mark, 3)
            log.info("instance agent exiting", reason=reason, beats=self.beats_sent,
                     stop_s=round(time.monotonic() - began, 3), **took)
        return 0

    def _beat_unless_stopped(self) -> BeatOutcome | None:
        """``heartbeat()`` in a thread of its own, waited for until a stop is asked (then None): a SIGTERM that
        lands while the control plane takes its time answering a beat ends the agent now, not after the reply
        (up to the client's 10 s). A deletion waits for the guest to stop (GCE, and the Compute fake, which
        SIGKILLs a VM 3 s after its SIGTERM), so an agent that lingers makes every release slower. Not on a
        preempted box: its beat tells the control plane of the notice (the replacement starts from it)."""
        outcome: list[BeatOutcome] = []
        failed: list[BaseException] = []
        finished = threading.Event()

        def beat() -> None:
            try:
                outcome.append(self.heartbeat())
            except BaseException as e:  # noqa: BLE001 - raised again in the loop's thread, as before
                failed.append(e)
            finally:
                finished.set()

        threading.Thread(target=beat, name="heartbeat", daemon=True).start()
        while not finished.wait(STOP_CHECK_S):
            if self.stop_event.is_set() and not self.preempted:  # a preempted box's beat carries the notice: wait
                log.info("stop asked while a heartbeat waits for its reply; not waiting for it")
                return None
        if failed:
            raise failed[0]
        return outcome[0]

    def request_stop(self) -> None:
        self.stop_event.set()
        self.wake.set()

    # ------------------------------------------------------------------ GCE preemption watch
    def watch_preemption(self) -> None:
        assert self._metadata is not None
        etag: str | None = None
        while not self.stop_event.is_set():
            try:
                got = self._metadata.get("instance/preempted", wait_for_change=etag is not None, last_etag=etag, timeout_sec=30)
            except MetadataError as e:
                log.warning("preemption watch: metadata unavailable", reason=str(e)[:200])
                self.stop_event.wait(1.0)
                continue
            if got is None:
                log.warning("preemption watch: no instance/preempted key")
                self.stop_event.wait(5.0)
                continue
            value, etag = got[0].strip(), got[1] or None
            if value == "TRUE" and not self.preempted:
                self.preempted = True
                log.warning("preempted: the VM will be stopped or deleted within 30 s", reason="preempted")
                if self.keeper is not None:
                    self.keeper.ask("preempted", reason="GCE preemption notice")
                self.wake.set()  # heartbeat at once, with preempted=True


def gce_source(md: MetadataClient) -> ConfigSource:
    def load() -> tuple[AgentConfig | None, str]:
        return parse_config(md.attribute(CONFIG_KEY)), md.attribute(TOKEN_KEY) or ""

    return load


def env_source(environ: dict[str, str] | None = None) -> ConfigSource:
    env = environ if environ is not None else dict(os.environ)

    def load() -> tuple[AgentConfig | None, str]:
        raw, token = from_env(env)
        return parse_config(raw), token

    return load


def agent_for(provider: str, transport: AgentTransport, *, work_dir: Path | None = None,
              package_root: Path | None = None) -> InstanceAgent:
    """The agent of a box of ``provider``, reading its config the way that provider delivers it."""
    if transport == "metadata":
        md = MetadataClient()
        return InstanceAgent(provider, gce_source(md), metadata=md, work_dir=work_dir, package_root=package_root)
    return InstanceAgent(provider, env_source(), work_dir=work_dir, package_root=package_root)
