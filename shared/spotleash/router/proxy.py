"""The router's proxy: one loopback port per component, forwarding each request to the current target.

The target comes from the ``RouteTable`` (pure decisions); this module only acts on it:

- **Forwarding** streams both ways (aiohttp's server; to a copy over plain HTTP, the local one, the lean
  keep-alive client of ``router.lean``, to a remote copy over pinned TLS aiohttp's client): request bodies larger than
  ``Limits.replay_limit_bytes`` or without a length, response bodies always, including chunked ones
  and server-sent events, pass through chunk by chunk and are never held whole.
- **No request lost.** An attempt that fails before the response starts (refused, reset, TLS or
  fingerprint failure, no response headers within ``response_timeout_s``) is retried once on the other
  target when the request is idempotent (GET, HEAD, PUT, DELETE, OPTIONS, or an ``Idempotency-Key``)
  and its body could be replayed (it was small enough to keep); otherwise the client gets a 502 that
  says what failed and why it was not retried. A response that breaks after it started cannot be
  retried: the client's connection is cut, so a truncated body never looks complete.
- **Bounded drain.** When a target stops being the one (its instance ends, gets a preemption notice,
  fails its probes, the lease is released), new requests go to the new target at once; requests in
  flight on the old one may finish for up to ``drain_s``; then its connections are closed, and what is
  still waiting for a response is retried by the rule above. A target left because it stopped answering
  (``fall`` failed probes or forwards in a row: dead or frozen) is not drained: nothing in flight there
  will finish, so its connections close at once and those requests are retried now, not after ``drain_s``.
- **Panic routing.** When every copy of a component failed its probes, requests still go to the least bad
  one (``table.least_bad``: a copy that timed out is likely busy, not gone), counted in
  ``spotleash_router_panic_total``; a slow copy must not become a failed service. The 503 with
  ``Retry-After`` is for "no copy is there at all" (every one refused the connection, or none exists).
- **Limits** per target: a connection pool and at most ``max_in_flight`` requests (more wait up to
  ``queue_timeout_s``), a connect timeout, a response-start timeout and an idle timeout between body
  chunks. No target → 503 with ``Retry-After`` (or, with ``hold_s``, a wait for one; a request whose
  only target failed it waits the same way).
- **Probes**: every ``probe_interval_s`` the router probes the local copy and each remote copy the
  control plane calls healthy, on the component's health path — through the same pinned, credentialed
  channel the traffic uses. A failed forward counts as a failed probe. A remote copy that fails a probe
  without notice is handed to ``on_remote_lost`` (the agent asks for a focused reap: is it still there?).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import ClientResponse, web
from multidict import CIMultiDict
from yarl import URL

from spotleash.log import get_logger
from spotleash.router.channel import (
    COMPONENT_HEADER,
    CREDENTIAL_HEADER,
    FRONT_FAILURE_HEADER,
    INSTANCE_HEADER,
    LOG_END_HEADER,
    LOG_HEADER,
    LOG_ROTATED_HEADER,
)
from spotleash.router.forward import cut, is_idempotent, request_headers, stream_response
from spotleash.router.lean import ConnectFailed, LeanPool, LeanResponse
from spotleash.router.metrics import Metrics
from spotleash.router.records import remote_states
from spotleash.router.table import (
    Change,
    Failure,
    LocalMode,
    Policy,
    RemoteState,
    Route,
    RouteTable,
    TargetKind,
)

log = get_logger(__name__)

_ATTEMPT_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)
_PROBE_HEADROOM = 2  # connections beyond max_in_flight, so a busy target still gets its probes through
CONFIRM_AFTER_S = 0.2  # after a failed probe, the next one (not a tight loop on a refused connection)


@dataclass(frozen=True)
class Limits:
    connect_timeout_s: float = 3.0
    response_timeout_s: float = 60.0  # until the response headers arrive
    idle_timeout_s: float = 300.0  # between two reads of a body (long enough for quiet SSE streams)
    max_in_flight: int = 64  # per target
    queue_timeout_s: float = 5.0  # wait for a free slot at most this long, then 503
    drain_s: float = 20.0  # in-flight requests on a target going away may finish for this long
    replay_limit_bytes: int = 1 << 20  # bodies up to this size (with a length) are kept for a retry
    probe_interval_s: float = 1.0
    probe_timeout_s: float = 2.0
    retry_after_s: int = 2
    hold_s: float = 0.0  # no target can serve: wait this long for one (a wake, a replacement) before the 503
    keepalive_s: float = 4.0  # below common server keep-alive timeouts (uvicorn: 5 s): no stale reuse


@dataclass(frozen=True)
class ComponentRoute:
    """One component's stable local address and where its local copy runs."""

    name: str
    listen_port: int  # 0: any free port (tests)
    local_url: str | None  # e.g. http://127.0.0.1:8101; None: no local copy
    health_path: str = "/healthz"


