"""The agent's router: built from the app's components, started with the agent, stopped in its shutdown.

Every component of ``spotleash.toml`` with a ``route_port`` (and named in ``settings.components``) gets a
stable loopback port; the app talks to it, the router (``spotleash.router``) sends each request to the
local copy (``local_url``) or to the copy on a READY instance of this lease. The agent makes the lease's
route credential here at start; only its sha256 goes into demands (and from there to the instance's TLS
front), the credential itself stays in this process.

The router's admin port (``settings.router_admin_port``, loopback) serves ``/routes`` (what ``spotleash
status`` shows) and ``/metrics`` (Prometheus text).

Shutdown order (``agent.shutdown``): ``release_lease()`` first, so new requests go local at once; then
``wait_drained()`` while remote ones in flight finish (at most ``DRAIN_SHARE`` of the shutdown budget);
then the release is published (the control plane deletes the instances at once); then ``stop()``.

A remote copy that stops answering without notice makes the agent publish a focused reap tick
(``agent.loss``), so an outbid or deleted box is replaced without waiting for the scheduler's reap.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from spotleash.adapters.pubsub import EventPublisher
from spotleash.agent.loss import LossReporter
from spotleash.agent.shutdown import DRAIN_SHARE
from spotleash.agent.wake import Waker
from spotleash.config import CONFIG_FILE_VAR
from spotleash.errors import ConfigError
from spotleash.log import get_logger
from spotleash.packaging import appspec
from spotleash.router import ComponentRoute, Limits, RouterConfig, RouterService, firestore_watch
from spotleash.router.channel import credential_hash, new_credential
from spotleash.router.service import WatchFactory
from spotleash.router.table import LocalMode

if TYPE_CHECKING:
    from spotleash.config import Settings
    from spotleash.packaging.appspec import LoadedApp
    from spotleash.wire.package import AppSpec

log = get_logger(__name__)



def component_routes(app: AppSpec, names: list[str]) -> tuple[ComponentRoute, ...]:
    """The routed components: those of ``names`` whose spec has a ``route_port``, in ``names`` order."""
    routes = []
    for name in names:
        spec = next((c for c in app.components if c.name == name), None)
        if spec is None or spec.route_port is None:
            continue
        routes.append(ComponentRoute(name=name, listen_port=spec.route_port, local_url=spec.local_url,
                                     health_path=spec.health_path))
    return tuple(routes)


def app_of_settings() -> LoadedApp | None:
    """The ``[app]`` of the settings file (``SPOTLEASH_CONFIG_FILE`` or ``spotleash.toml`` upward), if any, with
    the file and the app tree it names (not checked here: only local copies the agent runs need it)."""
    path = appspec.find_config_file(os.environ.get(CONFIG_FILE_VAR))
    if path is None or not path.is_file():
        return None
    raw = appspec.read_toml(path)
    if "app" not in raw:
        return None
    spec = appspec.parse_app(raw["app"], path)
    return appspec.LoadedApp(spec=spec, config_file=path.resolve(), root=(path.parent / spec.dir).resolve(),
                             artifacts=appspec.artifact_paths(spec, path.resolve()))


@dataclass
class AgentRouter:
    """The running router of one agent and the hash of its credential (what demands carry)."""

    service: RouterService
    credential_sha256: str
    waker: Waker | None = None  # SPOTLEASH_WAKE_ON_REQUEST: requests wake a hibernated lease
    changed: threading.Event = field(default_factory=threading.Event)  # set at every route change (the hand-off)

    def routes(self) -> dict[str, dict[str, Any]]:
        return self.service.routes()

    # --- the hand-off's hooks (agent.handoff)
    def set_local_mode(self, component: str, mode: LocalMode) -> None:
        self.service.set_local_mode(component, mode)

    def wait_local_drained(self, component: str, timeout_s: float) -> bool:
        return self.service.wait_local_drained(component, timeout_s)

    def reopen_lease(self) -> None:
        self.service.reopen_lease()

    # --- the shutdown's hooks (agent.shutdown.RouterHooks)
    def release_lease(self) -> None:
        self.service.release_lease()

    def wait_drained(self, timeout_s: float) -> bool:
        return self.service.wait_drained(timeout_s)

    def stop(self) -> None:
        self.service.stop()


def router_config(settings: Settings, routes: tuple[ComponentRoute, ...], credential: str,
                  waker: Waker | None = None, losses: LossReporter | None = None,
                  changed: threading.Event | None = None) -> RouterConfig:
    return RouterConfig(components=routes, credential=credential, admin_port=settings.router_admin_port,
                        limits=Limits(drain_s=max(settings.shutdown_budget_s * DRAIN_SHARE, 0.5),
                                      hold_s=settings.router_hold_s),
                        on_request=waker.requested if waker is not None else None,
                        on_remote_lost=losses.lost if losses is not None else None,
                        on_route_change=changed.set if changed is not None else None)


def firestore_records(settings: Settings, lease_id: str, waker: Waker | None = None) -> WatchFactory:
    """The listener on this lease's instance records (Firestore, or its emulator when the env names one);
    with a ``waker``, on the lease's hibernation document too, and the waker sees every record set."""
    from google.cloud import firestore

    client = firestore.Client(project=settings.project)
    if waker is None:
        return firestore_watch(client, lease_id)
    return firestore_watch(client, lease_id, on_records_too=waker.records_changed,
                           on_hibernation=waker.hibernation_changed)


