"""The router with real sockets: local copy over HTTP, remote copy through the instance's TLS front."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator

import aiohttp
from tests.unit.router.router_harness import COMPONENT, FAST, World, run, until, world
from yarl import URL

from spotleash.router.channel import COMPONENT_HEADER, CREDENTIAL_HEADER
from spotleash.router.proxy import Limits


def test_local_until_remote_ready_then_remote_with_the_credential_stripped() -> None:
    async def main() -> None:
        async with world() as w:
            assert await w.get_text("/who") == (200, "local")
            w.router.apply_records([w.record(state="RUNNING", component_state="starting")])
            assert await w.get_text("/who") == (200, "local")
            await w.go_remote()
            assert await w.get_text("/who") == (200, "remote")
            seen = w.remote.seen_headers[-1]
            assert CREDENTIAL_HEADER not in seen and COMPONENT_HEADER not in seen
            assert seen["X-Forwarded-For"] == "127.0.0.1, 127.0.0.1"  # the app, then the router
            routes = w.router.routes()[COMPONENT]
            assert routes["target"] == "remote" and routes["instance_id"] == "sl-1"
            assert routes["remote_share"] == 0.3333  # two answered locally, then one remotely
            assert w.front.stats.forwarded[COMPONENT] >= 1

    run(main())


def test_request_and_response_pass_unchanged() -> None:
    async def main() -> None:
        async with world() as w:
            await w.go_remote()
            async with w.client.post(URL(w.base + "/echo?x=1&y=%20&z=a%2Fb", encoded=True), data=b"\x00payload",
                                     headers={"X-App": "v", "Authorization": "Bearer app-own"}) as r:
                assert r.status == 201
                assert await r.read() == b"\x00payload"
                assert r.headers["X-Echo-Path"] == "/echo?x=1&y=%20&z=a%2Fb"  # byte for byte
                assert r.headers.getall("Set-Cookie") == ["a=1", "b=2"]
                assert "X-Spotleash-Front-Failure" not in r.headers  # a component cannot fake a front failure
            seen = w.remote.seen_headers[-1]
            assert seen["X-App"] == "v" and seen["Authorization"] == "Bearer app-own"
            async with w.client.head(w.base + "/who") as r:
                assert r.status == 200 and r.headers["Content-Length"] == "6"

    run(main())


def test_wrong_fingerprint_is_refused_before_any_request_reaches_the_instance() -> None:
    async def main() -> None:
        async with world() as w:
            w.router.apply_records([w.record(fingerprint="ee" * 32)])
            await until(lambda: w.router.table.remote_probes(COMPONENT, "sl-1").fail_streak >= 2, "failed probes")
            assert "fingerprint mismatch" in (w.router.table.remote_probes(COMPONENT, "sl-1").last_error or "")
            assert w.router.table.current(COMPONENT).target == "local"
            assert await w.get_text("/who") == (200, "local")
            assert not w.front.stats.forwarded and not w.front.stats.refused  # it never saw a request

    run(main())


def test_front_refuses_missing_or_wrong_credential_and_unknown_component() -> None:
    async def main() -> None:
        async with world() as w:
            assert w.front.address is not None
            url = f"https://127.0.0.1:{w.front.address[1]}/who"
            pin = aiohttp.Fingerprint(bytes.fromhex(w.front.fingerprint))
            async with w.client.get(url, ssl=pin, headers={COMPONENT_HEADER: COMPONENT}) as r:
                assert r.status == 401 and "missing credential" in await r.text()
            async with w.client.get(url, ssl=pin, headers={COMPONENT_HEADER: COMPONENT,
                                                           CREDENTIAL_HEADER: w.credential + "x"}) as r:
                assert r.status == 401 and "wrong credential" in await r.text()
            async with w.client.get(url, ssl=pin, headers={COMPONENT_HEADER: "nope",
                                                           CREDENTIAL_HEADER: w.credential}) as r:
                assert r.status == 404
            async with w.client.get(url, ssl=pin, headers={COMPONENT_HEADER: COMPONENT,
                                                           CREDENTIAL_HEADER: w.credential}) as r:
                assert (r.status, await r.text()) == (200, "remote")
            assert w.remote.hits == [("GET", "/who")]  # the refused ones never reached the component
            try:  # plain HTTP is not spoken on the front's port
                async with w.client.get(url.replace("https", "http"), headers={CREDENTIAL_HEADER: w.credential}):
                    raise AssertionError("plain HTTP answered")
            except aiohttp.ClientConnectionError:
                pass

    run(main())


def test_remote_dies_before_responding_idempotent_retried_locally_post_gets_502() -> None:
    async def main() -> None:
        async with world() as w:
            await w.go_remote()
            get = asyncio.ensure_future(w.get_text("/hold"))
            put = asyncio.ensure_future(w.get_text("/hold", method="PUT", data=b"x" * 1000))
            keyed = asyncio.ensure_future(w.get_text("/hold", method="POST", headers={"Idempotency-Key": "k1"}))
            post = asyncio.ensure_future(w.get_text("/hold", method="POST", data=b"order"))
            await until(lambda: w.remote.held == 4, "four requests held on the remote")
            w.local.release.set()
            w.remote.die.set()  # the component drops every held connection
            assert await get == (200, "local after hold")
            assert await put == (200, "local after hold")
            assert await keyed == (200, "local after hold")
            status, text = await post
            assert status == 502
            why = json.loads(text)["error"]
            assert "remote copy of thumbs failed before responding" in why
            assert "POST is not idempotent, so it was not retried" in why
            assert w.router.metrics.totals()["retried"] == 3
            assert w.router.metrics.totals()["failed"] == 1

    run(main())


def test_streamed_body_is_not_replayed_and_says_so() -> None:
    async def main() -> None:
        async with world(Limits(**{**FAST.__dict__, "replay_limit_bytes": 10})) as w:
            await w.go_remote()
            put = asyncio.ensure_future(w.get_text("/hold", method="PUT", data=b"y" * 100))
            await until(lambda: w.remote.held == 1, "held")
            w.remote.die.set()
            status, text = await put
            assert status == 502 and "streamed and cannot be replayed" in text

    run(main())


def test_going_away_new_requests_local_while_in_flight_finish() -> None:
    async def main() -> None:
        async with world() as w:
            await w.go_remote()
            held = asyncio.ensure_future(w.get_text("/hold"))
            await until(lambda: w.remote.held == 1, "a request in flight on the remote")
            w.router.apply_records([w.record(state="TERMINATING")])
            assert w.router.table.current(COMPONENT).target == "local"
            assert await w.get_text("/who") == (200, "local")  # new requests go local at once...
            assert not held.done()
            w.remote.release.set()
            assert await held == (200, "remote after hold")  # ...while the one in flight finishes remotely
            await until(lambda: "remote:sl-1" not in w.router._upstreams[COMPONENT], "drained target closed")

    run(main())


def test_drain_is_bounded_then_stragglers_are_retried_locally() -> None:
    async def main() -> None:
        async with world(Limits(**{**FAST.__dict__, "drain_s": 0.3})) as w:
            await w.go_remote()
            held = asyncio.ensure_future(w.get_text("/hold"))
            await until(lambda: w.remote.held == 1, "a request in flight on the remote")
            w.local.release.set()
            w.router.apply_records([w.record(preempted=True)])
            assert await held == (200, "local after hold")
            assert w.router.metrics.value("retries_total", component=COMPONENT, source="remote", target="local") == 1

    run(main())


def test_a_target_that_stops_answering_is_not_drained_its_requests_are_retried_at_once() -> None:
    """Frozen or dead: nothing in flight there will finish, so waiting out the drain only delays the retry.
    The drain here is far longer than the test's own deadline: the retry must come from the probe verdict."""
    async def main() -> None:
        async with world(Limits(**{**FAST.__dict__, "drain_s": 60.0, "response_timeout_s": 60.0,
                                                "idle_timeout_s": 60.0})) as w:
            await w.go_remote()
            held = asyncio.ensure_future(w.get_text("/hold"))
            await until(lambda: w.remote.held == 1, "a request in flight on the remote")
            w.local.release.set()
            w.remote.healthy = False  # its probes fail from now on; the request in flight never ends
            assert await held == (200, "local after hold")
            assert w.router.table.current(COMPONENT).target == "local"
            assert "remote:sl-1" not in w.router._upstreams[COMPONENT]
            assert w.router.metrics.value("retries_total", component=COMPONENT, source="remote", target="local") == 1

    run(main(), timeout_s=10.0)


