"""The instance's authenticating TLS front: the only way from outside to a component on this instance.

One front per instance, on one port (the only one a firewall or VAST's port mapping needs to open;
components listen on loopback only). For every request it

1. terminates TLS with a certificate made at start (``spotleash.router.channel.make_identity``), whose
   SHA-256 (``Front.fingerprint``) the instance agent reports in its heartbeat for the router to pin;
2. checks the lease credential in ``X-Spotleash-Credential`` against the hash it was given, in constant
   time — missing or wrong: 401, and the request goes no further;
3. picks the component named in ``X-Spotleash-Component`` (unknown: 404), strips both headers and
   forwards the request to ``127.0.0.1:<component port>``, streaming both ways — or, for a request carrying
   ``X-Spotleash-Log: <component>``, answers that component's log itself (``spotleash logs --remote``: the
   same credential, checked first; ``?offset=`` / ``?tail=`` in bytes, ``spotleash.supervisor.logfile``);
4. when the component cannot be reached or fails before its response starts, answers 502 with
   ``X-Spotleash-Front-Failure`` naming why, so the router knows no response started and may retry
   the request on its local copy (a component killed under a live agent loses no idempotent request).

    front = FrontThread(FrontConfig(components={"thumbs": 8101}, credential_sha256=h, listen_port=8443))
    host, port = front.start()   # then report front.fingerprint and endpoint(port) for every component
    front.stop()
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import ssl
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import aiohttp
from aiohttp import web
from yarl import URL

from spotleash.instance_agent.front_config import FrontConfig
from spotleash.log import get_logger
from spotleash.router.channel import (
    COMPONENT_HEADER,
    CREDENTIAL_HEADER,
    FRONT_FAILURE_HEADER,
    LOG_END_HEADER,
    LOG_HEADER,
    LOG_ROTATED_HEADER,
    TlsIdentity,
    credential_matches,
    make_identity,
)
from spotleash.router.forward import cut, request_headers, stream_response
from spotleash.supervisor import logfile

log = get_logger(__name__)

_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)


def server_context(identity: TlsIdentity) -> ssl.SSLContext:
    """A TLS 1.2+ server context holding ``identity`` (written to a private temporary directory only for
    as long as ``load_cert_chain`` reads it)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory(prefix="spotleash-front-") as d:
        cert, key = Path(d) / "cert.pem", Path(d) / "key.pem"
        cert.write_bytes(identity.cert_pem)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(identity.key_pem)
        ctx.load_cert_chain(cert, key)
    return ctx


@dataclass
class FrontStats:
    refused: Counter[str] = field(default_factory=Counter)  # reason → count
    forwarded: Counter[str] = field(default_factory=Counter)  # component → count
    failed: Counter[str] = field(default_factory=Counter)  # component → count