def start_router(settings: Settings, lease_id: str, app: AppSpec | None, *,
                 watch_factory: WatchFactory | None = None,
                 publisher: EventPublisher | None = None) -> AgentRouter | None:
    """Start the router for the app's routed components; None when none is routed. With a ``publisher``, a
    remote copy lost without notice makes the agent ask for a check of its instance (``agent.loss``).

    ConfigError when a port is taken (another agent, or the app itself on its route port), or when
    ``wake_on_request`` is on but no component is routed (no request could ever wake the lease).
    """
    routes = component_routes(app, list(settings.components)) if app is not None else ()
    if not routes:
        if settings.wake_on_request:
            raise ConfigError("SPOTLEASH_WAKE_ON_REQUEST is on, but no component of the app's [app] table (named "
                              "in SPOTLEASH_COMPONENTS) has a route_port, so no request reaches the router to wake "
                              "a hibernated lease: give a component a route_port, or set SPOTLEASH_WAKE_ON_REQUEST"
                              "=false")
        log.info("no component has a route_port: requests are not routed", lease_id=lease_id)
        return None
    credential = new_credential()
    waker = Waker(retry_s=settings.demand_cooldown_s, deployment_id=settings.deployment_id) if settings.wake_on_request else None
    if watch_factory is None:
        try:
            watch_factory = firestore_records(settings, lease_id, waker)
        except Exception as e:  # noqa: BLE001 - e.g. no credentials: route locally, say why
            log.error("cannot read this lease's instance records; the router routes to the local copies only",
                      lease_id=lease_id, error=f"{type(e).__name__}: {e}"[:300])
    losses = LossReporter(lease_id, publisher) if publisher is not None else None
    changed = threading.Event()
    service = RouterService(router_config(settings, routes, credential, waker, losses, changed),
                            watch_factory=watch_factory)
    try:
        addresses = service.start()
    except OSError as e:
        service.stop()
        raise ConfigError(f"the router cannot listen on its ports ({e}); is another agent running, or does "
                          f"a component already use its route_port?") from e
    log.info("router started", lease_id=lease_id,
             routes={n: "{}:{}".format(*a) for n, a in addresses.items()},
             admin=f"127.0.0.1:{settings.router_admin_port}" if settings.router_admin_port else None,
             wake_on_request=waker is not None)
    return AgentRouter(service, credential_hash(credential), waker, changed)
