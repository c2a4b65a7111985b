"""The one rule for which Google error is transient, and the adapters that follow it."""

from __future__ import annotations

import pytest
import requests
from google.api_core import exceptions as gexc

from spotleash.adapters.google_errors import is_transient
from spotleash.errors import NotFound, ProviderPermanent, ProviderTransient
from spotleash.providers.gce.provider import translate


@pytest.mark.parametrize("error", [
    gexc.InternalServerError("x"), gexc.BadGateway("x"), gexc.ServiceUnavailable("x"), gexc.DeadlineExceeded("x"),
    gexc.TooManyRequests("x"), gexc.Aborted("x"), gexc.RetryError("gave up", None), requests.ConnectionError(),
    requests.Timeout(), ConnectionResetError(), TimeoutError(),
])
def test_busy_down_slow_or_unreachable_is_transient(error: Exception) -> None:
    assert is_transient(error)
    assert isinstance(translate(error, "create"), ProviderTransient)


@pytest.mark.parametrize("error", [
    gexc.BadRequest("x"), gexc.Forbidden("x"), gexc.Unauthorized("x"), gexc.Conflict("x"),
    gexc.MethodNotImplemented("x"), requests.exceptions.InvalidURL(), ValueError("x"),
])
def test_refused_or_malformed_is_not(error: Exception) -> None:
    assert not is_transient(error)
    assert isinstance(translate(error, "create"), ProviderPermanent)


def test_not_found_stays_not_found() -> None:
    assert not is_transient(gexc.NotFound("x"))
    assert isinstance(translate(gexc.NotFound("x"), "get"), NotFound)