async def _events(resp: aiohttp.ClientResponse) -> AsyncIterator[str]:
    buf = b""
    async for chunk in resp.content.iter_any():
        buf += chunk
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            yield event.decode()


def test_server_sent_events_pass_event_by_event_through_both_hops() -> None:
    async def main() -> None:
        async with world() as w:
            await w.go_remote()
            async with w.client.get(w.base + "/sse") as r:
                assert r.headers["Content-Type"] == "text/event-stream"
                events = _events(r)
                assert await anext(events) == "data: first from remote"
                assert not w.remote.gate.is_set()  # the upstream has not finished: nothing was buffered whole
                w.remote.gate.set()
                assert await anext(events) == "data: last"

    run(main())


def test_chunked_upload_streams_through_both_hops() -> None:
    async def main() -> None:
        async with world() as w:
            await w.go_remote()
            first_arrived = asyncio.Event()

            async def body() -> AsyncIterator[bytes]:
                yield b"a" * 1000
                await until(lambda: sum(map(len, w.remote.upload_chunks)) >= 1000, "first chunk upstream")
                first_arrived.set()
                yield b"b" * 500

            status, text = await w.get_text("/upload", method="PUT", data=body())
            assert first_arrived.is_set()
            assert (status, text) == (200, "remote got 1500 bytes")
            assert "Transfer-Encoding" not in w.remote.seen_headers[-1] or \
                w.remote.seen_headers[-1]["Transfer-Encoding"] == "chunked"

    run(main())


