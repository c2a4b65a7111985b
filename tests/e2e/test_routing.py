"""Requests follow the component, through a real fake instance (issue 13, "Done when").

One real agent (``python -m spotleash.agent``, the example app's spotleash.toml with its router) holds
one lease for the whole module; the example's components run locally and, once the control plane
launched them, on Compute fake VMs that run the real startup script, fetch the published package and
start the instance's TLS front. Every response names the copy that answered (``X-Served-By``: ``local``
or the instance id). The tests run in order on that one lease, each leaving it ready for the next:

1. requests go local, then to the instance once it is READY and its probe passes (``status`` shows it);
2. server-sent events stream through the instance event by event;
3. the instance's front refuses a request without the lease credential or with a wrong one;
4. preemption: traffic back to local with no failed request, then to the failover replacement;
5. SIGKILL of every process of the instance: no failed GET, a POST in flight gets a 502 saying why;
   traffic back to local by the router's own probes, then to the replacement of the silent instance;
6. the reaper deletes that replacement (its deadline passed): traffic back to local with no failure;
7. a VAST box: its front is reached through the host port VAST maps its port 8443 to;
8. SIGTERM to the agent: new requests go local while a stream in flight on the instance (the VAST box)
   finishes, the release is published and the instance is deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from tests.e2e.flows import Flows, running
from tests.e2e.packaged import MARKER, packages_on, thumbs_demand

from local_emulator import procs
from local_emulator.load import SERVED_BY
from local_emulator.routed_app import COMPONENTS, RoutedApp
from spotleash.model import ENDED, InstanceRecord, State
from spotleash.polling import wait_until
from spotleash.router.channel import COMPONENT_HEADER, CREDENTIAL_HEADER

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


READY_TIMEOUT_S = 240.0


@pytest.fixture(scope="module")
def published(local_stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with packages_on(local_stack.state_dir, tmp_path_factory.mktemp("publish-state")) as result:
        yield result


@pytest.fixture(scope="module")
def flows(published: dict[str, Any]) -> Flows:
    return Flows()


class Lease:
    """The module's one lease: its routed app and the instance that serves it now."""

    def __init__(self, app: RoutedApp, flows: Flows) -> None:
        self.app = app
        self.flows = flows
        self.current: InstanceRecord | None = None

    @property
    def rec(self) -> InstanceRecord:
        assert self.current is not None, "an earlier test of this module did not leave an instance"
        return self.current

    def wait_new_ready(self, seen: set[str]) -> InstanceRecord:
        def check() -> InstanceRecord | None:
            recs = [r for r in self.flows.records_of(self.app.lease_id) if r.instance_id not in seen]
            for r in recs:
                if r.state in ENDED:
                    raise AssertionError(f"{r.instance_id} ended {r.state}: {r.reason}")
            return next((r for r in recs if r.state == State.READY), None)

        rec: InstanceRecord = wait_until(check, timeout_s=READY_TIMEOUT_S, interval_s=0.5,
                                         what=f"a new READY instance of {self.app.lease_id}")
        self.current = rec
        return rec

    def demand_again(self, *, gpu: bool = False) -> InstanceRecord:
        """What the agent does when it needs capacity: a demand carrying its route credential's hash."""
        seen = {r.instance_id for r in self.flows.records_of(self.app.lease_id)}
        event = thumbs_demand(self.app.lease_id, gpu=gpu).model_copy(
            update={"route_credential_sha256": self.rec.route_credential_sha256})
        self.flows.publish(event)
        rec = self.wait_new_ready(seen)
        self.app.wait_served_by(rec.instance_id)
        return rec


@pytest.fixture(scope="module")
def lease(flows: Flows, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lease]:
    with running(RoutedApp(lease_id=f"route-{uuid.uuid4().hex[:8]}", work=tmp_path_factory.mktemp("routed-app")),
                 flows) as app:
        yield Lease(app, flows)


