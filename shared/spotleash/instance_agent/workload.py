"""The job an instance is rented for: its package fetched, verified, installed and supervised.

``Workload.start()`` runs fetch → verify → extract → venv → offline install on a thread of its own
(heartbeats keep going meanwhile, reporting every launched component ``starting``), then hands the
components to the ``Supervisor``. What the heartbeat carries comes from ``snapshot()``: each
component's report and, if the package could not be run at all, the instance's failure. Any change
calls ``on_change`` so the agent beats at once instead of at its next interval.

With a route credential in its config the instance runs the router's authenticating TLS front
(``instance_agent.front``): started before the components, on the instance's one open port, it is the
endpoint every component reports; components get ``HOST=127.0.0.1`` and are reached only through it,
and the heartbeat carries its certificate's fingerprint (``tls_fingerprint``).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from spotleash.instance_agent import bootstrap, package
from spotleash.instance_agent.bootstrap import Installer, PackageFailure
from spotleash.instance_agent.environment import component_env
from spotleash.instance_agent.front_config import FrontConfig
from spotleash.instance_agent.metadata import MetadataClient, MetadataError
from spotleash.instance_agent.package import Prepared
from spotleash.log import get_logger
from spotleash.supervisor import ComponentRunner, Supervisor
from spotleash.wire.events import ComponentReport, InstanceFailure

if TYPE_CHECKING:
    from spotleash.instance_agent.front import FrontThread
    from spotleash.wire.agent_config import AgentConfig

log = get_logger(__name__)

T = TypeVar("T")
Endpoint = Callable[[int], str]  # a component's local port → host:port reachable by the user's machine


def endpoint_for(advertise_host: str, env: Mapping[str, str], external_ip: str | None = None) -> Endpoint:
    """``advertise_host`` when configured (the fakes: loopback); on VAST the public address and the
    port VAST maps to ours (``PUBLIC_IPADDR``, ``VAST_TCP_PORT_<port>``); on GCE the external IP."""
    host = advertise_host or env.get("PUBLIC_IPADDR") or external_ip or "127.0.0.1"

    def endpoint(port: int) -> str:
        mapped = env.get(f"VAST_TCP_PORT_{port}") if not advertise_host else None
        return f"{host}:{mapped or port}"

    return endpoint


class LiveComponents(Mapping[str, T]):
    """Component → one fact of its runner now (``of``): the supervisor starts after the front, and may choose
    another port than declared."""

    def __init__(self, workload: Workload, of: Callable[[ComponentRunner], T]) -> None:
        self._w = workload
        self._of = of

    def _facts(self) -> dict[str, T]:
        sup = self._w.supervisor
        return {r.launch.name: self._of(r) for r in sup.runners} if sup is not None else {}

    def __getitem__(self, name: str) -> T:
        return self._facts()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._facts())

    def __len__(self) -> int:
        return len(self._facts())


def _port(r: ComponentRunner) -> int:
    return r.port


def _health_path(r: ComponentRunner) -> str:
    return r.launch.health_path


def _log_path(r: ComponentRunner) -> Path:
    return r.log_path


class Workload:
    def __init__(
        self,
        *,
        sha256: str,
        source: Callable[[], bootstrap.Source | bootstrap.Origin],
        components: list[str],
        instance_id: str,
        work_dir: Path,
        endpoint: Endpoint,
        on_change: Callable[[], None] = lambda: None,
        installer: Installer | None = None,
        env: Mapping[str, str] | None = None,
        package_root: Path | None = None,
        front: FrontConfig | None = None,
        fetch_retry_s: float = 300.0,
        before_components: Callable[[Prepared], InstanceFailure | None] | None = None,
    ) -> None:
        self.sha256 = sha256
        self._source = source
        self.wanted = list(components)
        self.instance_id = instance_id
        self.work_dir = work_dir
        self._endpoint = endpoint
        self._on_change = on_change
        self.installer = installer or Installer(warm=False)  # this agent runs already: no import of the venv's
        self._env = dict(os.environ if env is None else env)
        self.fetch_retry_s = fetch_retry_s
        self.package_root = package_root  # already fetched, verified and installed (by the bootstrap)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.failure: InstanceFailure | None = None
        self.supervisor: Supervisor | None = None
        self.prepared: Prepared | None = None
        self.started_at, self.timings = boot_timings(self._env) if package_root is not None else (utcnow(), {})
        self._thread: threading.Thread | None = None
        self._t0 = time.monotonic()
        self._all_healthy_logged = False
        self._front_config = front
        self.front: FrontThread | None = None
        self.front_address: tuple[str, int] | None = None
        # Runs after the package is ready and before any component starts (the snapshot restore); a
        # failure it returns fails the instance and no component starts.
        self._before_components = before_components
        self.state_paths: list[Path] = []  # set by ``before_components``; told to components (component_env)

    @property
    def last_request_at(self) -> float | None:
        """``time.monotonic()`` of the last request the front admitted (None: none yet, or no front)."""
        return self.front.front.last_request_at if self.front is not None else None

    @property
    def tls_fingerprint(self) -> str | None:
        return self.front.fingerprint if self.front is not None and self.front_address is not None else None

    def _component_endpoint(self, port: int) -> str:
        """What a component's report names: the front's address when there is one (the only way in)."""
        return self._endpoint(self.front_address[1] if self.front_address is not None else port)

    def _start_front(self, cfg: FrontConfig) -> None:
        # here, not at the top: aiohttp and the router's channel load only on an instance that runs a front (the
        # bootstrap's warm import compiled them when its config names a route credential)
        from spotleash.instance_agent.front import FrontThread

        front = FrontThread(FrontConfig(
            components=LiveComponents(self, _port), credential_sha256=cfg.credential_sha256,
            listen_host=cfg.listen_host, listen_port=cfg.listen_port, common_name=self.instance_id or "spotleash",
            quiet_paths=LiveComponents(self, _health_path), log_paths=LiveComponents(self, _log_path)))
        # A taken port is another fake instance on this machine (its endpoint is loopback: the fakes' VMs
        # advertise 127.0.0.1); a real instance has its port to itself, and a taken one is a failure.
        advertised = self._endpoint(cfg.listen_port).rsplit(":", 1)[0]
        on_this_machine = any(h.startswith("127.") or h == "localhost" for h in (cfg.listen_host, advertised))
        self.front_address = front.start_on(cfg.listen_port, fallback_to_any=on_this_machine)
        self.front = front
        self._env["HOST"] = "127.0.0.1"  # components: loopback only, the front is the instance's way in

    # ------------------------------------------------------------------ what the heartbeat carries
    def snapshot(self) -> tuple[dict[str, ComponentReport], InstanceFailure | None]:
        with self._lock:
            sup, failure = self.supervisor, self.failure
        if sup is not None:
            reports = sup.reports()
            self._note_all_healthy(reports)
            return reports, failure
        state = "failing" if failure else "starting"
        error = f"{failure.reason}: {failure.detail}"[:500] if failure else None
        return {n: ComponentReport(state=state, error=error) for n in self.wanted}, failure

    def _note_all_healthy(self, reports: dict[str, ComponentReport]) -> None:
        if self._all_healthy_logged or not reports or any(r.state != "healthy" for r in reports.values()):
            return
        self._all_healthy_logged = True
        self.timings["to_healthy_s"] = round(time.monotonic() - self._t0, 3)
        log.info("all components healthy", instance_id=self.instance_id, sha256=self.sha256, **self.timings)

    # ------------------------------------------------------------------ the work
    def start(self) -> None:
        self._t0 = time.monotonic()
        if self._front_config is not None:
            try:
                self._start_front(self._front_config)
            except OSError as e:
                with self._lock:
                    self.failure = InstanceFailure(reason="front_failed", detail=f"{type(e).__name__}: {e}"[:500])
                log.error("the TLS front cannot start; components stay off", instance_id=self.instance_id,
                          detail=str(e)[:300])
                self._on_change()
                return
        self._thread = threading.Thread(target=self._run, name="workload", daemon=True)
        self._thread.start()

    def _step(self, name: str, since: float) -> float:
        now = time.monotonic()
        self.timings[f"{name}_s"] = round(now - since, 3)
        return now

    def _run(self) -> None:
        t = time.monotonic()
        try:
            if self.package_root is not None:
                prepared = package.prepared(self.package_root)
            else:
                got = self._source()
                origin = got if isinstance(got, bootstrap.Origin) else bootstrap.Origin(got)
                root, raw, steps = bootstrap.obtain(origin, self.sha256, self.work_dir, self.installer,
                                                    retry_budget_s=self.fetch_retry_s)
                self.timings.update(steps)
                t = time.monotonic()
                prepared = package.prepared(root, raw)
            launches = package.launches(prepared.manifest, self.wanted)
            if self._before_components is not None:
                failed = self._before_components(prepared)
                t = self._step("restore", t)
                if failed is not None:
                    raise PackageFailure(failed.reason, failed.detail)
            if self.package_root is not None:  # the app's requirements, installing since the agent's start
                waited = time.monotonic()
                rest = bootstrap.finish_rest(self.package_root)
                if rest:  # rest_wait_s: how much of to_healthy_s was the install's (the rest ran beside it)
                    self.timings["rest_wait_s"] = round(time.monotonic() - waited, 3)
                    self.timings["app_s"] = rest["app_s"]
                    self.timings["install_s"] = round(self.timings.get("install_s", 0.0) + rest["since_handover_s"], 3)
            if self._stopping.is_set():
                return
            sup = Supervisor(
                launches, cwd=prepared.app_dir, env=component_env(self._env, prepared.venv, self.instance_id,
                                                                  self.state_paths, prepared.artifact_env()),
                log_dir=self.work_dir / "logs", endpoint=self._component_endpoint, on_change=self._on_change,
            )
            with self._lock:
                if self._stopping.is_set():
                    return
                self.prepared, self.supervisor = prepared, sup
                self.wanted = [launch.name for launch in launches]
                sup.start()  # under the lock: a stop() now waits for it, then stops what it started
            log.info("components started", instance_id=self.instance_id, root=str(prepared.root),
                     components=self.wanted, **self.timings)
        except PackageFailure as e:
            if self._stopping.is_set():
                return
            with self._lock:
                self.failure = InstanceFailure(reason=e.reason, detail=e.detail[:500])
            log.error("the package cannot run; this instance is useless", instance_id=self.instance_id,
                      reason=e.reason, detail=e.detail)
            self._on_change()

    def stop(self) -> None:
        """Stop everything this workload started (install steps included); idempotent."""
        with self._lock:
            self._stopping.set()
            sup = self.supervisor
        self.installer.cancel()
        bootstrap.cancel_rest()
        if sup is not None:
            sup.stop()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        if self.front is not None:
            self.front.stop()


def utcnow() -> datetime:
    return datetime.now(UTC)


def boot_timings(env: Mapping[str, str]) -> tuple[datetime, dict[str, float]]:
    """(when the bootstrap started, its step durations) from what it handed over (``TIMINGS_ENV``); now and
    nothing when it handed over nothing readable."""
    try:
        raw = json.loads(env.get(bootstrap.TIMINGS_ENV) or "{}")
        started = datetime.fromisoformat(str(raw.pop("started_at")))
        steps = {str(k): float(v) for k, v in raw.items() if str(k).endswith("_s")}
    except (ValueError, KeyError, TypeError, AttributeError):
        return utcnow(), {}
    return (started if started.tzinfo else started.replace(tzinfo=UTC)), steps


DEFAULT_WORK_ROOT = Path(tempfile.gettempdir())
EXTERNAL_IP_PATH = "instance/network-interfaces/0/access-configs/0/external-ip"


def _external_ip(md: MetadataClient | None) -> str | None:
    if md is None:
        return None
    try:
        got = md.get(EXTERNAL_IP_PATH)
    except MetadataError:
        return None
    return got[0].strip() or None if got else None


def workload_for(
    cfg: AgentConfig,
    md: MetadataClient | None,
    work_dir: Path | None,
    *,
    on_change: Callable[[], None],
    env: Mapping[str, str] | None = None,
    package_root: Path | None = None,
    before_components: Callable[[Prepared], InstanceFailure | None] | None = None,
) -> Workload:
    """The workload a config names: GCS through the metadata token (GCE), the emulator, or a signed URL."""
    environ = dict(os.environ if env is None else env)

    def source() -> bootstrap.Origin:
        return bootstrap.origin_for(cfg.package_uri, cfg.package_url, cfg.blob_urls, env=environ,
                                    token=bootstrap.metadata_token(environ) if md is not None else None)

    return Workload(
        sha256=cfg.package_sha256, source=source, components=list(cfg.components), instance_id=cfg.instance_id,
        work_dir=work_dir or DEFAULT_WORK_ROOT / f"spotleash-{cfg.instance_id or 'instance'}",
        endpoint=endpoint_for(cfg.advertise_host, environ, _external_ip(md) if not cfg.advertise_host else None),
        on_change=on_change, env=environ, package_root=package_root, front=front_config(cfg),
        fetch_retry_s=cfg.package_fetch_retry_s,
        before_components=before_components,
    )


def front_config(cfg: AgentConfig) -> FrontConfig | None:
    """The TLS front a config asks for (its components are filled in by the workload), or None."""
    if not cfg.route_credential_sha256:
        return None
    loopback = cfg.advertise_host.startswith("127.") or cfg.advertise_host == "localhost"
    return FrontConfig(components={}, credential_sha256=cfg.route_credential_sha256,
                       listen_host="127.0.0.1" if loopback else "0.0.0.0",  # noqa: S104 - TLS + credential
                       listen_port=cfg.front_port, common_name=cfg.instance_id or "spotleash")
