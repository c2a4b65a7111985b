"""A clock a test moves by hand; its ``sleep`` advances it instead of waiting (``Context.sleep``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

START = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self, start: datetime = START) -> None:
        self.now = start
        self.slept: list[float] = []  # every sleep asked for, in order

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now

    def ticks(self) -> float:
        """``Context.ticks``: seconds that move only with this clock."""
        return self.now.timestamp()

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(seconds)
