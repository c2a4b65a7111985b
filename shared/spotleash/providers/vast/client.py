"""VAST's REST API over httpx, on the paths the ``vastai`` SDK 1.9.1 uses: calls, retries, errors.

429/5xx/timeouts are retried with bounded backoff; every answer's error is translated into
``spotleash.errors`` in ``translate``. ``CallStats`` keeps where the time went (the smoke run
reports the provider's share apart from spotleash's own).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from spotleash.errors import CapacityExhausted, NotFound, ProviderPermanent, ProviderTransient
from spotleash.log import get_logger

log = get_logger(__name__)


class VastCreateFailed(ProviderPermanent):
    """A create that failed; ``new_contract`` is the id of an instance it left behind, if any."""

    def __init__(self, msg: str, new_contract: int | None) -> None:
        super().__init__(msg)
        self.new_contract = new_contract


@dataclass
class CallStats:
    """Where the time went: in HTTP calls to VAST, in polling sleeps, in SSH attempts."""

    http_s: float = 0.0
    http_calls: int = 0
    sleep_s: float = 0.0
    ssh_s: float = 0.0
    retries: int = 0

    def snapshot(self) -> CallStats:
        return CallStats(self.http_s, self.http_calls, self.sleep_s, self.ssh_s, self.retries)


def _error_of(r: httpx.Response) -> tuple[str, str, dict[str, Any]]:
    try:
        body = r.json()
    except ValueError:
        return "", r.text[:200], {}
    if not isinstance(body, dict):
        return "", str(body)[:200], {}
    return str(body.get("error") or ""), str(body.get("msg") or body.get("detail") or "")[:300], body


def translate(r: httpx.Response, what: str) -> Exception:
    code, msg, body = _error_of(r)
    text = f"VAST {what}: HTTP {r.status_code} {code} {msg}".strip()
    if r.status_code == 429 or r.status_code >= 500:
        return ProviderTransient(text)
    if code == "no_such_instance":
        return NotFound(text)
    if code == "no_such_ask":
        return CapacityExhausted(text)
    if r.status_code in (401, 403):
        return ProviderPermanent(f"{text} (check VAST_API_KEY / SPOTLEASH_VAST_API_KEY)")
    if "new_contract" in body:
        nc = body.get("new_contract")
        return VastCreateFailed(text, int(nc) if nc is not None else None)
    if r.status_code == 404:
        return NotFound(text)
    return ProviderPermanent(text)


class VastClient:
    """One account's API: bearer-authenticated JSON calls, retried and translated, timed in ``stats``."""

    def __init__(self, url: str, api_key: str, *, timeout_s: float = 20.0, attempts: int = 5,
                 client: httpx.Client | None = None) -> None:
        self.url = url.rstrip("/")
        self._api_key = api_key
        self.attempts = attempts
        self.stats = CallStats()
        self._http = client or httpx.Client(base_url=self.url, timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def _once(self, method: str, path: str, what: str, *, json_body: Any = None,
              params: dict[str, str] | None = None) -> httpx.Response:
        t0 = time.monotonic()
        try:
            r = self._http.request(method, path, json=json_body, params=params,
                                   headers={"Authorization": f"Bearer {self._api_key}",
                                            "Accept": "application/json"})
        except httpx.TimeoutException as e:
            raise ProviderTransient(f"VAST {what}: timed out") from e
        except httpx.TransportError as e:
            raise ProviderTransient(f"VAST {what}: {type(e).__name__}: {e}") from e
        finally:
            self.stats.http_s += time.monotonic() - t0
            self.stats.http_calls += 1
        return r

    def call(self, method: str, path: str, what: str, *, json_body: Any = None,
             params: dict[str, str] | None = None, retry: bool = True) -> Any:
        """One API call, retried with backoff on 429/5xx/timeouts; errors translated."""
        def attempt() -> Any:
            r = self._once(method, path, what, json_body=json_body, params=params)
            if r.status_code >= 400:
                err = translate(r, what)
                if isinstance(err, ProviderTransient):
                    log.warning("VAST call failed; will retry", call=what, status=r.status_code)
                raise err
            try:
                return r.json()
            except ValueError as e:
                raise ProviderTransient(f"VAST {what}: answer is not JSON: {r.text[:100]!r}") from e

        if not retry:
            return attempt()
        for a in Retrying(retry=retry_if_exception_type(ProviderTransient),
                          stop=stop_after_attempt(self.attempts),
                          wait=wait_exponential_jitter(multiplier=0.2, max=4.0, jitter=0.2), reraise=True,
                          before_sleep=lambda _s: self._count_retry()):
            with a:
                return attempt()
        raise AssertionError("unreachable")  # pragma: no cover

    def _count_retry(self) -> None:
        self.stats.retries += 1

    def sleep(self, s: float) -> None:
        """A pause while VAST works (counted as the provider's time)."""
        t0 = time.monotonic()
        time.sleep(s)
        self.stats.sleep_s += time.monotonic() - t0
