"""The proxy acting on the hand-off's ``LocalMode`` (real sockets, one event loop): a stopped local copy is not
probed and is no retry target — a request whose remote copy fails waits (hold) for a copy instead of failing on the
stopped one; the local copy's in-flight requests are waited for before its stop; HOME takes traffic off the remote."""

from __future__ import annotations

import asyncio
import dataclasses

from tests.unit.router.router_harness import COMPONENT, FAST, run, until, world

from spotleash.router.table import LocalMode, TargetKind


def test_a_stopped_local_copy_is_neither_probed_nor_a_retry_and_requests_wait_for_it() -> None:
    async def main() -> None:
        async with world(limits=dataclasses.replace(FAST, hold_s=5.0)) as w:
            await w.go_remote()
            w.router.set_local_mode(COMPONENT, LocalMode.STOPPED)
            probed = len([h for h in w.local.hits if h[1] == "/healthz"])
            assert await w.get_text("/who") == (200, "remote")
            await w.local.stop()  # the agent stopped the local copy
            await w.front.stop()  # ... and now the remote copy is lost too
            asked = asyncio.ensure_future(w.get_text("/who"))
            await until(lambda: w.router.table.current(COMPONENT).target == TargetKind.NONE, "no target")
            assert not asked.done(), "held, not failed on the stopped local copy"
            assert len([h for h in w.local.hits if h[1] == "/healthz"]) == probed, "a stopped copy is not probed"
            await w.local.start()  # the hand-off restarts the local copy (memory allows) ...
            w.router.set_local_mode(COMPONENT, LocalMode.AUTO)  # ... and, once healthy, gives it back
            assert await asyncio.wait_for(asked, 5) == (200, "local")
            assert w.router.metrics.value("failed_total", component=COMPONENT) == 0

    run(main())


def test_local_drained_waits_for_the_local_copys_requests_in_flight() -> None:
    async def main() -> None:
        async with world() as w:
            slow = asyncio.ensure_future(w.get_text("/hold"))
            await until(lambda: w.local.held == 1, "a request in flight on the local copy")
            await w.go_remote()
            w.router.set_local_mode(COMPONENT, LocalMode.STOPPED)
            assert await w.router.local_drained(COMPONENT, 0.2) is False, "still in flight"
            w.local.release.set()
            assert await w.router.local_drained(COMPONENT, 5.0) is True
            assert (await slow)[0] == 200

    run(main())


def test_home_takes_traffic_off_a_usable_remote_and_drains_it() -> None:
    async def main() -> None:
        async with world() as w:
            await w.go_remote()
            assert await w.get_text("/who") == (200, "remote")
            w.router.set_local_mode(COMPONENT, LocalMode.HOME)
            assert await w.get_text("/who") == (200, "local")
            assert await w.router.drained(2.0) is True
            assert w.router.routes()[COMPONENT]["local_mode"] == "home"

    run(main())
