"""What the router passes on of a request's and a response's headers (``router.forward``)."""

from __future__ import annotations

from unittest.mock import Mock

from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from spotleash.router.channel import COMPONENT_HEADER, CREDENTIAL_HEADER
from spotleash.router.forward import request_headers, response_headers


def test_request_headers_drop_hop_by_hop_connection_named_host_and_stripped_keep_the_rest_in_order() -> None:
    headers = CIMultiDict([
        ("Host", "127.0.0.1:8201"), ("Accept", "a"), ("connection", "keep-alive, X-Private"),
        ("X-Private", "secret"), ("Keep-Alive", "timeout=5"), ("Cookie", "c=1"), ("Accept", "b"),
        (CREDENTIAL_HEADER, "token"), (COMPONENT_HEADER.lower(), "thumbs"), ("TE", "trailers"),
        ("Transfer-Encoding", "chunked"), ("Upgrade", "h2c"), ("Proxy-Authorization", "p"), ("X-Forwarded-For", "10.0.0.1"),
    ])
    peer = Mock()  # the client's socket (aiohttp's transport), as the server would hand it over
    peer.get_extra_info.side_effect = lambda name, default=None: ("127.0.0.1", 50000) if name == "peername" else default
    req = make_mocked_request("GET", "/x", headers=headers, transport=peer)
    out = request_headers(req, strip=(CREDENTIAL_HEADER, COMPONENT_HEADER))
    assert list(out.items()) == [("Accept", "a"), ("Cookie", "c=1"), ("Accept", "b"),
                                 ("X-Forwarded-For", "10.0.0.1, 127.0.0.1"),
                                 ("X-Forwarded-Host", "127.0.0.1:8201"), ("X-Forwarded-Proto", "http")]


def test_response_headers_keep_repeated_ones_and_drop_what_connection_names() -> None:
    headers = CIMultiDict([("Set-Cookie", "a=1"), ("Connection", "close, X-Hop"), ("X-Hop", "1"),
                           ("Set-Cookie", "b=2"), ("Content-Type", "text/plain"), ("Transfer-Encoding", "chunked")])
    assert list(response_headers(headers).items()) == [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"),
                                                   ("Content-Type", "text/plain")]
