"""``RouterService``: the router in a thread of its own, for the synchronous local agent.

    service = RouterService(config, watch_factory=firestore_watch(client, lease_id))
    service.start()            # binds every component's port, starts probes and the listener
    service.routes()           # what ``spotleash status`` shows
    service.stop()             # before the agent publishes its release: all traffic local first

Without a watch factory the caller feeds records itself (``apply_records``), which is what tests do.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from spotleash.log import get_logger
from spotleash.router.proxy import Router, RouterConfig
from spotleash.router.table import LocalMode
from spotleash.router.watch import LeaseCallback, RecordsCallback, RecordWatch

log = get_logger(__name__)

WatchFactory = Callable[[RecordsCallback, LeaseCallback], RecordWatch]


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (the cli extra; not on Windows): its transports and
    scheduling in C take a good share off the router's per-request cost. Else asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
_WATCH_CHECK_S = 5.0


def firestore_watch(client: Any, lease_id: str, *, on_records_too: RecordsCallback | None = None,
                    on_hibernation: LeaseCallback | None = None) -> WatchFactory:
    """A listener on the lease's records and lease document; ``on_records_too`` is also given every record
    set, ``on_hibernation`` the lease's hibernation document (the agent's wake-on-request)."""
    def make(on_records: RecordsCallback, on_lease: LeaseCallback) -> RecordWatch:
        def both(records: list[dict[str, Any]]) -> None:
            if on_records_too is not None:
                on_records_too(records)
            on_records(records)

        return RecordWatch(client, lease_id, both, on_lease, on_hibernation)

    return make


class RouterService:
    def __init__(self, config: RouterConfig, watch_factory: WatchFactory | None = None) -> None:
        self.config = config
        self._watch_factory = watch_factory
        self._watch: RecordWatch | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._router: Router | None = None
        self._stop: asyncio.Event | None = None

    @property
    def router(self) -> Router:
        if self._router is None:
            raise RuntimeError("router not started")
        return self._router

    def start(self, timeout_s: float = 10.0) -> dict[str, tuple[str, int]]:
        """Start and return each component's bound local address."""
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(started,), name="spotleash-router", daemon=True)
        self._thread.start()
        started.result(timeout_s)
        if self._watch_factory is not None:
            self._watch = self._watch_factory(self.apply_records, self._lease_changed)
            try:
                self._watch.start()
            except Exception as e:  # noqa: BLE001 - routing local goes on; ensure() retries every few seconds
                log.error("record listener did not start; traffic stays local until it does",
                          error=f"{type(e).__name__}: {e}"[:300])
        return dict(self.router.addresses)

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._watch is not None:
            self._watch.stop()
            self._watch = None
        loop, thread, stop = self._loop, self._thread, self._stop
        if loop is not None and thread is not None and stop is not None and thread.is_alive():
            # A start that failed ends its loop on its own; the thread may still be closing it here.
            with contextlib.suppress(RuntimeError):  # "Event loop is closed": nothing left to stop
                loop.call_soon_threadsafe(stop.set)
            thread.join(timeout_s)

    def apply_records(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Thread-safe: hand the lease's complete record set to the router."""
        snapshot = [dict(r) for r in records]
        self._call(lambda: self.router.apply_records(snapshot))

    def release_lease(self) -> None:
        self._call(lambda: self.router.release_lease())

    def reopen_lease(self) -> None:
        self._call(lambda: self.router.reopen_lease())

    def set_local_mode(self, component: str, mode: LocalMode) -> None:
        """Thread-safe: the hand-off's word on ``component``'s local copy (``table.LocalMode``)."""
        self._call(lambda: self.router.set_local_mode(component, mode))

    def set_component_status(self, source: Callable[[], Mapping[str, Mapping[str, Any]]]) -> None:
        """What ``/routes`` (``components``) and ``/metrics`` (``spotleash_component_*``) show per component; it is
        called in the router's event loop at each read, so it must be quick (a snapshot under a lock)."""
        self._call(lambda: setattr(self.router, "component_status", source))

    def wait_local_drained(self, component: str, timeout_s: float) -> bool:
        """Wait until no request is in flight on ``component``'s local copy (at most ``timeout_s``)."""
        loop = self._loop
        if loop is None or self._router is None:
            return True
        future = asyncio.run_coroutine_threadsafe(self._router.local_drained(component, timeout_s), loop)
        try:
            return bool(future.result(timeout_s + 1.0))
        except (TimeoutError, concurrent.futures.TimeoutError):
            return False

    def wait_drained(self, timeout_s: float) -> bool:
        """Wait until no request is in flight on a remote target (at most ``timeout_s``); True if none is."""
        loop = self._loop
        if loop is None or self._router is None:
            return True
        future = asyncio.run_coroutine_threadsafe(self._router.drained(timeout_s), loop)
        try:
            return bool(future.result(timeout_s + 1.0))
        except (TimeoutError, concurrent.futures.TimeoutError):
            return False

    def routes(self) -> dict[str, dict[str, Any]]:
        routes: dict[str, dict[str, Any]] = self._call(lambda: self.router.routes())
        return routes

    def totals(self) -> dict[str, int]:
        totals: dict[str, int] = self._call(lambda: self.router.metrics.totals())
        return totals

    def _lease_changed(self, lease: dict[str, Any] | None) -> None:
        if lease is not None and lease.get("released"):
            self.release_lease()

    def _call(self, fn: Callable[[], Any]) -> Any:
        loop = self._loop
        if loop is None:
            raise RuntimeError("router not started")

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), loop).result(10.0)

    def _run(self, started: concurrent.futures.Future[None]) -> None:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(self._main(started))

    async def _main(self, started: concurrent.futures.Future[None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        router = Router(self.config)
        try:
            await router.start()
        except OSError as e:
            await router.stop()
            started.set_exception(e)
            return
        self._router = router
        started.set_result(None)
        try:
            while True:
                try:
                    await asyncio.wait_for(self._stop.wait(), _WATCH_CHECK_S)
                    break
                except TimeoutError:
                    watch = self._watch
                    if watch is not None:
                        try:
                            await asyncio.to_thread(watch.ensure)
                        except Exception as e:  # noqa: BLE001 - the router keeps routing; next check retries
                            log.warning("record listener still down", error=f"{type(e).__name__}: {e}"[:300])
        finally:
            await router.stop()
            log.info("router stopped", totals=router.metrics.totals())
