"""The router's lean HTTP/1.1 client (``router.lean``) against scripted upstreams on loopback sockets, and the
router's local path through it (streamed both ways, HEAD, bodiless statuses)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
import pytest
from tests.unit.router.router_harness import FAST, run, world

from spotleash.router.lean import BadResponse, ConnectFailed, LeanPool, UpstreamClosed
from spotleash.router.proxy import ComponentRoute, Router, RouterConfig

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[tuple[str, list[int]]]:
    """A raw upstream running ``script`` per connection; yields its URL and a list of connections accepted."""
    accepted: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(len(accepted))
        try:
            await script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", accepted
    finally:
        server.close()
        await server.wait_closed()


def pool(url: str, **kw: float) -> LeanPool:
    return LeanPool(url, limit=int(kw.get("limit", 4)), keepalive_s=kw.get("keepalive_s", 4.0),
                    connect_timeout_s=1.0, idle_timeout_s=kw.get("idle_timeout_s", 2.0))


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def test_keep_alive_reuses_one_connection_and_sends_host_and_headers_in_order() -> None:
    heads: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            heads.append(await read_head(reader))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nok")
            await writer.drain()

    async def main() -> None:
        async with scripted(script) as (url, accepted):
            p = pool(url)
            for _ in range(3):
                r = await p.request("GET", "/x?y=%20", [("Accept", "a"), ("Accept", "b")])
                assert (r.status, r.reason, await r.read()) == (200, "OK", b"ok")
                assert r.headers.getall("Set-Cookie") == ["a=1", "b=2"]
                r.release()
            assert len(accepted) == 1
            port = url.rsplit(":", 1)[1]
            assert heads[0] == f"GET /x?y=%20 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: a\r\nAccept: b\r\n\r\n".encode()
            await p.close()

    run(main())


def test_a_stale_pooled_connection_is_retried_once_on_a_fresh_one_when_replayable() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1")
        await writer.drain()
        # then the server drops the idle keep-alive connection without a word

    async def main() -> None:
        async with scripted(script) as (url, accepted):
            p = pool(url)
            r = await p.request("GET", "/", [])
            assert await r.read() == b"1"
            r.release()
            await asyncio.sleep(0.05)  # the close is on its way, unseen by the pool until used
            r = await p.request("GET", "/", [])
            assert await r.read() == b"1"
            r.release()
            assert len(accepted) == 2
            await p.close()

    run(main())


def test_a_pooled_connection_closed_under_a_replayable_request_is_retried_on_a_fresh_one() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1")
        await writer.drain()
        await read_head(reader)  # the next request met the keep-alive's close: no byte of an answer
        writer.transport.abort()

    async def main() -> None:
        async with scripted(script) as (url, accepted):
            p = pool(url)
            for _ in range(2):
                r = await p.request("GET", "/", [])
                assert await r.read() == b"1"
                r.release()
            assert len(accepted) == 2
            await p.close()

    run(main())


def test_a_request_the_upstream_saw_is_never_resent_and_a_non_replayable_one_fails() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1")
        await writer.drain()
        await read_head(reader)  # the second request arrives, and the upstream dies on it
        writer.transport.abort()

    async def main() -> None:
        async with scripted(script) as (url, accepted):
            p = pool(url)
            r = await p.request("POST", "/", [], b"x")
            assert await r.read() == b"1"
            r.release()
            with pytest.raises(UpstreamClosed):
                await p.request("POST", "/", [], b"x", replayable=False)
            assert len(accepted) == 1
            await p.close()

    run(main())


def test_chunked_response_is_decoded_and_the_connection_reused() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive, X-Hop\r\n"
                         b"X-Hop: 1\r\nKeep-Alive: timeout=5\r\nSet-Cookie: b=2\r\n\r\n3;ext=1\r\nabc\r\n")
            await writer.drain()
            await asyncio.sleep(0.01)
            writer.write(b"A\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n")
            await writer.drain()

    async def main() -> None:
        async with scripted(script) as (url, accepted):
            p = pool(url)
            for _ in range(2):
                r = await p.request("GET", "/", [])
                assert r.content_length is None
                assert list(r.headers.items()) == [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]  # end to end only
                assert [c async for c in r.iter_any()] == [b"abc", b"0123456789"]
                r.release()
            assert len(accepted) == 1
            await p.close()

    run(main())


def test_head_204_304_and_interim_1xx_have_no_body_and_keep_the_connection() -> None:
    answers = [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
               b"HTTP/1.1 204 No Content\r\n\r\n",
               b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 304 Not Modified\r\nETag: \"e\"\r\n\r\n"]

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in answers:
            await read_head(reader)
            writer.write(answer)
            await writer.drain()
        await reader.read()

    async def main() -> None:
        async with scripted(script) as (url, accepted):
            p = pool(url)
            got = []
            for method in ("HEAD", "GET", "GET"):
                r = await p.request(method, "/", [])
                got.append((r.status, await r.read()))
                r.release()
            assert got == [(200, b""), (204, b""), (304, b"")]
            assert len(accepted) == 1
            await p.close()

    run(main())


def test_a_body_until_close_and_connection_close_are_not_reused() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
        await writer.drain()

    async def main() -> None:
        async with scripted(script) as (url, accepted):
            p = pool(url)
            for _ in range(2):
                r = await p.request("GET", "/", [])
                assert await r.read() == b"until the end"
                r.release()
            assert len(accepted) == 2
            await p.close()

    run(main())


def test_a_body_cut_short_a_bad_head_and_no_listener_are_errors() -> None:
    async def short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()

    async def bad(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()

    async def main() -> None:
        async with scripted(short) as (url, _):
            p = pool(url)
            r = await p.request("GET", "/", [])
            with pytest.raises(UpstreamClosed, match="7 bytes short"):
                await r.read()
            await p.close()
        async with scripted(bad) as (url, _):
            p = pool(url)
            with pytest.raises(BadResponse, match="status line"):
                await p.request("GET", "/", [])
            await p.close()
        p = pool(url)  # that server is gone
        with pytest.raises(ConnectFailed):
            await p.request("GET", "/", [])

    run(main())


def test_a_quiet_body_times_out_and_the_pool_caps_connections() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        await reader.read()

    async def main() -> None:
        async with scripted(script) as (url, accepted):
            p = pool(url, limit=1, idle_timeout_s=0.2)
            r = await p.request("GET", "/", [])
            waiting = asyncio.create_task(p.request("GET", "/", []))
            await asyncio.sleep(0.05)
            assert not waiting.done() and len(accepted) == 1  # the one connection is in use
            with pytest.raises(TimeoutError):
                await r.read()
            r.release()
            second = await waiting
            second.release()
            await p.close()

    run(main())


def test_closing_the_pool_fails_a_request_waiting_for_its_response() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async def main() -> None:
        async with scripted(script) as (url, _):
            p = pool(url)
            waiting = asyncio.create_task(p.request("GET", "/", []))
            await asyncio.sleep(0.05)
            await p.close()
            with pytest.raises(UpstreamClosed):
                await waiting
            with pytest.raises(UpstreamClosed):
                await p.request("GET", "/", [])

    run(main())


def test_router_local_path_streams_a_chunked_upload_and_download_and_answers_head() -> None:
    async def main() -> None:
        async with world() as w:
            async def parts() -> AsyncIterator[bytes]:
                for i in range(5):
                    yield b"part%d;" % i
                    await asyncio.sleep(0.01)

            async with w.client.post(w.base + "/echo", data=parts()) as r:  # no length: chunked to the router
                assert r.status == 201 and await r.read() == b"part0;part1;part2;part3;part4;"
            big = b"x" * (w.router.limits.replay_limit_bytes + 10)  # streamed on, with its length
            async with w.client.put(w.base + "/upload", data=io.BytesIO(big),
                                    headers={"Content-Length": str(len(big))}) as r:
                assert (r.status, await r.text()) == (200, f"local got {len(big)} bytes")
            w.local.gate.set()
            async with w.client.get(w.base + "/sse") as r:
                assert r.status == 200 and r.headers.get("Content-Length") is None
                assert (await r.read()).count(b"data:") >= 2
            async with w.client.head(w.base + "/who") as r:
                assert r.status == 200 and await r.read() == b"" and r.headers["Content-Length"] == "5"
            assert w.router.metrics.value("errors_total", component="thumbs", target="local", kind="connect") == 0

    run(main())


@asynccontextmanager
async def routed(url: str) -> AsyncIterator[tuple[Router, aiohttp.ClientSession, str]]:
    """A router whose one component's local copy is ``url``."""
    router = Router(RouterConfig(components=(ComponentRoute("c", 0, url),), credential="x", limits=FAST))
    await router.start()
    host, port = router.addresses["c"]
    try:
        async with aiohttp.ClientSession() as client:
            yield router, client, f"http://{host}:{port}"
    finally:
        await router.stop()