@dataclass(frozen=True)
class RouterConfig:
    components: tuple[ComponentRoute, ...]
    credential: str  # the lease's credential, sent to instance fronts only (pinned TLS)
    listen_host: str = "127.0.0.1"
    admin_port: int | None = None  # /metrics, /routes, /logs/<component>; None: not served, 0: any free port
    limits: Limits = field(default_factory=Limits)
    policy: Policy = field(default_factory=Policy)
    # Told the component of every request as it arrives (the agent's wake-on-request; it must be quick and
    # must not raise: it runs in the router's event loop).
    on_request: Callable[[str], None] | None = None
    # Told (instance id, what failed) when a remote copy fails a probe without notice
    # (``table.suspect_without_notice``): the agent asks the control plane to check it. Runs in a worker
    # thread, never in the router's event loop, so it may block briefly (a publish).
    on_remote_lost: Callable[[str, str], object] | None = None
    # Told after every route change (the agent's hand-off wakes on it; it runs in the router's event loop, so
    # it must be quick and must not raise: setting a ``threading.Event`` is what it is for).
    on_route_change: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return f"RouterConfig(components={[c.name for c in self.components]}, admin_port={self.admin_port})"


class _Failed(Exception):
    """An attempt that failed before the response started (``kind`` for metrics, ``detail`` for humans,
    ``failure`` for the route table: how strongly it says the copy is gone)."""

    def __init__(self, kind: str, detail: str, failure: Failure = Failure.BROKE) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.failure = failure


def _failure_of(e: BaseException) -> Failure:
    """A timeout says the copy is slow; no connection (refused, unreachable, TLS) that nothing is there."""
    if isinstance(e, TimeoutError):
        return Failure.SLOW
    if isinstance(e, aiohttp.ClientConnectorError | aiohttp.ServerFingerprintMismatch | ConnectionRefusedError
                  | ConnectFailed):
        return Failure.REFUSED
    return Failure.BROKE