def test_503_with_retry_after_when_no_target_can_serve() -> None:
    async def main() -> None:
        async with world(local=False) as w:
            async with w.client.get(w.base + "/who") as r:
                assert r.status == 503
                assert r.headers["Retry-After"] == "3"
                assert "no target can serve thumbs" in (await r.json())["error"]
            await w.go_remote()
            assert await w.get_text("/who") == (200, "remote")

    run(main())


def test_with_a_hold_a_request_no_target_can_serve_waits_for_one() -> None:
    """hold_s: a request for a component with no local copy waits for its remote copy to come up (a wake or a
    replacement), then is served; past the hold it gets the 503 with Retry-After."""
    async def main() -> None:
        async with world(limits=dataclasses.replace(FAST, hold_s=2.0), local=False) as w:
            async with w.client.get(w.base + "/who") as r:  # nothing comes within the hold
                assert r.status == 503 and r.headers["Retry-After"] == "3"
            waiting = asyncio.ensure_future(w.get_text("/who"))
            await until(lambda: w.router.metrics.value("held_total", component=COMPONENT) == 2,
                        "the second request held")
            assert not waiting.done()
            w.router.apply_records([w.record()])  # the instance READY: the router probes it, then routes to it
            assert await waiting == (200, "remote")
            assert b'spotleash_router_held_total{component="thumbs"} 2.0' in w.router.metrics.render()[0]

    run(main())