def test_router_local_path_passes_204_and_304_without_a_body_and_survives_stale_keepalives() -> None:
    """The upstream answers one request per connection and then closes it without saying so (an idle
    keep-alive timing out): every request still gets its answer, and no attempt counts as failed."""
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_head(reader)
        status = b"204 No Content" if b"s=204" in head else b"304 Not Modified" if b"s=304" in head else b"200 OK"
        length = b"Content-Length: 2\r\n" if status == b"200 OK" else b""
        writer.write(b"HTTP/1.1 " + status + b"\r\n" + length + b"ETag: \"e\"\r\n\r\n" + (b"ok" if length else b""))
        await writer.drain()

    async def main() -> None:
        async with scripted(script) as (url, accepted), routed(url) as (router, client, base):
            for s in (200, 204, 304, 200, 204):
                async with client.get(base + f"/x?s={s}") as r:
                    assert r.status == s and await r.read() == (b"ok" if s == 200 else b"")
                    assert r.headers["ETag"] == '"e"'
                await asyncio.sleep(0.02)  # the upstream's close lands on the pooled connection
            assert len(accepted) >= 5
            assert router.metrics.value("failed_total", component="c") == 0
            assert router.metrics.value("retries_total", component="c", source="local", target="local") == 0

    run(main())


def test_a_chunked_response_with_a_bad_size_is_an_error() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        await writer.drain()
        await reader.read()

    async def main() -> None:
        async with scripted(script) as (url, _):
            p = pool(url)
            r = await p.request("GET", "/", [])
            with pytest.raises(BadResponse, match="chunk size"):
                await r.read()
            r.release()
            await p.close()

    run(main())


def test_the_lean_errors_are_aiohttp_client_errors_so_the_router_retries_them_like_its_own() -> None:
    assert issubclass(UpstreamClosed, aiohttp.ClientError) and issubclass(ConnectFailed, aiohttp.ClientError)
    assert issubclass(BadResponse, aiohttp.ClientError)
