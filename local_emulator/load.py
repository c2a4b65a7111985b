"""A load through the router for whole-flow tests and benchmarks: GETs one after another from a thread.

    with Load({"vectors": "http://127.0.0.1:8202/healthz", ...}, timeout_s=150) as load:
        load.wait_requests(20)
        ...
    assert load.failures == [] and load.served["local"] and load.served[instance_id]

Each URL is asked in turn; an answer counts as served when it is a 200 whose JSON names that component
(``{"component": ...}``, as the example app's and the ballast app's health paths answer), by whom its
``X-Served-By`` header says (an instance id, or ``local``). Anything else — another status, a body that is not
the component's, a transport error or a per-request timeout — is a failure, kept with its component and reason.
Bounded: ``max_s`` seconds, and ``max_requests`` requests when set.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx

from spotleash.polling import wait_until

SERVED_BY = "X-Served-By"


@dataclass
class Load:
    urls: Mapping[str, str]  # component → the URL to GET through the router (its JSON answer names the component)
    timeout_s: float = 60.0  # per request: above the router's hold when a test makes it wait for a replacement
    max_s: float = 600.0
    max_requests: int | None = None
    pause_s: float = 0.02
    served: Counter[str] = field(default_factory=Counter)  # X-Served-By → count
    failures: list[str] = field(default_factory=list)
    last_served_by: str = ""
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError("a load needs at least one URL")

    def __enter__(self) -> Load:
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=self.timeout_s + 30)

    @property
    def total(self) -> int:
        return sum(self.served.values()) + len(self.failures)

    def wait_requests(self, n: int, timeout_s: float = 30.0) -> None:
        start = self.total
        wait_until(lambda: self.total >= start + n, timeout_s=timeout_s, interval_s=0.1, what=f"{n} more requests")

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_s
        names = list(self.urls)
        sent = 0
        with httpx.Client(timeout=self.timeout_s, trust_env=False) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                if self.max_requests is not None and sent >= self.max_requests:
                    return
                name = names[sent % len(names)]
                sent += 1
                failure = self._one(client, name)
                if failure is not None:
                    self.failures.append(f"{name}: {failure}")
                time.sleep(self.pause_s)  # after a failure too: a refused connection must not spin

    def _one(self, client: httpx.Client, name: str) -> str | None:
        """One GET; None when ``name`` answered (counted by who served it), else what failed."""
        try:
            r = client.get(self.urls[name])
            ok = r.status_code == 200 and r.json().get("component") == name
        except (httpx.HTTPError, ValueError, AttributeError) as e:  # ValueError / AttributeError: not its JSON
            return f"{type(e).__name__}: {e}"
        if not ok:
            return f"{r.status_code} {r.text[:300]}"
        self.last_served_by = r.headers.get(SERVED_BY, "?")
        self.served[self.last_served_by] += 1
        return None