def test_a_lone_local_copy_failing_its_probes_still_serves_in_panic_and_503_only_once_it_is_gone() -> None:
    """Its health path answering 500 marks it down, but it is the only copy: requests still go to it (panic,
    counted); once nothing listens on its port (refused), no copy is there: 503 with Retry-After."""
    async def main() -> None:
        async with world() as w:
            w.local.healthy = False
            await until(lambda: w.router.table.current(COMPONENT).panic, "panic routing")
            assert w.router.table.current(COMPONENT).target == "local"
            assert await w.get_text("/who") == (200, "local")
            assert w.router.metrics.value("panic_total", component=COMPONENT) == 1
            w.local.healthy = True
            await until(lambda: not w.router.table.current(COMPONENT).panic, "out of panic")
            assert w.router.table.current(COMPONENT).target == "local"
            await w.local.stop()  # the process is gone: connections refused
            await until(lambda: w.router.table.current(COMPONENT).target == "none", "no copy there")
            async with w.client.get(w.base + "/who") as r:
                assert r.status == 503 and r.headers["Retry-After"] == "3"
            assert w.router.metrics.value("panic_total", component=COMPONENT) == 1

    run(main())


def test_remote_failing_its_probe_sends_traffic_back_local() -> None:
    async def main() -> None:
        async with world() as w:
            await w.go_remote()
            w.remote.healthy = False
            await until(lambda: w.router.table.current(COMPONENT).target == "local", "local after failed probes")
            assert "health path answered 500" in w.router.table.current(COMPONENT).reason
            assert await w.get_text("/who") == (200, "local")
            w.remote.healthy = True
            await until(lambda: w.router.table.current(COMPONENT).target == "remote", "remote again")

    run(main())


def test_concurrency_limit_per_target_gives_503_when_full() -> None:
    async def main() -> None:
        async with world(Limits(**{**FAST.__dict__, "max_in_flight": 1})) as w:
            held = asyncio.ensure_future(w.get_text("/hold"))
            await until(lambda: w.local.held == 1, "the only slot taken")
            async with w.client.get(w.base + "/who") as r:
                assert r.status == 503 and "Retry-After" in r.headers
                assert "requests in flight" in (await r.json())["error"]
            w.local.release.set()
            assert await held == (200, "local after hold")
            assert await w.get_text("/who") == (200, "local")

    run(main())


def test_metrics_and_routes_are_served_on_the_admin_port() -> None:
    async def main() -> None:
        async with world() as w:
            await w.go_remote()
            await w.get_text("/who")
            assert w.router.admin_address is not None
            admin = "http://{}:{}".format(*w.router.admin_address)
            async with w.client.get(admin + "/metrics") as r:
                text = await r.text()
            assert f'spotleash_router_requests_total{{code="2xx",component="{COMPONENT}",target="remote"}} 1.0\n' in text
            assert f'spotleash_router_target{{component="{COMPONENT}",target="remote"}} 1.0\n' in text
            assert r.headers["Content-Type"].startswith("text/plain")
            async with w.client.get(admin + "/metrics", headers={"Accept": "application/openmetrics-text"}) as r:
                assert r.headers["Content-Type"].startswith("application/openmetrics-text")
                assert (await r.text()).endswith("# EOF\n")
            async with w.client.get(admin + "/routes") as r:
                body = await r.json()
            assert body["routes"][COMPONENT]["target"] == "remote"
            assert body["routes"][COMPONENT]["remote_share"] == 1.0
            assert body["totals"] == {"total": 1, "remote": 1, "retried": 0, "failed": 0}

    run(main())


def test_each_target_change_is_one_structured_log_line(caplog: object) -> None:
    import logging

    import pytest

    assert isinstance(caplog, pytest.LogCaptureFixture)

    async def main() -> World:
        async with world() as w:
            with caplog.at_level(logging.INFO, logger="spotleash.router"):
                await w.go_remote()
                w.router.apply_records([w.record(preempted=True)])
            return w

    run(main())
    changes = [r for r in caplog.records if r.getMessage() == "route changed"]
    fields = [getattr(r, "fields", {}) for r in changes]
    assert [(f["from_target"], f["to_target"]) for f in fields] == [("local", "remote:sl-1"), ("remote:sl-1", "local")]
    assert "preemption notice" in fields[1]["reason"]
    assert fields[1]["instance_id"] == "sl-1"
