"""A lean HTTP/1.1 keep-alive client for the targets the router reaches over plain HTTP (the local copy).

aiohttp's client was half of the router's Python time per request (timers, tracing hooks, cookie and URL
handling, a request and a response object of many layers) for what, to a loopback copy, is: write one
request head (and body), read one response head, pass the body on. This does just that on a raw
``asyncio.Protocol``, with a keep-alive pool per target; remote copies keep aiohttp (pinned TLS).

- **Framing** as HTTP/1.1 says: no body for HEAD, 1xx, 204 and 304; ``Transfer-Encoding: chunked`` decoded;
  ``Content-Length``; otherwise the body runs until the connection closes. Interim 1xx responses (100, 103)
  are skipped, as aiohttp's client does. A response the parser cannot read is an error, never a guess.
- **Request bodies**: bytes go out with the head in one write; a stream goes out as it arrives (with its
  ``Content-Length`` when the client gave one, else chunked), concurrently with reading the response, so an
  upstream that answers while it reads (an echo) does not deadlock.
- **Keep-alive pool**: at most ``limit`` connections per target in use or idle; an idle one older than
  ``keepalive_s`` or closed by the server is dropped before use. A connection is reused only when its
  response was read to the end, its request fully sent, nothing extra arrived and neither side said close.
- **A stale pooled connection** (the server closed it while idle, and the request met the close before any
  response byte) is retried once on a fresh connection when the caller says the request may be replayed.
- **Timeouts**: ``connect_timeout_s`` to connect, ``idle_timeout_s`` between two reads of a body; the caller
  bounds the wait for the response head (``asyncio.timeout``), which cancels cleanly: the connection is closed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from spotleash.router.forward import HOP_BY_HOP

_MAX_HEAD = 64 * 1024  # bytes of status line and headers
_HIGH_WATER = 256 * 1024  # body bytes buffered (the client reading slowly) before reading from the upstream pauses
_NO_BODY_STATUS = frozenset({204, 304})
_HEX = frozenset(b"0123456789abcdefABCDEF")


class UpstreamClosed(aiohttp.ClientConnectionError):
    """The connection closed (or was closed) before the response was complete."""

    def __init__(self, message: str, *, got_bytes: bool = False) -> None:
        super().__init__(message)
        self.got_bytes = got_bytes  # a byte of the response had arrived: the request was seen, never retry it


class ConnectFailed(aiohttp.ClientConnectionError):
    """No connection to the target (refused, unreachable): nothing there. (A connect timeout is
    ``aiohttp.ConnectionTimeoutError``: a timeout, like a slow answer.)"""


class BadResponse(aiohttp.ClientPayloadError):
    """The upstream's response is not HTTP/1.1 this client can read."""