class Upstream:
    """One target of one component: its connection pool, concurrency limit and in-flight count."""

    def __init__(self, component: ComponentRoute, key: str, base_url: str, limits: Limits,
                 fingerprint: str | None = None, extra_headers: Mapping[str, str] | None = None) -> None:
        self.component = component
        self.key = key
        self.kind = "remote" if key.startswith("remote:") else "local"
        self.base_url = base_url.rstrip("/")
        self.fingerprint = fingerprint
        self.extra_headers = dict(extra_headers or {})
        # a copy reached over plain HTTP (the local one) gets the lean keep-alive client (``router.lean``: a
        # fraction of aiohttp's cost per request); a remote one, pinned TLS, aiohttp's
        self.lean: LeanPool | None = None
        self.session: aiohttp.ClientSession | None = None
        if fingerprint is None and self.base_url.startswith("http://"):
            self.lean = LeanPool(self.base_url, limit=limits.max_in_flight + _PROBE_HEADROOM,
                                 keepalive_s=limits.keepalive_s, connect_timeout_s=limits.connect_timeout_s,
                                 idle_timeout_s=limits.idle_timeout_s)
        else:
            ssl: aiohttp.Fingerprint | bool = aiohttp.Fingerprint(bytes.fromhex(fingerprint)) if fingerprint else True
            connector = aiohttp.TCPConnector(limit=limits.max_in_flight + _PROBE_HEADROOM, ssl=ssl,
                                             keepalive_timeout=limits.keepalive_s)
            self.session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None, connect=limits.connect_timeout_s,
                                              sock_read=limits.idle_timeout_s),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        self.slots = asyncio.Semaphore(limits.max_in_flight)
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.draining = False
        self.drain_task: asyncio.Task[None] | None = None

    def begin(self) -> None:
        self.in_flight += 1
        self.idle.clear()

    def end(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle.set()

    @property
    def closed(self) -> bool:
        return self.lean.closed if self.lean is not None else self.session is None or self.session.closed

    async def send(self, method: str, raw_path: str, headers: CIMultiDict[str],
                   body: bytes | aiohttp.StreamReader | None, *, length: int | None,
                   replayable: bool) -> ClientResponse | LeanResponse:
        """The request on its way; returns when the response head arrived (the body is read from the answer)."""
        if self.lean is not None:
            headers.popall("Content-Length", None)  # the lean client frames the body itself
            return await self.lean.request(method, raw_path, headers.items(), body, length=length,
                                           replayable=replayable)
        assert self.session is not None
        return await self.session.request(method, URL(self.base_url + raw_path, encoded=True), headers=headers,
                                          data=body, allow_redirects=False)

    async def health(self) -> int:
        """The status the component's health path answers with (its body read and dropped)."""
        path = self.component.health_path
        if self.lean is not None:
            resp = await self.lean.request("GET", path, self.extra_headers.items())
            try:
                await resp.read()
            finally:
                resp.release()
            return resp.status
        assert self.session is not None
        async with self.session.get(self.base_url + path, headers=self.extra_headers) as r:
            await r.read()
            return r.status

    async def close(self) -> None:
        if self.lean is not None:
            await self.lean.close()
        if self.session is not None:
            await self.session.close()


class Router:
    """Run with ``await start()`` / ``await stop()`` inside one event loop (``service.RouterService``
    runs it in a thread of its own for the synchronous agent)."""

    def __init__(self, config: RouterConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.limits = config.limits
        self.clock = clock
        self.components = {c.name: c for c in config.components}
        self.table = RouteTable({c.name: c.local_url is not None for c in config.components}, config.policy)
        self.metrics = Metrics()
        self.addresses: dict[str, tuple[str, int]] = {}
        self.admin_address: tuple[str, int] | None = None
        self._upstreams: dict[str, dict[str, Upstream]] = {c.name: {} for c in config.components}
        self._runners: list[web.BaseRunner] = []
        self._probe_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._routes_changed = asyncio.Event()  # set (and replaced) at every route change: held requests look again
        # The agent's hand-off state per component (``agent.handoff.HandOff.snapshot``), shown on /routes and
        # /metrics; set by the agent once it runs, read at each scrape (one source of truth, never copied here).
        self.component_status: Callable[[], Mapping[str, Mapping[str, Any]]] | None = None
        self.metrics.component_source(lambda: self.component_status() if self.component_status is not None else {})
        for c in config.components:
            self.metrics.current(c.name, str(self.table.current(c.name).target))

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        for comp in self.config.components:
            # no access log: one formatted line per request was 6 % of the router's time under load (the
            # agent's root logger is at INFO); requests are counted in the metrics instead
            server = web.Server(self._handler_for(comp), handler_cancellation=False, access_log=None)
            runner = web.ServerRunner(server, shutdown_timeout=1.0)
            await runner.setup()
            site = web.TCPSite(runner, self.config.listen_host, comp.listen_port, reuse_address=True)
            await site.start()
            self._runners.append(runner)
            self.addresses[comp.name] = _bound(runner)
            log.info("route listening", component=comp.name, address="{}:{}".format(*self.addresses[comp.name]),
                     local_url=comp.local_url)
        if self.config.admin_port is not None:
            app = web.Application()
            app.router.add_get("/metrics", self._metrics_view)
            app.router.add_get("/routes", self._routes_view)
            app.router.add_get("/logs/{component}", self._logs_view)
            admin = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
            await admin.setup()
            try:
                await web.TCPSite(admin, self.config.listen_host, self.config.admin_port).start()
            except OSError as e:  # the routes matter more than their display: route without it
                await admin.cleanup()
                log.warning("router admin port unavailable; /routes and /metrics not served",
                            port=self.config.admin_port, error=str(e)[:200])
            else:
                self._runners.append(admin)
                self.admin_address = _bound(admin)
        self._probe_task = asyncio.create_task(self._probe_loop())

    async def stop(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        for ups in self._upstreams.values():
            for up in ups.values():
                if up.drain_task is not None:
                    up.drain_task.cancel()
                await up.close()
            ups.clear()

    # ------------------------------------------------------------------ what the control plane says

    def apply_records(self, records: Iterable[Mapping[str, Any]]) -> list[Change]:
        """The lease's instance records, complete (every call replaces the previous set)."""
        before = {(c, r.instance_id) for c, r in self.table.probe_targets()}
        changes = self.table.set_remotes(remote_states(records), self.clock())
        self._apply(changes)
        if {(c, r.instance_id) for c, r in self.table.probe_targets()} - before:
            self._wake.set()  # probe a newly ready copy now, not at the next tick
        return changes

    def release_lease(self) -> list[Change]:
        changes = self.table.release_lease(self.clock())
        self._apply(changes)
        return changes

    def reopen_lease(self) -> list[Change]:
        changes = self.table.reopen_lease(self.clock())
        self._apply(changes)
        return changes

    def set_local_mode(self, component: str, mode: LocalMode) -> list[Change]:
        """The hand-off's word on a local copy (``table.LocalMode``); new requests follow at once."""
        changes = self.table.set_local_mode(component, mode, self.clock())
        self._apply(changes)
        if mode != LocalMode.STOPPED:
            self._wake.set()  # probe the local copy now, not at the next tick
        return changes

    async def local_drained(self, component: str, timeout_s: float) -> bool:
        """Wait until no request is in flight on ``component``'s local copy, at most ``timeout_s``."""
        up = self._upstreams[component].get("local")
        if up is None:
            return True
        try:
            await asyncio.wait_for(up.idle.wait(), max(timeout_s, 0.0))
        except TimeoutError:
            return False
        return True

    async def drained(self, timeout_s: float) -> bool:
        """Wait until no request is in flight on any remote target, at most ``timeout_s``."""
        remotes = [up for ups in self._upstreams.values() for up in ups.values() if up.kind == "remote"]
        try:
            await asyncio.wait_for(asyncio.gather(*(up.idle.wait() for up in remotes)), max(timeout_s, 0.0))
        except TimeoutError:
            return False
        return True

    def routes(self) -> dict[str, dict[str, Any]]:
        """Per component: where new requests go and why, and the share served remotely so far."""
        out: dict[str, dict[str, Any]] = {}
        for name in self.components:
            d = self.table.current(name)
            by = self.metrics.served_by(name)
            total = sum(by.values())
            host, port = self.addresses.get(name, (self.config.listen_host, 0))
            out[name] = {
                "target": str(d.target),
                "instance_id": d.remote.instance_id if d.remote else None,
                "reason": d.reason,
                "address": f"{host}:{port}",
                "requests": total,
                "remote_share": round(by.get("remote", 0) / total, 4) if total else 0.0,
                "local_mode": str(self.table.local_mode(name)),
            }
        return out

    # ------------------------------------------------------------------ acting on decisions

    def _apply(self, changes: Iterable[Change]) -> None:
        changes = list(changes)
        if changes:
            self._routes_changed.set()
            self._routes_changed = asyncio.Event()
            if self.config.on_route_change is not None:
                self.config.on_route_change()
        for ch in changes:
            moved = ch.new.remote or ch.old.remote
            if ch.new.key == ch.old.key:  # same target, into or out of panic: nothing to drain
                (log.warning if ch.new.panic else log.info)(
                    "panic routing: every copy failing its probes" if ch.new.panic else "panic routing over",
                    component=ch.component, target=ch.new.key, reason=ch.new.reason,
                    instance_id=moved.instance_id if moved else None)
                continue
            self.metrics.changed(ch.component, str(ch.new.target))
            log.info("route changed", component=ch.component, from_target=ch.old.key, to_target=ch.new.key,
                     reason=ch.new.reason, instance_id=moved.instance_id if moved else None, panic=ch.new.panic)
            if ch.old.target == TargetKind.REMOTE and ch.old.remote is not None:
                up = self._upstreams[ch.component].get(ch.old.key)
                if up is not None:
                    probes = self.table.remote_probes(ch.component, ch.old.remote.instance_id)
                    self._begin_drain(up, answering=probes.fail_streak < self.table.policy.fall)
            if ch.new.target == TargetKind.REMOTE:
                up = self._upstreams[ch.component].get(ch.new.key)
                if up is not None and up.draining and up.drain_task is not None:
                    up.drain_task.cancel()  # it is the target again: stop draining it
                    up.draining = False
                    up.drain_task = None

    def _begin_drain(self, up: Upstream, *, answering: bool = True) -> None:
        """Stop using ``up``: requests in flight may finish for ``drain_s`` when it still ``answering``;
        one that stopped answering is closed at once (its in-flight requests fail now and are retried)."""
        if up.draining:
            if answering or up.drain_task is None:
                return
            up.drain_task.cancel()  # draining already, but it just stopped answering: close it now
        up.draining = True
        up.drain_task = asyncio.get_running_loop().create_task(self._drain(up, self.limits.drain_s if answering else 0.0))

    async def _drain(self, up: Upstream, drain_s: float) -> None:
        name = up.component.name
        try:
            if drain_s <= 0 and up.in_flight:
                log.warning("target stopped answering; closing its connections without a drain", component=name,
                            target=up.key, in_flight=up.in_flight)
            await asyncio.wait_for(up.idle.wait(), drain_s)
            log.info("target drained", component=name, target=up.key)
        except TimeoutError:
            if drain_s > 0:
                log.warning("drain deadline passed; closing the target's connections", component=name,
                            target=up.key, in_flight=up.in_flight, drain_s=drain_s)
        if self._upstreams[name].get(up.key) is up:
            del self._upstreams[name][up.key]
        await up.close()

    def _local(self, comp: ComponentRoute) -> Upstream | None:
        if comp.local_url is None:
            return None
        ups = self._upstreams[comp.name]
        up = ups.get("local")
        if up is None:
            up = ups["local"] = Upstream(comp, "local", comp.local_url, self.limits)
        return up

    def _remote(self, comp: ComponentRoute, remote: RemoteState) -> Upstream:
        key = f"remote:{remote.instance_id}"
        ups = self._upstreams[comp.name]
        up = ups.get(key)
        if up is not None and (up.base_url, up.fingerprint) != (f"https://{remote.endpoint}", remote.fingerprint):
            self._begin_drain(up)  # same instance, new address or certificate: a new pool
            up = None
        if up is None:
            up = ups[key] = Upstream(comp, key, f"https://{remote.endpoint}", self.limits, remote.fingerprint,
                                     {CREDENTIAL_HEADER: self.config.credential, COMPONENT_HEADER: comp.name})
        return up

    def _upstream_for(self, comp: ComponentRoute, d: Route) -> Upstream | None:
        if d.target == TargetKind.REMOTE and d.remote is not None:
            return self._remote(comp, d.remote)
        if d.target == TargetKind.LOCAL:
            return self._local(comp)
        return None

    # ------------------------------------------------------------------ requests

    def _handler_for(self, comp: ComponentRoute) -> Callable[[web.BaseRequest], Any]:
        async def handle(request: web.BaseRequest) -> web.StreamResponse:
            return await self._handle(comp, request)

        return handle

    async def _handle(self, comp: ComponentRoute, request: web.BaseRequest) -> web.StreamResponse:
        started = self.clock()
        name = comp.name
        if self.config.on_request is not None:
            self.config.on_request(name)
        route = self.table.current(name)
        primary = self._upstream_for(comp, route)
        if primary is None and self.limits.hold_s > 0:
            primary = await self._held(comp, started)
        if primary is None:
            self.metrics.fail(name)
            return self._unavailable(f"no target can serve {name}: {self.table.current(name).reason}")
        if route.panic:
            self.metrics.panic(name)
        body: bytes | aiohttp.StreamReader | None = None
        replayable = True
        idempotent = is_idempotent(request.method, request.headers)
        if request.body_exists:
            length = request.content_length
            if length is not None and length <= self.limits.replay_limit_bytes:
                body = await request.read()
            else:
                body, replayable = request.content, False
        try:
            return await self._attempt(primary, request, body, started, idempotent)
        except _Failed as first:
            self._note_failure(primary, first)
            why = f"{primary.kind} copy of {name} failed before responding ({first.detail})"
        if not idempotent:
            self.metrics.fail(name)
            return _error(502, f"{why}; {request.method} is not idempotent, so it was not retried "
                               f"(send an Idempotency-Key header to allow one retry)")
        if not replayable:
            self.metrics.fail(name)
            return _error(502, f"{why}; the request body was streamed and cannot be replayed")
        alternate = self._alternate(comp, primary)
        if alternate is None and self.limits.hold_s > 0:
            alternate = await self._held(comp, started, besides=primary)  # e.g. a lost box's replacement
        if alternate is None:
            self.metrics.fail(name)
            return self._unavailable(f"{why}; no other target can serve {name}")
        self.metrics.retry(name, primary.kind, alternate.kind)
        try:
            return await self._attempt(alternate, request, body, started, idempotent)
        except _Failed as second:
            self._note_failure(alternate, second)
            self.metrics.fail(name)
            return _error(502, f"{why}; the retry on the {alternate.kind} copy failed too ({second.detail})")

    def _alternate(self, comp: ComponentRoute, failed: Upstream) -> Upstream | None:
        if failed.kind == "remote":  # a local copy the agent stopped is no alternate: hold for a replacement
            return self._local(comp) if self.table.local_there(comp.name) else None
        d = self.table.current(comp.name)  # the failure may have changed it
        return self._remote(comp, d.remote) if d.target == TargetKind.REMOTE and d.remote else None

    def _note_failure(self, up: Upstream, failure: _Failed) -> None:
        self.metrics.error(up.component.name, up.kind, failure.kind)
        if failure.kind == "busy":
            return
        iid = up.key.removeprefix("remote:") if up.kind == "remote" else None
        self._apply(self.table.record_probe(up.component.name, iid, False, self.clock(), failure.detail,
                                            failure.failure))
        self._report_suspects()

    async def _attempt(self, up: Upstream, request: web.BaseRequest, body: bytes | aiohttp.StreamReader | None,
                       started: float, idempotent: bool) -> web.StreamResponse:
        if up.slots.locked():
            try:
                await asyncio.wait_for(up.slots.acquire(), self.limits.queue_timeout_s)
            except TimeoutError:
                raise _Failed("busy", f"{up.in_flight} requests in flight, none finished within "
                                      f"{self.limits.queue_timeout_s:g} s") from None
        else:
            await up.slots.acquire()
        up.begin()
        try:
            if up.closed:
                raise _Failed("closed", "the target went away")
            headers = request_headers(request, strip=(CREDENTIAL_HEADER, COMPONENT_HEADER))
            headers.update(up.extra_headers)
            try:
                async with asyncio.timeout(self.limits.response_timeout_s):
                    upstream = await up.send(request.method, request.raw_path, headers, body,
                                             length=request.content_length,
                                             replayable=isinstance(body, bytes | None) and idempotent)
            except aiohttp.ServerFingerprintMismatch as e:
                raise _Failed("tls", f"certificate fingerprint mismatch at {e.host}:{e.port}", Failure.REFUSED) from e
            except TimeoutError as e:
                raise _Failed("timeout", f"no response within {self.limits.response_timeout_s:g} s", Failure.SLOW) from e
            except _ATTEMPT_ERRORS as e:
                raise _Failed("connect", f"{type(e).__name__}: {e}"[:300], _failure_of(e)) from e
            if up.kind == "remote" and FRONT_FAILURE_HEADER in upstream.headers:
                with contextlib.suppress(*_ATTEMPT_ERRORS):
                    await upstream.read()
                upstream.release()
                raise _Failed("component", f"the instance's front could not reach the component "
                                           f"({upstream.headers[FRONT_FAILURE_HEADER][:80]})")
            response_start = self.clock() - started
            try:
                resp = await stream_response(request, upstream)
            except _ATTEMPT_ERRORS as e:
                transport = request.transport
                if transport is None or transport.is_closing():  # the client went away: not our failure
                    self.metrics.error(up.component.name, up.kind, "client_gone")
                else:
                    self.metrics.error(up.component.name, up.kind, "mid_stream")
                    self.metrics.fail(up.component.name)
                    log.warning("response broke after it started; cut the client's connection",
                                component=up.component.name, target=up.key,
                                detail=f"{type(e).__name__}: {e}"[:300])
                    cut(request)
                return web.Response(status=upstream.status)  # never sent: the connection is gone
            finally:
                upstream.release()  # back to the pool when read to the end, else closed
            self.metrics.served(up.component.name, up.kind, upstream.status, response_start)
            return resp
        finally:
            up.end()
            up.slots.release()

    async def _held(self, comp: ComponentRoute, started: float, besides: Upstream | None = None) -> Upstream | None:
        """No target can serve ``comp`` now (or only ``besides``, which just failed this request): wait for a
        route change that gives it one (a waking lease's or a replacement's instance READY, the local copy
        answering again), at most ``hold_s`` after ``started``."""
        self.metrics.hold(comp.name)
        while True:
            changed = self._routes_changed
            up = self._upstream_for(comp, self.table.current(comp.name))
            if up is not None and up is not besides:
                return up
            left = started + self.limits.hold_s - self.clock()
            if left <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), left)

    def _unavailable(self, reason: str) -> web.Response:
        resp = _error(503, reason)
        resp.headers["Retry-After"] = str(self.limits.retry_after_s)
        return resp

    # ------------------------------------------------------------------ probes

    async def _probe_loop(self) -> None:
        while True:
            await self.probe_once()
            self._wake.clear()
            # a target that failed once is probed again soon (``RouteTable.unsettled``): a second failure
            # confirms its loss two probe timeouts after it stopped answering
            wait_s = CONFIRM_AFTER_S if self.table.unsettled() else self.limits.probe_interval_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait_s)

    async def probe_once(self) -> None:
        jobs: list[tuple[str, str | None, Upstream]] = []
        for comp in self.config.components:
            local = self._local(comp) if self.table.local_there(comp.name) else None
            if local is not None:
                jobs.append((comp.name, None, local))
        for name, remote in self.table.probe_targets():
            jobs.append((name, remote.instance_id, self._remote(self.components[name], remote)))
        results = await asyncio.gather(*(self._probe(up) for _, _, up in jobs))
        now = self.clock()
        changes: list[Change] = []
        for (name, iid, up), (error, failure) in zip(jobs, results, strict=True):
            if error is not None and up.closed:
                continue  # a drain closed this pool mid-probe (the target was left, not lost): no evidence either way
            changes += self.table.record_probe(name, iid, error is None, now, error, failure)
        changes += self.table.reevaluate(now)
        self._apply(changes)
        self._report_suspects()

    def _report_suspects(self) -> None:
        """Hand each suspect instance to ``on_remote_lost`` (once, whatever its components)."""
        suspects = {x.instance_id: x for x in self.table.take_suspects()}
        for iid, x in suspects.items():
            log.warning("remote copy failed a probe without notice; asking the control plane to check its instance",
                        component=x.component, instance_id=iid, error=x.error[:200])
            if self.config.on_remote_lost is not None:
                asyncio.get_running_loop().run_in_executor(None, self.config.on_remote_lost, iid, x.error)

    async def _probe(self, up: Upstream) -> tuple[str | None, Failure]:
        """(None, _) when the health path answers 2xx; otherwise what went wrong and how."""
        try:
            async with asyncio.timeout(self.limits.probe_timeout_s):
                status = await up.health()
                return (None if 200 <= status < 300 else f"health path answered {status}"), Failure.BROKE
        except aiohttp.ServerFingerprintMismatch:
            return "certificate fingerprint mismatch", Failure.REFUSED
        except TimeoutError:
            return f"no answer within {self.limits.probe_timeout_s:g} s", Failure.SLOW
        except _ATTEMPT_ERRORS as e:
            return f"{type(e).__name__}: {e}"[:200], _failure_of(e)
        except RuntimeError:
            # a drain closed this target's connections while its probe was on the way: the copy is gone from the
            # route, and the probe loop must live on (an uncaught error here ended every later probe)
            if not up.closed:
                raise
            return "the target's connections were closed (drained)", Failure.REFUSED

    # ------------------------------------------------------------------ admin

    async def _metrics_view(self, request: web.Request) -> web.Response:
        body, content_type = self.metrics.render(request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type, "X-Content-Type-Options": "nosniff"})

    async def _routes_view(self, _request: web.Request) -> web.Response:
        components = dict(self.component_status()) if self.component_status is not None else {}
        return web.Response(text=json.dumps({"routes": self.routes(), "totals": self.metrics.totals(),
                                             "components": components}),
                            content_type="application/json")


    def log_source(self, name: str) -> RemoteState | None:
        """The remote copy whose log ``spotleash logs --remote`` reads: the one serving now, else any the control
        plane reported an address and certificate for (a failing copy's log is the one most wanted)."""
        d = self.table.current(name)
        if d.target == TargetKind.REMOTE and d.remote is not None:
            return d.remote
        return next((r for r in sorted(self.table.remotes(name), key=lambda r: r.instance_id)
                     if r.endpoint and r.fingerprint), None)

    async def _logs_view(self, request: web.Request) -> web.Response:
        """``/logs/<component>?offset=|tail=``: a piece of the remote copy's log, fetched from its instance's front
        over the pinned channel with the lease credential (which never leaves this process)."""
        name = request.match_info["component"]
        comp = self.components.get(name)
        if comp is None:
            return _error(404, f"the agent routes no component {name!r} (it routes: {', '.join(sorted(self.components))}"
                               "), so it holds no channel to a remote copy of it: give it a route_port")
        remote = self.log_source(name)
        if remote is None:
            return _error(404, f"no remote copy of {name}: no instance of this lease reports one")
        up = self._remote(comp, remote)
        query = {k: v for k, v in request.query.items() if k in ("offset", "tail")}
        assert up.session is not None  # a remote copy: pinned TLS, aiohttp's client
        try:
            async with up.session.get(URL(f"{up.base_url}/"), params=query,
                                      headers={**up.extra_headers, LOG_HEADER: name}) as resp:
                body = await resp.read()
                headers = {k: resp.headers[k] for k in (LOG_END_HEADER, LOG_ROTATED_HEADER) if k in resp.headers}
                status, content_type = resp.status, resp.content_type
        except _ATTEMPT_ERRORS as e:
            return _error(502, f"the instance {remote.instance_id} did not answer for the log of {name}: "
                               f"{type(e).__name__}: {e}"[:300])
        return web.Response(status=status, body=body, content_type=content_type,
                            headers={**headers, INSTANCE_HEADER: remote.instance_id})


def _error(status: int, reason: str) -> web.Response:
    return web.Response(status=status, text=json.dumps({"error": reason}) + "\n", content_type="application/json",
                        headers={"X-Spotleash-Router": "1"})


def _bound(runner: web.BaseRunner) -> tuple[str, int]:
    for addr in runner.addresses:
        if isinstance(addr, tuple):
            return str(addr[0]), int(addr[1])
    raise RuntimeError("router site has no TCP address")
