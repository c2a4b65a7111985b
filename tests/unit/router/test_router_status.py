"""``spotleash status``'s view of the router: ``/routes`` read from the admin port (none answering: None),
and a taken admin port does not keep the router from routing."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request

import pytest

from spotleash.router import ComponentRoute, RouterConfig, RouterService
from spotleash.router.status import read_routes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_read_routes_from_a_running_router_and_none_without_one() -> None:
    admin = free_port()
    assert read_routes(admin) is None and read_routes(None) is None
    svc = RouterService(RouterConfig(components=(ComponentRoute("web", 0, f"http://127.0.0.1:{free_port()}"),),
                                     credential="c", admin_port=admin))
    svc.start()
    try:
        routes = read_routes(admin)
        assert routes is not None and set(routes) == {"web"}
        assert routes["web"]["target"] == "local" and routes["web"]["remote_share"] == 0.0
    finally:
        svc.stop()
    assert read_routes(admin) is None


def test_a_taken_admin_port_still_routes() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        svc = RouterService(RouterConfig(components=(ComponentRoute("web", 0, "http://127.0.0.1:9"),),
                                         credential="c", admin_port=busy))
        addresses = svc.start()
        try:
            assert svc.router.admin_address is None and addresses["web"][1] > 0
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(f"http://127.0.0.1:{addresses['web'][1]}/", timeout=3)  # noqa: S310
            assert e.value.headers["X-Spotleash-Router"] == "1"  # the router answered: its local copy is absent
        finally:
            svc.stop()


class FlakyWatch:
    """A record listener whose first start fails (Firestore unreachable), then works."""

    def __init__(self) -> None:
        self.starts = 0
        self.active = False

    def start(self) -> None:
        self.starts += 1
        if self.starts == 1:
            raise RuntimeError("firestore unavailable")
        self.active = True

    def stop(self) -> None:
        self.active = False

    def ensure(self) -> bool:
        if not self.active:
            self.start()
            return True
        return False


def test_a_listener_that_fails_to_start_is_retried_while_the_router_routes(monkeypatch: pytest.MonkeyPatch) -> None:
    from spotleash.router import service

    monkeypatch.setattr(service, "_WATCH_CHECK_S", 0.05)
    watch = FlakyWatch()
    svc = RouterService(RouterConfig(components=(ComponentRoute("web", 0, "http://127.0.0.1:9"),), credential="c"),
                        watch_factory=lambda _r, _l: watch)  # type: ignore[arg-type,return-value]
    svc.start()
    try:
        deadline = time.monotonic() + 5
        while not watch.active:
            assert time.monotonic() < deadline, "the listener was never started again"
            time.sleep(0.02)
        assert watch.starts == 2 and svc.routes()["web"]["target"] in ("local", "none")
    finally:
        svc.stop()
