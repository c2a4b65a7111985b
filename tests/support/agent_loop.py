"""Stand-ins for the agent loop's clock, stop event and publisher (no I/O, no real waits), and a RAM ramp.

Shared by the unit tests of the agent loop (tests/unit/agent/test_agent_runner.py, test_agent_handoff_loop.py,
test_agent_wake.py).
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from spotleash.agent.memory.reading import MemoryReading
from spotleash.agent.ram import fraction_reading
from spotleash.config import Settings
from spotleash.errors import Transient
from spotleash.wire.events import Event


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeStop:
    """A threading.Event whose wait() advances the fake clock instead of sleeping."""

    def __init__(self, clock: FakeClock, on_wait: Any = None) -> None:
        self.clock = clock
        self._set = False
        self.on_wait = on_wait
        self.waits: list[float] = []

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None and timeout >= 0
        self.waits.append(timeout)
        self.clock.now += timeout
        if self.on_wait:
            self.on_wait(self)
        return self._set


class FakePublisher:
    def __init__(self, fail: bool = False, confirm: bool = True) -> None:
        self.sent: list[Event] = []
        self.fail = fail
        self.confirm = confirm
        self.waited: list[float] = []

    def publish(self, event: Event) -> Future[str]:
        self.sent.append(event)
        f: Future[str] = Future()
        if self.fail:
            f.set_exception(RuntimeError("unreachable"))
        else:
            f.set_result(f"m{len(self.sent)}")
        return f

    def publish_and_wait(self, event: Event, timeout_s: float) -> str:
        self.sent.append(event)
        self.waited.append(timeout_s)
        if not self.confirm:
            raise Transient(f"not confirmed within {timeout_s}s")
        return "released-1"

    def of(self, cls: type[Event]) -> list[Any]:
        return [e for e in self.sent if isinstance(e, cls)]


GB = 2**30


class Ramp:
    """RAM that follows a function of the fake clock."""

    def __init__(self, clock: FakeClock, fn: Any) -> None:
        self.clock, self.fn, self.t0 = clock, fn, clock.now

    def read(self) -> MemoryReading:
        return fraction_reading(float(self.fn(self.clock.now - self.t0)), 16 * GB, "ramp")


SETTINGS = Settings(sample_interval_s=1.0, lease_renew_s=10.0, lease_ttl_s=30.0, release_hold_s=20.0,
                    demand_cooldown_s=60.0, shutdown_budget_s=10.0, components=["vision", "ml_models"],
                    component_ram_gb={"vision": 6.0}, gpu_components=["ml_models"])
