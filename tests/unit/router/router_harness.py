"""Real sockets for the router's tests: upstream apps on loopback, the instance's TLS front, a router.

Everything runs in one event loop per test (``run``); nothing is mocked: the router speaks HTTP to the
local copy and pinned TLS with the lease credential to a real ``Front``, which forwards to the
"remote" copy on loopback.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

from spotleash.instance_agent.front import Front, FrontConfig
from spotleash.router.channel import credential_hash, new_credential
from spotleash.router.proxy import ComponentRoute, Limits, Router, RouterConfig
from spotleash.router.table import Policy

T = TypeVar("T")
COMPONENT = "thumbs"
FAST = Limits(connect_timeout_s=2.0, response_timeout_s=5.0, idle_timeout_s=5.0, max_in_flight=16,
              queue_timeout_s=0.3, drain_s=5.0, probe_interval_s=0.05, probe_timeout_s=1.0, retry_after_s=3)


def run(coro: Coroutine[Any, Any, T], timeout_s: float = 15.0) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(timeout_s):
            return await coro

    return asyncio.run(bounded())


async def until(check: Callable[[], Awaitable[bool]] | Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    """Poll ``check`` with a deadline (never a bare sleep as a synchronisation)."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if isinstance(got, Awaitable):
            got = await got
        if got:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@dataclass
class Upstream:
    """A component copy: answers with its name; routes to hold, stream, echo and die on cue."""

    name: str
    healthy: bool = True
    hits: list[tuple[str, str]] = field(default_factory=list)  # (method, path)
    seen_headers: list[dict[str, str]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)  # lets /hold answer
    die: asyncio.Event = field(default_factory=asyncio.Event)  # makes /hold drop its connection
    held: int = 0
    gate: asyncio.Event = field(default_factory=asyncio.Event)  # lets /sse send its last event
    upload_chunks: list[bytes] = field(default_factory=list)
    runner: web.AppRunner | None = None
    port: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self.health)
        app.router.add_route("*", "/who", self.who)
        app.router.add_route("*", "/hold", self.hold)
        app.router.add_get("/sse", self.sse)
        app.router.add_route("*", "/upload", self.upload)
        app.router.add_route("*", "/echo", self.echo)
        return app

    async def health(self, _r: web.Request) -> web.Response:
        return web.Response(text="ok") if self.healthy else web.Response(status=500, text="sick")

    def _note(self, r: web.Request) -> None:
        self.hits.append((r.method, r.path))
        self.seen_headers.append(dict(r.headers))

    async def who(self, r: web.Request) -> web.Response:
        self._note(r)
        await r.read()
        return web.Response(text=self.name)

    async def hold(self, r: web.Request) -> web.Response:
        self._note(r)
        await r.read()
        self.held += 1
        release, die = asyncio.ensure_future(self.release.wait()), asyncio.ensure_future(self.die.wait())
        await asyncio.wait({release, die}, return_when=asyncio.FIRST_COMPLETED)
        release.cancel()
        die.cancel()
        self.held -= 1
        if self.die.is_set():
            assert r.transport is not None
            r.transport.abort()  # the process died: the connection drops without a response
        return web.Response(text=f"{self.name} after hold")

    async def sse(self, r: web.Request) -> web.StreamResponse:
        self._note(r)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(r)
        await resp.write(f"data: first from {self.name}\n\n".encode())
        await self.gate.wait()
        await resp.write(b"data: last\n\n")
        await resp.write_eof()
        return resp

    async def upload(self, r: web.Request) -> web.Response:
        self._note(r)
        async for chunk in r.content.iter_any():
            self.upload_chunks.append(chunk)
        return web.Response(text=f"{self.name} got {sum(map(len, self.upload_chunks))} bytes")

    async def echo(self, r: web.Request) -> web.Response:
        self._note(r)
        body = await r.read()
        resp = web.Response(status=201, body=body, headers={"X-Echo-Method": r.method, "X-Echo-Path": r.raw_path})
        resp.headers.add("Set-Cookie", "a=1")
        resp.headers.add("Set-Cookie", "b=2")
        resp.headers["X-Spotleash-Front-Failure"] = "forged by the component"  # the front must drop it
        return resp

    async def start(self) -> None:
        self.runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=0.2)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)  # a restart takes its old port (0: any free one)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class World:
    local: Upstream
    remote: Upstream
    front: Front
    router: Router
    client: aiohttp.ClientSession
    credential: str

    @property
    def base(self) -> str:
        host, port = self.router.addresses[COMPONENT]
        return f"http://{host}:{port}"

    def record(self, state: str = "READY", fingerprint: str | None = None, preempted: bool = False,
               component_state: str = "healthy", instance_id: str = "sl-1") -> dict[str, Any]:
        assert self.front.address is not None
        return {"instance_id": instance_id, "state": state, "preempted": preempted,
                "tls_fingerprint": fingerprint or self.front.fingerprint,
                "component_states": {COMPONENT: {"state": component_state,
                                                 "endpoint": f"127.0.0.1:{self.front.address[1]}"}}}

    async def get_text(self, path: str, method: str = "GET", **kw: Any) -> tuple[int, str]:
        async with self.client.request(method, self.base + path, **kw) as r:
            return r.status, await r.text()

    async def go_remote(self) -> None:
        self.router.apply_records([self.record()])
        await until(lambda: self.router.table.current(COMPONENT).target == "remote", "remote target")


@asynccontextmanager
async def world(limits: Limits = FAST, local: bool = True, policy: Policy | None = None,
                on_remote_lost: Callable[[str, str], None] | None = None,
                front_logs: Mapping[str, Path] | None = None) -> AsyncIterator[World]:
    local_up, remote_up = Upstream("local"), Upstream("remote")
    await local_up.start()
    await remote_up.start()
    credential = new_credential()
    front = Front(FrontConfig(components={COMPONENT: remote_up.port}, credential_sha256=credential_hash(credential),
                              listen_host="127.0.0.1", listen_port=0, log_paths=front_logs or {}))
    await front.start()
    router = Router(RouterConfig(
        components=(ComponentRoute(COMPONENT, 0, local_up.url if local else None, "/healthz"),),
        credential=credential, admin_port=0, limits=limits, policy=policy or Policy(stale_s=5.0),
        on_remote_lost=on_remote_lost))
    await router.start()
    client = aiohttp.ClientSession()
    try:
        yield World(local_up, remote_up, front, router, client, credential)
    finally:
        local_up.release.set()
        remote_up.release.set()
        local_up.gate.set()
        remote_up.gate.set()
        await client.close()
        await router.stop()
        await front.stop()
        await local_up.stop()
        await remote_up.stop()
