"""Time as spotleash reads it: every time is UTC-aware; an age is seconds."""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from typing import overload


def utcnow() -> datetime:
    return datetime.now(UTC)


@overload
def age_s(since: datetime, now: datetime) -> float: ...
@overload
def age_s(since: datetime | None, now: datetime) -> float | None: ...
def age_s(since: datetime | None, now: datetime) -> float | None:
    """Seconds from ``since`` to ``now``; None when ``since`` is unknown."""
    return (now - since).total_seconds() if since is not None else None


def month_start(now: datetime, tz: tzinfo = UTC) -> datetime:
    """The first instant of ``now``'s month in ``tz`` (the month budgets and the ledger count from)."""
    local = now.astimezone(tz)
    return local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