class Front:
    """Run with ``await start()`` / ``await stop()`` in an event loop; ``FrontThread`` for threads."""

    def __init__(self, config: FrontConfig, identity: TlsIdentity | None = None) -> None:
        if len(config.credential_sha256) != 64:
            raise ValueError("credential_sha256 must be the credential's sha256 as 64 hex digits")
        self.config = config
        self.identity = identity or make_identity(config.common_name)
        self.stats = FrontStats()
        self.address: tuple[str, int] | None = None
        self.last_request_at: float | None = None  # time.monotonic() of the last admitted request (instance_agent.idle)
        self._runner: web.ServerRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def fingerprint(self) -> str:
        return self.identity.fingerprint

    async def start(self) -> tuple[str, int]:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.config.max_connections, keepalive_timeout=4.0),
            timeout=aiohttp.ClientTimeout(total=None, connect=self.config.connect_timeout_s,
                                          sock_read=self.config.idle_timeout_s),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        self._runner = web.ServerRunner(web.Server(self._handle, handler_cancellation=False), shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.listen_host, self.config.listen_port,
                           ssl_context=server_context(self.identity), reuse_address=True)
        await site.start()
        for addr in self._runner.addresses:
            if isinstance(addr, tuple):
                self.address = (str(addr[0]), int(addr[1]))
                break
        if self.address is None:
            raise RuntimeError("front has no TCP address")
        log.info("front listening", address="{}:{}".format(*self.address), fingerprint=self.fingerprint,
                 components=sorted(self.config.components))
        return self.address

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if not credential_matches(request.headers.get(CREDENTIAL_HEADER), self.config.credential_sha256):
            reason = "wrong credential" if CREDENTIAL_HEADER in request.headers else "missing credential"
            self.stats.refused[reason] += 1
            log.warning("request refused", reason=reason, peer=request.remote)
            return _json(401, {"error": f"{reason}: every request needs the lease's {CREDENTIAL_HEADER}"})
        if LOG_HEADER in request.headers:
            return await self._log(request, request.headers[LOG_HEADER])
        name = request.headers.get(COMPONENT_HEADER, "")
        port = self.config.components.get(name)
        if port is None:
            self.stats.refused["unknown component"] += 1
            return _json(404, {"error": f"no component {name!r} on this instance",
                               "components": sorted(self.config.components)})
        if request.path != self.config.quiet_paths.get(name):
            self.last_request_at = time.monotonic()
        session = self._session
        if session is None:
            return _json(503, {"error": "front is stopping"})
        body = request.content if request.body_exists else None
        headers = request_headers(request, strip=(CREDENTIAL_HEADER, COMPONENT_HEADER))
        url = URL(f"http://{self.config.upstream_host}:{port}{request.raw_path}", encoded=True)
        try:
            upstream = await session.request(request.method, url, headers=headers, data=body, allow_redirects=False)
        except _ERRORS as e:
            self.stats.failed[name] += 1
            why = f"component {name} failed before responding: {type(e).__name__}: {e}"[:300]
            log.warning("component unreachable", component=name, detail=why)
            return _json(502, {"error": why}, {FRONT_FAILURE_HEADER: type(e).__name__})
        try:
            resp = await stream_response(request, upstream, strip=(FRONT_FAILURE_HEADER,))  # only the front says so
        except _ERRORS as e:
            self.stats.failed[name] += 1
            log.warning("component response broke after it started", component=name,
                        detail=f"{type(e).__name__}: {e}"[:300])
            cut(request)
            return web.Response(status=upstream.status)
        finally:
            upstream.release()
        self.stats.forwarded[name] += 1
        return resp


    async def _log(self, request: web.BaseRequest, name: str) -> web.Response:
        """A piece of ``name``'s log (the request was authenticated): its last ``tail`` bytes, or from ``offset``."""
        path = self.config.log_paths.get(name)
        if path is None:
            return _json(404, {"error": f"no component {name!r} on this instance",
                               "components": sorted(self.config.log_paths)})
        try:
            offset = int(request.query["offset"]) if "offset" in request.query else None
            tail = int(request.query.get("tail", logfile.DEFAULT_TAIL_BYTES))
        except ValueError:
            return _json(400, {"error": "offset and tail are byte counts (integers)"})
        try:
            piece = await asyncio.to_thread(logfile.read_window, path, offset, tail)
        except FileNotFoundError:
            return _json(404, {"error": f"component {name} has written no log yet on this instance"})
        except OSError as e:
            return _json(500, {"error": f"cannot read the log of {name}: {type(e).__name__}: {e}"[:300]})
        log.info("log read", component=name, start=piece.window.start, end=piece.window.end, peer=request.remote)
        return web.Response(body=piece.data, content_type="text/plain", charset="utf-8",
                            headers={LOG_END_HEADER: str(piece.window.end),
                                     LOG_ROTATED_HEADER: "1" if piece.window.rotated else "0"})


def _json(status: int, body: object, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=json.dumps(body) + "\n", content_type="application/json",
                        headers=dict(headers or {}))


class FrontThread:
    """The front in a thread of its own, for the synchronous instance agent."""

    def __init__(self, config: FrontConfig, identity: TlsIdentity | None = None) -> None:
        self.front = Front(config, identity)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    @property
    def fingerprint(self) -> str:
        return self.front.fingerprint

    def start(self, timeout_s: float = 10.0) -> tuple[str, int]:
        started: concurrent.futures.Future[tuple[str, int]] = concurrent.futures.Future()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main(started)), name="spotleash-front",
                                        daemon=True)
        self._thread.start()
        return started.result(timeout_s)

    def stop(self, timeout_s: float = 5.0) -> None:
        loop, stop, thread = self._loop, self._stop, self._thread
        if loop is not None and stop is not None and thread is not None and thread.is_alive():
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(stop.set)
            thread.join(timeout_s)

    def start_on(self, port: int, *, fallback_to_any: bool, timeout_s: float = 10.0) -> tuple[str, int]:
        """Start on ``port``; when it is taken and ``fallback_to_any`` (several fake instances on one
        machine), on any free port instead — the endpoint the heartbeat reports says which."""
        try:
            return self.start(timeout_s)
        except OSError as e:
            if not fallback_to_any or port == 0:
                raise
            log.warning("front port taken; listening on a free one", port=port, error=str(e)[:200])
        self.front.config = replace(self.front.config, listen_port=0)
        return self.start(timeout_s)

    async def _main(self, started: concurrent.futures.Future[tuple[str, int]]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            address = await self.front.start()
        except OSError as e:
            await self.front.stop()
            started.set_exception(e)
            return
        started.set_result(address)
        try:
            await self._stop.wait()
        finally:
            await self.front.stop()