class _Conn(asyncio.Protocol):
    """One connection: bytes arrive into ``buf``; the response reader pulls from it and waits for more."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self.got_bytes = False
        self.idle_since = 0.0
        self.writer: asyncio.Task[None] | None = None  # sends a streamed request body
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP transport (uvloop's is no asyncio.Transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.got_bytes = True
        if len(self.buf) > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        if exc is not None and self.error is None:
            self.error = exc
        self._wake()
        self._wake_drain()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain()

    # -- for the reader and writer

    @property
    def open(self) -> bool:
        return not self.eof and self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        if self.writer is not None and not self.writer.done():
            self.writer.cancel()
        if self.transport is not None:
            self.transport.abort()

    def closed_error(self, what: str) -> UpstreamClosed:
        detail = f"{what}: {type(self.error).__name__}: {self.error}" if self.error else what
        return UpstreamClosed(detail[:300], got_bytes=self.got_bytes)

    async def more(self, timeout_s: float | None) -> None:
        """Wait until more bytes arrive, the connection ends, or ``timeout_s`` passes (TimeoutError)."""
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        fut = self._waiter = self.loop.create_future()
        timer = self.loop.call_later(timeout_s, _expire, fut) if timeout_s is not None else None
        try:
            await fut
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    async def drain(self) -> None:
        if self._write_paused and self.open:
            fut = self._drain = self.loop.create_future()
            try:
                await fut
            finally:
                self._drain = None
        if not self.open:
            raise self.closed_error("the connection closed while the request body was sent")

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _wake_drain(self) -> None:
        d = self._drain
        if d is not None and not d.done():
            d.set_result(None)


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


class LeanResponse:
    """The upstream's status, reason and end-to-end headers (hop-by-hop ones and those ``Connection`` names
    already taken out); the body through ``read()`` or ``iter_any()``, once.
    ``release()`` hands the connection back (body read to the end) or closes it (not)."""

    def __init__(self, pool: LeanPool, conn: _Conn, status: int, reason: str, headers: CIMultiDict[str],
                 length: int | None, chunked: bool, keep_alive: bool, no_body: bool) -> None:
        self._pool = pool
        self._conn: _Conn | None = conn
        self.status = status
        self.reason = reason
        self.headers = headers
        self.content_length = None if chunked else length
        self._left = 0 if no_body else length  # None: chunked or until close
        self._chunked = chunked and not no_body
        self._keep_alive = keep_alive and (no_body or chunked or length is not None)
        self._done = no_body or length == 0
        if self._done:
            self._finish()

    async def read(self) -> bytes:
        conn = self._conn
        left = self._left
        if conn is not None and left is not None and len(conn.buf) >= left:  # the common case: all here already
            body = bytes(conn.buf[:left])
            del conn.buf[:left]
            self._left = 0
            self._done = True
            self._finish()
            return body
        return b"".join([chunk async for chunk in self.iter_any()])

    async def iter_any(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive (chunked framing taken off)."""
        if self._done:
            return
        conn = self._conn
        if conn is None:
            raise UpstreamClosed("the response was released before its body was read")
        idle = self._pool.idle_timeout_s
        if self._chunked:
            async for piece in self._chunks(conn, idle):
                yield piece
        elif self._left is not None:
            while self._left > 0:
                if not conn.buf:
                    if conn.eof:
                        raise conn.closed_error(f"the body ended {self._left} bytes short")
                    await conn.more(idle)
                    continue
                n = min(len(conn.buf), self._left)
                piece = bytes(conn.buf[:n])
                del conn.buf[:n]
                self._left -= n
                yield piece
        else:  # until the connection closes
            while True:
                if conn.buf:
                    piece = bytes(conn.buf)
                    conn.buf.clear()
                    yield piece
                elif conn.eof:
                    if conn.error is not None:
                        raise conn.closed_error("the body broke off")
                    break
                else:
                    await conn.more(idle)
        self._done = True
        self._finish()

    async def _chunks(self, conn: _Conn, idle: float) -> AsyncIterator[bytes]:
        while True:
            line = await _line(conn, idle)
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise BadResponse(f"bad chunk size {size_text[:20]!r}") from None
            if not size_text or not all(c in _HEX for c in size_text):
                raise BadResponse(f"bad chunk size {size_text[:20]!r}")
            if size == 0:
                while await _line(conn, idle):  # trailers (dropped, like every hop-by-hop field), then the end
                    pass
                return
            while size > 0:
                if not conn.buf:
                    if conn.eof:
                        raise conn.closed_error("a chunk of the body was cut short")
                    await conn.more(idle)
                    continue
                n = min(len(conn.buf), size)
                piece = bytes(conn.buf[:n])
                del conn.buf[:n]
                size -= n
                yield piece
            if await _line(conn, idle):
                raise BadResponse("a chunk did not end with CRLF")

    def _finish(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        writer_ok = conn.writer is None or (conn.writer.done() and not conn.writer.cancelled()
                                            and conn.writer.exception() is None)
        if self._done and self._keep_alive and writer_ok and not conn.buf and conn.open:
            self._pool.put_back(conn)
        else:
            self._pool.discard(conn)

    def release(self) -> None:
        """Back to the pool if the body was read to the end, else the connection is closed."""
        if self._conn is not None:
            self._finish()


async def _line(conn: _Conn, idle: float) -> bytes:
    while True:
        end = conn.buf.find(b"\r\n")
        if end >= 0:
            line = bytes(conn.buf[:end])
            del conn.buf[:end + 2]
            return line
        if len(conn.buf) > _MAX_HEAD:
            raise BadResponse("a chunk header line is too long")
        if conn.eof:
            raise conn.closed_error("the chunked body was cut short")
        await conn.more(idle)


class LeanPool:
    """The keep-alive connections to one plain-HTTP target, at most ``limit`` of them (in use or idle)."""

    def __init__(self, base_url: str, *, limit: int, keepalive_s: float, connect_timeout_s: float,
                 idle_timeout_s: float) -> None:
        url = URL(base_url)
        if url.scheme != "http" or not url.raw_host:
            raise ValueError(f"a lean pool is for plain http://host:port targets, not {base_url!r}")
        self.host = url.raw_host
        self.port = url.port or 80
        self.prefix = url.raw_path.rstrip("/")
        self.host_header = url.host_port_subcomponent or self.host
        self.keepalive_s = keepalive_s
        self.connect_timeout_s = connect_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.closed = False
        self._slots = asyncio.Semaphore(limit)
        self._idle: list[_Conn] = []
        self._busy: set[_Conn] = set()

    async def request(self, method: str, path: str, headers: Iterable[tuple[str, str]],
                      body: bytes | aiohttp.StreamReader | None = None, *, length: int | None = None,
                      replayable: bool = True) -> LeanResponse:
        """Send ``method path`` (``path`` as the client sent it, query included) with ``headers`` (no Host, no
        framing: those are this client's) and ``body``; return once the response head arrived. ``length`` is a
        streamed body's declared size (None: send it chunked). ``replayable``: the request may be sent again on
        a fresh connection when a pooled one turns out stale."""
        if self.closed:
            raise UpstreamClosed("the target's connections were closed")
        head = self._head(method, path, headers, body, length)
        await self._slots.acquire()  # (cancelled here: no slot taken, none to give back)
        try:
            conn = self._pooled()
            if conn is not None:
                try:
                    return await self._exchange(conn, method, head, body, length)
                except UpstreamClosed as e:
                    if e.got_bytes or not replayable or self.closed:
                        raise
            return await self._exchange(await self._connect(), method, head, body, length)
        except BaseException:
            self._slots.release()
            raise

    def _head(self, method: str, path: str, headers: Iterable[tuple[str, str]],
              body: bytes | aiohttp.StreamReader | None, length: int | None) -> bytes:
        lines = [f"{method} {self.prefix}{path} HTTP/1.1\r\nHost: {self.host_header}\r\n"]
        lines += [f"{k}: {v}\r\n" for k, v in headers]
        if isinstance(body, bytes):
            lines.append(f"Content-Length: {len(body)}\r\n")
        elif body is not None:
            lines.append(f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n")
        elif method in ("POST", "PUT", "PATCH"):
            lines.append("Content-Length: 0\r\n")
        lines.append("\r\n")
        return "".join(lines).encode("utf-8", "surrogateescape")

    def _pooled(self) -> _Conn | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.open and now - conn.idle_since < self.keepalive_s:
                conn.got_bytes = False  # of this response: none yet
                self._busy.add(conn)
                return conn
            conn.close()
        return None

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await loop.create_connection(lambda: _Conn(loop), self.host, self.port)
        except TimeoutError:  # a full backlog (busy) as much as nothing there: a timeout, as aiohttp's client says
            raise aiohttp.ConnectionTimeoutError(
                f"no connection to {self.host_header} within {self.connect_timeout_s:g} s") from None
        except OSError as e:
            raise ConnectFailed(f"cannot connect to {self.host_header}: {e}") from e
        if self.closed:  # closed while connecting
            conn.close()
            raise UpstreamClosed("the target's connections were closed")
        self._busy.add(conn)
        return conn

    async def _exchange(self, conn: _Conn, method: str, head: bytes, body: bytes | aiohttp.StreamReader | None,
                        length: int | None) -> LeanResponse:
        try:
            transport = conn.transport
            if transport is None or not conn.open:
                raise conn.closed_error("the connection closed before the request was sent")
            if isinstance(body, bytes):
                transport.write(head + body if len(body) < 16384 else head)
                if len(body) >= 16384:
                    transport.write(body)
            else:
                transport.write(head)
                if body is not None:
                    conn.writer = asyncio.get_running_loop().create_task(_send_stream(conn, body, length is None))
                    conn.writer.add_done_callback(_retrieve)
            while True:
                resp = await self._response(conn, method)
                if resp is not None:
                    return resp
        except BaseException:
            self._drop(conn)
            raise

    async def _response(self, conn: _Conn, method: str) -> LeanResponse | None:
        """The next response head on ``conn``: a LeanResponse, or None for an interim 1xx (skipped)."""
        while True:
            end = conn.buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(conn.buf) > _MAX_HEAD:
                raise BadResponse(f"response head longer than {_MAX_HEAD} bytes")
            if conn.eof:
                raise conn.closed_error("the connection closed before the response")
            await conn.more(None)
        head = bytes(conn.buf[:end]).decode("utf-8", "surrogateescape")
        del conn.buf[:end + 4]
        status_line, _, rest = head.partition("\r\n")
        version, _, status_reason = status_line.partition(" ")
        code, _, reason = status_reason.partition(" ")
        if version not in ("HTTP/1.1", "HTTP/1.0") or len(code) != 3 or not code.isdigit():
            raise BadResponse(f"not an HTTP/1.x status line: {status_line[:80]!r}")
        status = int(code)
        headers: CIMultiDict[str] = CIMultiDict()  # end to end: the hop-by-hop ones are this hop's business
        length: int | None = None
        chunked = coded = False
        keep_alive = version == "HTTP/1.1"
        named: set[str] = set()  # what Connection names: hop-by-hop too
        if rest:
            for line in rest.split("\r\n"):
                name, colon, value = line.partition(":")
                if not colon or not name or name != name.strip() or " " in name or "\t" in name:
                    raise BadResponse(f"bad header line {line[:80]!r}")
                value = value.strip(" \t")
                lower = name.lower()
                if lower not in HOP_BY_HOP:
                    headers.add(name, value)
                    if lower == "content-length":
                        if not value.isdigit() or (length is not None and int(value) != length):
                            raise BadResponse(f"bad Content-Length {value[:40]!r}")
                        length = int(value)
                elif lower == "transfer-encoding":
                    coded = True
                    chunked = value.lower().rsplit(",", 1)[-1].strip() == "chunked"
                elif lower == "connection":
                    tokens = {t.strip().lower() for t in value.split(",")}
                    if "close" in tokens:
                        keep_alive = False
                    elif "keep-alive" in tokens and version == "HTTP/1.0":
                        keep_alive = True
                    named |= tokens
        for token in named - {"close", "keep-alive", ""}:
            headers.popall(token, None)
        if 100 <= status < 200 and status != 101:
            return None
        if coded:
            length = None  # chunked, or another coding last: the body runs until the close
            keep_alive = keep_alive and chunked
        no_body = method == "HEAD" or status in _NO_BODY_STATUS or status < 200
        if status == 101:
            keep_alive = False
        return LeanResponse(self, conn, status, reason, headers, length, chunked, keep_alive, no_body)

    def put_back(self, conn: _Conn) -> None:
        self._busy.discard(conn)
        conn.writer = None
        if self.closed:
            conn.close()
        else:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        self._slots.release()

    def discard(self, conn: _Conn) -> None:
        """A response's connection that cannot be reused: closed, and its request's slot freed."""
        self._drop(conn)
        self._slots.release()

    def _drop(self, conn: _Conn) -> None:
        conn.close()
        self._busy.discard(conn)

    async def close(self) -> None:
        """Close every connection, idle or in use (what waits on one fails now, and may be retried)."""
        self.closed = True
        for conn in (*self._idle, *self._busy):
            conn.close()
        self._idle.clear()


def _retrieve(task: asyncio.Task[None]) -> None:
    """A body sender's failure already closed its connection (the response read says so): not logged again."""
    if not task.cancelled():
        task.exception()


async def _send_stream(conn: _Conn, body: aiohttp.StreamReader, chunked: bool) -> None:
    """Send a streamed request body as it arrives; a failure (the client's upload broke) closes the connection,
    so the upstream never takes a truncated body for a whole one."""
    transport = conn.transport
    assert transport is not None
    try:
        async for piece in body.iter_any():
            if not piece:
                continue
            transport.write(b"%x\r\n%b\r\n" % (len(piece), piece) if chunked else piece)
            await conn.drain()
        if chunked:
            transport.write(b"0\r\n\r\n")
    except BaseException:
        conn.close()
        raise
