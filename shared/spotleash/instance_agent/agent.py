"""The instance agent: heartbeats, the preemption watch (GCE), an optional backend child.

What a heartbeat's reply means is the pure function ``interpret_beat_reply``; everything else is plumbing.
Failures to reach the control plane are logged and retried at the next interval — the agent never
crashes on them. It exits 0 when told to stop (answer ``{"action":"stop"}``, 401/404/410) or on SIGTERM.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from pathlib import Path

import httpx
import psutil
from pydantic import ValidationError

from spotleash.events import Heartbeat
from spotleash.instance_agent.config import CONFIG_KEY, TOKEN_KEY, AgentConfig, from_env
from spotleash.instance_agent.metadata import MetadataClient, MetadataError
from spotleash.instance_agent.workload import Workload, workload_for
from spotleash.log import get_logger
from spotleash.providers import AgentTransport

log = get_logger("spotleash.instance_agent")

IDLE_POLL_S = 5.0
STOP_STATUSES = frozenset({401, 404, 410})
BACKEND_GRACE_S = 5.0


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
    ) -> None:
        self.provider = provider
        self._load = load
        self._metadata = metadata
        self._http = http or httpx.Client(timeout=10.0, trust_env=False)
        self.stop_event = stop or threading.Event()
        self.wake = threading.Event()
        self.preempted = False
        self.config: AgentConfig | None = None
        self._token = ""
        self.backend: Backend | None = None
        self.beats_sent = 0
        self.work_dir = work_dir
        self.package_root = package_root
        self.workload: Workload | None = None

    # ------------------------------------------------------------------ one heartbeat
    def heartbeat(self) -> BeatOutcome:
        cfg = self.config
        assert cfg is not None
        components, failure = self.workload.snapshot() if self.workload else ({}, None)
        try:
            beat = Heartbeat(
                lease_id=cfg.lease_id,
                instance_id=cfg.instance_id,
                preempted=self.preempted,
                backend_alive=self.backend.alive if self.backend else True,
                cpu_percent=psutil.cpu_percent(interval=None),
                components=components,
                failure=failure,
                tls_fingerprint=self.workload.tls_fingerprint if self.workload else None,
                started_at=self.workload.started_at if self.workload else None,
                timings=dict(self.workload.timings) if self.workload else {},
            )
        except ValidationError as e:
            log.error("cannot build a heartbeat from the config", reason=str(e)[:300])
            return BeatOutcome.RETRY
        status: int | None = None
        body: str | None = None
        try:
            r = self._http.post(
                cfg.heartbeat_url,
                content=beat.model_dump_json(),
                headers={"Authorization": f"Bearer {self._token}", "Content-Type": "application/json"},
            )
            status, body = r.status_code, r.text
        except httpx.HTTPError as e:
            log.warning("heartbeat failed", instance_id=cfg.instance_id, reason=type(e).__name__, detail=str(e)[:200])
        action = interpret_beat_reply(status, body)
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
        if cfg and cfg.package_sha256 and self.workload is None:
            self.workload = workload_for(cfg, self._metadata, self.work_dir, on_change=self.wake.set,
                                         package_root=self.package_root)
            self.workload.start()

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
                    if self.heartbeat() is BeatOutcome.STOP:
                        reason = "told to stop"
                        break
                self.wake.wait(timeout=interval)
                self.wake.clear()
        finally:
            self.stop_event.set()
            if self.workload:
                self.workload.stop()
            if self.backend:
                self.backend.stop()
            log.info("instance agent exiting", reason=reason, beats=self.beats_sent)
        return 0

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


def deadline_passed(cfg: AgentConfig, now: datetime) -> bool:
    return cfg.deadline is not None and now >= cfg.deadline
