"""Pieces of HTTP forwarding shared by the router and the instance's front (no state, no decisions)."""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import TYPE_CHECKING

from aiohttp import ClientResponse, web
from multidict import CIMultiDict, CIMultiDictProxy

if TYPE_CHECKING:
    from spotleash.router.lean import LeanResponse

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
IDEMPOTENCY_KEY = "Idempotency-Key"
HOP_BY_HOP = frozenset(h.lower() for h in (
    "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
    "Transfer-Encoding", "Upgrade", "Expect",
))
# A response with a length up to this goes out whole: headers and body in one write instead of two or three
# (most API answers; a streamed one — no length, or longer — still passes chunk by chunk as it arrives).
WHOLE_BODY_LIMIT = 64 * 1024


def is_idempotent(method: str, headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> bool:
    """Safe to send twice: an idempotent method, or the client vouches with an ``Idempotency-Key``."""
    return method.upper() in IDEMPOTENT_METHODS or IDEMPOTENCY_KEY in headers


@lru_cache(maxsize=16)
def _always_dropped(extra: tuple[str, ...]) -> frozenset[str]:
    return HOP_BY_HOP | {h.lower() for h in extra}


def _dropped(headers: CIMultiDictProxy[str] | CIMultiDict[str], extra: tuple[str, ...]) -> frozenset[str]:
    always = _always_dropped(extra)
    if "Connection" not in headers:
        return always
    return always | {t.strip().lower() for v in headers.getall("Connection", []) for t in v.split(",")}


def request_headers(request: web.BaseRequest, strip: Iterable[str] = ()) -> CIMultiDict[str]:
    """The client's headers minus hop-by-hop ones, ``Host`` (the upstream's is used) and ``strip``,
    plus ``X-Forwarded-For`` / ``X-Forwarded-Host`` / ``X-Forwarded-Proto``."""
    drop = _dropped(request.headers, (*strip, "Host"))
    out: CIMultiDict[str] = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in drop)
    peer = request.remote or ""
    prior = request.headers.get("X-Forwarded-For")
    out["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    if request.host and "X-Forwarded-Host" not in out:
        out["X-Forwarded-Host"] = request.host
    if "X-Forwarded-Proto" not in out:
        out["X-Forwarded-Proto"] = request.scheme
    return out


def response_headers(headers: CIMultiDictProxy[str] | CIMultiDict[str], strip: Iterable[str] = ()) -> CIMultiDict[str]:
    """An upstream's response headers minus hop-by-hop ones, those ``Connection`` names and ``strip``."""
    drop = _dropped(headers, tuple(strip))
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in drop)


async def stream_response(request: web.BaseRequest, upstream: ClientResponse | LeanResponse,
                          strip: Iterable[str] = ()) -> web.StreamResponse:
    """Send the upstream's status, headers and body to the client chunk by chunk, as they arrive (a body
    with a length up to ``WHOLE_BODY_LIMIT`` is read first and sent with the headers in one write).

    Raises what reading the upstream raises (aiohttp.ClientError, TimeoutError) or writing to the client
    raises (ConnectionError) — after the upstream's response has started, so the caller can only cut it.
    """
    strip = tuple(strip)
    if isinstance(upstream, ClientResponse) or strip:
        headers = response_headers(upstream.headers, strip)
    else:
        headers = upstream.headers  # the lean client's are end to end already
    length = upstream.content_length
    if length is not None and length <= WHOLE_BODY_LIMIT and request.method != "HEAD":
        whole = web.Response(status=upstream.status, reason=upstream.reason, headers=headers,
                             body=await upstream.read())
        await whole.prepare(request)
        await whole.write_eof()
        return whole
    resp = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
    await resp.prepare(request)
    if request.method != "HEAD":
        chunks = upstream.content.iter_any() if isinstance(upstream, ClientResponse) else upstream.iter_any()
        async for chunk in chunks:
            await resp.write(chunk)
    await resp.write_eof()
    return resp


def cut(request: web.BaseRequest) -> None:
    """Abort the client's connection: a response that broke mid-stream must not look complete."""
    transport = request.transport
    if transport is not None:
        transport.abort()
