"""The local agent with its router, in-process with real sockets: the router is built from the app's
``route_port`` components, the demand carries the credential's hash (and the instance front built from
that hash admits the router), records saying READY move traffic remote, and the shutdown sends new
requests local *before* the release is published, lets the remote request in flight finish, then stops
the router — inside the shutdown budget.

Stand-ins, said plainly: the instance is a real ``FrontThread`` before a real HTTP component in this
process (no fake VM), the publisher is a fake, and the records arrive through the router's watch
callback the way the Firestore listener delivers them (that listener is tested on the emulator in
tests/emulator/test_router_watch.py).
"""

from __future__ import annotations

import json
import socket
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.agent_router import (
    SLOW_ANSWERED,
    SLOW_STARTED,
    FakeWatch,
    Publisher,
    app_with,
    free_port,
    get,
    serve,
    wait_for,
)

from spotleash.agent.memory.reading import MemoryReading
from spotleash.agent.ram import fraction_reading
from spotleash.agent.routing import component_routes, start_router
from spotleash.agent.runner import run_agent
from spotleash.config import Settings
from spotleash.errors import ConfigError
from spotleash.instance_agent.front import FrontConfig, FrontThread
from spotleash.wire.events import DemandEvent, ReleaseEvent
from spotleash.wire.package import AppSpec, ComponentSpec

# ---------------------------------------------------------------- the app's routes


def test_route_port_must_be_a_port_of_its_own() -> None:
    ok = app_with(8101, 8201)
    assert component_routes(ok, ["web"])[0].listen_port == 8201
    assert component_routes(ok, ["other"]) == ()
    assert component_routes(app_with(8101, None), ["web"]) == ()  # not routed
    with pytest.raises(ValueError, match=r"web.route_port 8101 is also web.local_url"):
        app_with(8101, 8101)
    with pytest.raises(ValueError, match=r"route_port 8102 is also web.port"):
        app_with(8101, 8102)
    with pytest.raises(ValueError, match="share the route_port 9000"):
        AppSpec(name="t", components=[
            ComponentSpec(name="a", command=["x"], port=8101, route_port=9000),
            ComponentSpec(name="b", command=["x"], port=8102, route_port=9000)])
    with pytest.raises(ValueError, match="http:// or https://"):
        app_with(8101, 8201).model_validate({"name": "t", "components": [
            {"name": "w", "command": ["x"], "port": 8101, "local_url": "ftp://h:1"}]})


def test_no_router_without_a_routed_component() -> None:
    s = Settings(components=["web"], router_admin_port=None)
    assert start_router(s, "lease-1", None) is None
    assert start_router(s, "lease-1", app_with(8101, None)) is None


def test_a_taken_route_port_is_a_configuration_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        s = Settings(components=["web"], router_admin_port=None)
        with pytest.raises(ConfigError, match="cannot listen"):
            start_router(s, "lease-1", app_with(free_port(), busy), watch_factory=FakeWatch.factory([]))


# ---------------------------------------------------------------- the agent with its router


class HighRam:
    name = "highram"

    def read(self) -> MemoryReading:
        return fraction_reading(0.95, 16 * 2**30, "highram")


@pytest.fixture
def copies() -> Iterator[dict[str, int]]:
    local, local_port = serve("local")
    remote, remote_port = serve("remote")
    yield {"local": local_port, "remote": remote_port}
    local.shutdown()
    remote.shutdown()


def test_agent_routes_remote_on_ready_and_its_shutdown_goes_local_before_the_release(
        copies: dict[str, int], tmp_path: Path) -> None:
    route_port, admin_port = free_port(), free_port()
    settings = Settings(components=["web"], component_ram_gb={"web": 1.0}, router_admin_port=admin_port,
                        state_dir=tmp_path, sample_interval_s=0.05, lease_renew_s=5, lease_ttl_s=30,
                        shutdown_budget_s=10.0)
    watches: list[FakeWatch] = []
    router = start_router(settings, "lease-r", app_with(copies["local"], route_port),
                          watch_factory=FakeWatch.factory(watches))
    assert router is not None and watches[0].started
    publisher = Publisher(router)
    stop = threading.Event()
    exit_code: list[int] = []
    agent = threading.Thread(target=lambda: exit_code.append(run_agent(
        settings, lease_id="lease-r", memory=HighRam(), publisher=publisher, stop=stop,
        install_signals=False, router=router)), daemon=True)
    front: FrontThread | None = None
    try:
        agent.start()
        assert get(route_port) == "local", "no remote copy yet: the local one serves"
        demand = wait_for(lambda: [e for e in publisher.sent if isinstance(e, DemandEvent)], what="a demand")[0]
        assert demand.route_credential_sha256 == router.credential_sha256
        # The instance's front is configured with what the demand carried (as launch → AgentConfig does).
        front = FrontThread(FrontConfig(components={"web": copies["remote"]}, listen_host="127.0.0.1",
                                        listen_port=0, credential_sha256=demand.route_credential_sha256))
        host, port = front.start()
        watches[0].on_records([{
            "instance_id": "inst-1", "lease_id": "lease-r", "state": "READY", "tls_fingerprint": front.fingerprint,
            "component_states": {"web": {"state": "healthy", "endpoint": f"{host}:{port}"}}}])
        wait_for(lambda: router.routes()["web"]["target"] == "remote", what="traffic to move remote")
        assert [get(route_port) for _ in range(5)] == ["remote"] * 5
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/routes", timeout=5) as r:  # noqa: S310
            shown = json.loads(r.read())["routes"]["web"]
        assert shown["target"] == "remote" and shown["instance_id"] == "inst-1" and shown["remote_share"] > 0.5

        slow: list[str] = []
        publisher.remote_answered = SLOW_ANSWERED["remote"]
        in_flight = threading.Thread(target=lambda: slow.append(get(route_port, "/slow")), daemon=True)
        in_flight.start()
        # Not a fixed sleep: on a loaded machine the request may take longer than that to get there.
        assert SLOW_STARTED["remote"].wait(10), "the slow request never reached the remote copy"
        stop.set()  # what SIGTERM does
        wait_for(lambda: router.routes()["web"]["target"] == "local" if agent.is_alive() else True,
                 what="traffic to go local")
        during_drain = get(route_port)
        in_flight.join(10)
        agent.join(15)
        assert not agent.is_alive() and exit_code == [0]
    finally:
        stop.set()
        router.stop()
        if front is not None:
            front.stop()
    assert publisher.target_at_release == "local", "new requests went local before the release was published"
    assert during_drain == "local"
    assert slow == ["remote"], "the request in flight on the remote copy finished there (bounded drain)"
    assert publisher.answered_before_release is True, "it was answered before the release deleted the instance"
    releases = [e for e in publisher.sent if isinstance(e, ReleaseEvent)]
    assert len(releases) == 1
    with pytest.raises(OSError):
        get(route_port, timeout=1)  # the router stopped with the agent
