"""Which error from a Google client is worth trying again later: one rule for every adapter (Firestore,
Cloud Storage, Compute Engine, the Billing Catalog).

Transient: the service was overloaded, briefly down or too slow (500, 502, 503, 504, 429), a transaction
lost to contention (``Aborted``), the client's own retries ran out (``RetryError``), or the network or the
token refresh failed on the way. Anything else — refused, not found, malformed, not implemented — will
fail the same way again.
"""

from __future__ import annotations

import google.auth.exceptions
import requests
from google.api_core import exceptions as gexc

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    gexc.InternalServerError,
    gexc.BadGateway,
    gexc.ServiceUnavailable,
    gexc.GatewayTimeout,  # DeadlineExceeded too
    gexc.TooManyRequests,
    gexc.Aborted,
    gexc.RetryError,
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    google.auth.exceptions.TransportError,
    ConnectionError,
    TimeoutError,
)


def is_transient(e: BaseException) -> bool:
    return isinstance(e, TRANSIENT_ERRORS)