def similar_via_router(app: RoutedApp) -> httpx.Response:
    r = httpx.post(app.url("vectors", "/similar"), json={"id": 7, "k": 3}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["ids"][0] == 7 and len(r.json()["ids"]) == 3
    return r


# ------------------------------------------------------------------ 1. READY → remote
def test_requests_go_local_then_to_the_instance_once_it_is_ready(lease: Lease) -> None:
    app = lease.app
    local_answer = similar_via_router(app)  # the instance takes many seconds to install: this is local
    assert local_answer.headers[SERVED_BY] == "local"
    assert {n: v["target"] for n, v in app.routes()["routes"].items()} == {n: "local" for n in COMPONENTS}

    rec = lease.wait_new_ready(set())
    assert rec.provider == "gce" and rec.tls_fingerprint and rec.route_credential_sha256
    app.wait_served_by(rec.instance_id)
    remote_answer = similar_via_router(app)
    assert remote_answer.headers[SERVED_BY] == rec.instance_id
    assert remote_answer.json() == local_answer.json(), "both copies answer the same query the same way"

    routes = app.routes()["routes"]
    for name in COMPONENTS:
        assert routes[name]["target"] == "remote" and routes[name]["instance_id"] == rec.instance_id
        change = app.route_changes(name)[-1]
        assert change["to_target"] == f"remote:{rec.instance_id}" and "probe passing" in change["reason"]
    out = subprocess.run([sys.executable, "-m", "spotleash.cli", "status", "--json"],
                         env={**os.environ, "SPOTLEASH_ROUTER_ADMIN_PORT": str(app.admin_port)},
                         capture_output=True, text=True, timeout=60, check=True)
    shown = json.loads(out.stdout)["routes"]
    assert {n: shown[n]["target"] for n in COMPONENTS} == {n: "remote" for n in COMPONENTS}
    assert all(0 < shown[n]["remote_share"] <= 1 for n in COMPONENTS)
    assert shown["vectors"]["remote_share"] < 1, "its first answer came from the local copy"


# ------------------------------------------------------------------ 2. streaming
def test_server_sent_events_stream_through_the_instance_event_by_event(lease: Lease) -> None:
    rec = lease.rec
    events: list[tuple[float, dict[str, Any]]] = []  # (received at, event)
    with httpx.stream("GET", lease.app.url("vectors", "/similar/stream?id=7&k=4&every_s=0.5"), timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "text/event-stream"
        assert r.headers[SERVED_BY] == rec.instance_id
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: {}":
                events.append((time.time(), json.loads(line[6:])))
    assert [e["rank"] for _, e in events] == [0, 1, 2, 3] and events[0][1]["id"] == 7
    first_received, last_sent = events[0][0], events[-1][1]["sent_at"]
    assert first_received < last_sent, "the first event reached the client before the instance sent the last"


# ------------------------------------------------------------------ 3. the front's credential check
def test_the_instance_front_refuses_a_missing_or_wrong_credential(lease: Lease) -> None:
    rec = lease.rec
    endpoint = rec.component_states["vectors"].endpoint
    assert endpoint and endpoint == rec.component_states["thumbnailer"].endpoint, "one front for every component"
    host, port = endpoint.rsplit(":", 1)
    pem = ssl.get_server_certificate((host, int(port)))
    assert hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest() == rec.tls_fingerprint, "the pinned certificate"
    pinned = ssl.create_default_context(cadata=pem)  # trust exactly this certificate
    with httpx.Client(verify=pinned, timeout=10) as client:
        url = f"https://{endpoint}/similar"
        missing = client.post(url, json={"id": 7, "k": 3}, headers={COMPONENT_HEADER: "vectors"})
        wrong = client.post(url, json={"id": 7, "k": 3},
                            headers={COMPONENT_HEADER: "vectors", CREDENTIAL_HEADER: "not-the-lease-credential"})
        plain_health = client.get(f"https://{endpoint}/healthz", headers={COMPONENT_HEADER: "thumbnailer"})
    assert missing.status_code == 401 and "missing credential" in missing.json()["error"]
    assert wrong.status_code == 401 and "wrong credential" in wrong.json()["error"]
    assert plain_health.status_code == 401
    assert SERVED_BY not in missing.headers and SERVED_BY not in wrong.headers, "no component saw them"
    with pytest.raises(httpx.TransportError):  # and it answers nothing but TLS: plain HTTP gets no response
        httpx.get(f"http://{endpoint}/healthz", timeout=10)


# ------------------------------------------------------------------ 4. preemption
def test_preemption_sends_traffic_local_without_a_failure_then_to_the_replacement(lease: Lease) -> None:
    app, flows, old = lease.app, lease.flows, lease.rec
    with app.load() as traffic:
        traffic.wait_requests(20)
        flows.compute("POST", f"instances/{old.zone}/{old.provider_id}/preempt")
        app.wait_served_by("local")
        for name in COMPONENTS:
            left = next(c for c in app.route_changes(name) if c["from_target"] == f"remote:{old.instance_id}")
            assert "preemption notice" in left["reason"], left
        new = lease.wait_new_ready({old.instance_id})
        assert new.replaces == old.instance_id
        app.wait_served_by(new.instance_id)
        traffic.wait_requests(20)
    assert traffic.failures == [], traffic.failures[:5]
    assert traffic.served[old.instance_id] and traffic.served["local"] and traffic.served[new.instance_id]
    print("preemption:", dict(traffic.served))


# ------------------------------------------------------------------ 5. SIGKILL of the instance
def _kill_instance(flows: Flows, rec: InstanceRecord, post_in_flight: threading.Thread) -> None:
    """Freeze the vectors component (a POST then waits on it), start the POST, then SIGKILL everything."""
    vm = flows.vm(rec.provider_id or "")
    assert vm is not None and vm["pid"]
    parts = procs.find_marked(MARKER, rec.instance_id)
    vectors = [p for p in parts if any("vectors.py" in a for a in p.cmdline())]
    assert vectors, "the vectors component runs on the instance"
    for p in vectors:
        p.send_signal(signal.SIGSTOP)
    post_in_flight.start()
    time.sleep(1.0)  # the POST reaches the front (and the frozen component) or, at worst, the dead front
    os.killpg(os.getpgid(int(vm["pid"])), signal.SIGKILL)
    for p in procs.find_marked(MARKER, rec.instance_id):
        p.kill()


def test_sigkill_of_the_instance_loses_no_get_and_a_post_in_flight_gets_a_clear_502(lease: Lease) -> None:
    app, flows, rec = lease.app, lease.flows, lease.rec
    app.wait_served_by(rec.instance_id)
    before = {r.instance_id for r in flows.records_of(app.lease_id)}
    post: dict[str, httpx.Response] = {}

    def send_post() -> None:
        post["r"] = httpx.post(app.url("vectors", "/similar"), json={"id": 3, "k": 2}, timeout=90)

    poster = threading.Thread(target=send_post, daemon=True)
    with app.load() as traffic:
        traffic.wait_requests(20)
        _kill_instance(flows, rec, poster)
        poster.join(timeout=90)
        app.wait_served_by("local")
        traffic.wait_requests(20)
    assert traffic.failures == [], traffic.failures[:5]
    assert traffic.served[rec.instance_id] and traffic.served["local"]
    r = post["r"]
    assert r.status_code == 502 and r.headers.get("X-Spotleash-Router") == "1", r.text
    error = r.json()["error"]
    assert "remote copy of vectors failed before responding" in error and "not idempotent" in error, error
    left = next(c for c in app.route_changes("thumbnailer") if c["from_target"] == f"remote:{rec.instance_id}")
    assert "probe of" in left["reason"], left  # the router's own probes, before any record changed
    gone = flows.wait_state(rec.instance_id, set(ENDED), timeout_s=60)
    assert gone.reason == "heartbeat_lost", gone.reason
    new = lease.wait_new_ready(before)  # a silent instance is replaced (failover), and traffic follows
    assert new.replaces == rec.instance_id
    app.wait_served_by(new.instance_id)
    print("sigkill:", dict(traffic.served), "post:", error, "record:", gone.state, gone.reason)


# ------------------------------------------------------------------ 6. reaper deletion
def test_reaper_deletion_sends_traffic_local_without_a_failure(lease: Lease) -> None:
    app, flows, rec = lease.app, lease.flows, lease.rec
    app.wait_served_by(rec.instance_id)
    with app.load() as traffic:
        traffic.wait_requests(20)
        flows.store.update(rec.instance_id, lambda r: r.model_copy(update={"deadline": datetime.now(UTC)}))
        app.wait_served_by("local")
        traffic.wait_requests(20)
    assert traffic.failures == [], traffic.failures[:5]
    assert traffic.served[rec.instance_id] and traffic.served["local"]
    for name in COMPONENTS:
        left = next(c for c in app.route_changes(name) if c["from_target"] == f"remote:{rec.instance_id}")
        assert "is ending" in left["reason"], left  # the listener saw TERMINATING before the VM went
    gone = flows.wait_gone(rec, timeout_s=60)
    assert gone.reason == "max_runtime"


# ------------------------------------------------------------------ 7. a VAST box: the front behind VAST's port map
def test_a_vast_box_is_reached_through_the_host_port_vast_maps_its_front_to(lease: Lease) -> None:
    from vastai import VastAI

    rec = lease.demand_again(gpu=True)
    assert rec.provider == "vast" and rec.provider_id
    vast = VastAI(api_key=os.environ["SPOTLEASH_VAST_API_KEY"], server_url=os.environ["SPOTLEASH_VAST_URL"], raw=True)
    box = vast.show_instance(int(rec.provider_id))
    host_port = box["ports"]["8443/tcp"][0]["HostPort"]
    assert host_port != "8443"
    assert {c.endpoint for c in rec.component_states.values()} == {f"{box['public_ipaddr']}:{host_port}"}
    assert similar_via_router(lease.app).headers[SERVED_BY] == rec.instance_id


# ------------------------------------------------------------------ 8. release
def test_agent_sigterm_sends_new_requests_local_while_a_stream_in_flight_finishes(lease: Lease) -> None:
    app, flows, rec = lease.app, lease.flows, lease.rec
    app.wait_served_by(rec.instance_id)
    events: list[dict[str, Any]] = []
    headers: dict[str, str] = {}

    def stream() -> None:
        # 8 events 0.25 s apart: 2 s of stream inside the agent's 5 s drain (0.5 s apart left 1 s of margin, and a
        # run with two test lanes on 2 cores got 4 events before the drain deadline closed it)
        with httpx.stream("GET", app.url("vectors", "/similar/stream?id=9&k=8&every_s=0.25"), timeout=30) as r:
            headers.update(r.headers)
            events.extend(json.loads(ln[6:]) for ln in r.iter_lines() if ln.startswith("data: "))

    streamer = threading.Thread(target=stream, daemon=True)
    streamer.start()
    wait_until(lambda: headers, timeout_s=10, interval_s=0.05, what="the stream to start")
    assert app.agent is not None
    app.agent.send_signal(signal.SIGTERM)
    wait_until(lambda: all(any("lease released" in c["reason"] for c in app.route_changes(n)) for n in COMPONENTS),
               timeout_s=10, interval_s=0.05, what="the router to send every component local")
    during = app.get("thumbnailer")  # the router still runs: the stream in flight holds its drain
    streamer.join(timeout=30)
    assert app.agent.wait(timeout=30) == 0, "the release was confirmed"
    assert during.status_code == 200 and during.headers[SERVED_BY] == "local"
    assert headers[SERVED_BY.lower()] == rec.instance_id
    assert [e.get("rank") for e in events] == [*range(8), None], "the stream in flight finished on the instance"
    assert app.logged("release confirmed") is not None
    gone = flows.wait_gone(rec, timeout_s=60)
    assert gone.state == State.TERMINATED
    with pytest.raises(httpx.ConnectError):  # the router stopped with the agent
        app.get("thumbnailer", timeout_s=5)


def test_module_left_nothing_running(lease: Lease) -> None:
    for r in lease.flows.records_of(lease.app.lease_id):
        assert r.state in ENDED, (r.instance_id, r.state)
        assert not procs.find_marked(MARKER, r.instance_id)

