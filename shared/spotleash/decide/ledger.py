"""The cost ledger: what every instance has cost, from its record's life × the rates in force. Pure.

Billing rules, one place:

- **GCE Spot** bills the whole machine from RUNNING (``running_at``) until the deletion is confirmed
  (``ended_at``, stamped when the record turns TERMINATED), per second with a one-minute minimum,
  at ``price_per_hour`` (the Spot price of its machine type in its region, fixed at launch).
- **VAST** bills the GPU while the box runs (``running_at`` until ``stopped_at``, or the end) and its
  storage for as long as the box exists, stopped included. ``price_per_hour`` is the ``dph_total``
  VAST reported at launch (GPU and storage together), ``storage_per_hour`` its storage part.
- A FAILED record never ran: nothing. A live record bills up to ``now``.

A missing timestamp never silently zeroes a bill: a record the provider ran but whose ``running_at``
is missing bills from ``created_at`` (an upper bound), an ended record without ``ended_at`` ends at
``updated_at``; each such guess is written in the line's ``notes``. Totals are cut to the window
``[since, now)`` and split by day in ``tz`` (an instance spanning midnight bills both days).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any

from spotleash.clock import month_start
from spotleash.model import InstanceRecord, State

GCE_MINIMUM = timedelta(minutes=1)
NO_COMPONENT = "(none)"
STILL_RUNNING = "(live)"

# (machine type, region) -> (USD per hour, where the figure comes from), or None if unknown
PriceLookup = Callable[[str, str], tuple[float, str] | None]


def region_of(zone: str | None) -> str | None:
    """``us-central1-a`` -> ``us-central1``; VAST's geolocations are not GCE zones (None)."""
    if not zone or zone.count("-") < 2:
        return None
    return zone.rsplit("-", 1)[0]


def reason_code(rec: InstanceRecord) -> str:
    """Why the instance ended, as a short code: ``release: agent exit`` -> ``release``."""
    if rec.live:
        return STILL_RUNNING
    code = (rec.reason or "").split(":", 1)[0].strip()
    return code or "unknown"


@dataclass(frozen=True)
class Interval:
    """One billed stretch of one charge (``compute``, ``gpu`` or ``storage``) at one rate."""

    charge: str
    start: datetime
    end: datetime
    rate: float  # USD per hour

    @property
    def hours(self) -> float:
        return max((self.end - self.start).total_seconds(), 0.0) / 3600

    @property
    def cost(self) -> float:
        return self.hours * self.rate

    def clip(self, lo: datetime, hi: datetime) -> Interval | None:
        start, end = max(self.start, lo), min(self.end, hi)
        return Interval(self.charge, start, end, self.rate) if end > start else None

    def by_day(self, tz: tzinfo) -> dict[date, float]:
        """The cost split at each midnight (in ``tz``)."""
        out: dict[date, float] = defaultdict(float)
        cur = self.start
        while cur < self.end:
            local = cur.astimezone(tz)
            midnight = datetime.combine(local.date() + timedelta(days=1), datetime.min.time(), tzinfo=tz)
            stop = min(self.end, midnight)
            out[local.date()] += Interval(self.charge, cur, stop, self.rate).cost
            cur = stop
        return dict(out)


@dataclass(frozen=True)
class Line:
    """One instance's bill inside the window."""

    instance_id: str
    lease_id: str
    provider: str
    machine: str | None
    zone: str | None
    state: str
    reason: str  # reason_code(); STILL_RUNNING while live
    components: tuple[str, ...]
    intervals: tuple[Interval, ...]  # already cut to the window
    rate_source: str  # "launch" (the record's rate) or the price lookup's source
    notes: tuple[str, ...] = ()
    billing: bool = False  # still billing at ``now``

    @property
    def cost(self) -> float:
        return sum(i.cost for i in self.intervals)

    @property
    def hours(self) -> float:
        """Wall-clock hours billed in the window (the longest charge: storage outlives the GPU)."""
        per: dict[str, float] = defaultdict(float)
        for i in self.intervals:
            per[i.charge] += i.hours
        return max(per.values(), default=0.0)

    def to_json(self) -> dict[str, Any]:
        return {
            "instance_id": self.instance_id, "lease_id": self.lease_id, "provider": self.provider,
            "machine": self.machine, "zone": self.zone, "state": self.state, "reason": self.reason,
            "components": list(self.components), "cost": round(self.cost, 6), "hours": round(self.hours, 6),
            "billing": self.billing, "rate_source": self.rate_source, "notes": list(self.notes),
            "intervals": [{"charge": i.charge, "start": i.start.isoformat(), "end": i.end.isoformat(),
                           "rate": i.rate, "cost": round(i.cost, 6)} for i in self.intervals],
        }


def _sorted(d: dict[Any, float]) -> dict[Any, float]:
    return dict(sorted(d.items(), key=lambda kv: str(kv[0])))


@dataclass(frozen=True)
class Ledger:
    since: datetime
    now: datetime
    tz: tzinfo
    lines: tuple[Line, ...]
    total: float = field(init=False)
    by_day: dict[date, float] = field(init=False)
    by_lease: dict[str, float] = field(init=False)
    by_component: dict[str, float] = field(init=False)  # an instance's cost split evenly over its components
    by_charge: dict[str, float] = field(init=False)  # compute / gpu / storage
    by_provider: dict[str, float] = field(init=False)
    by_reason: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        day: dict[date, float] = defaultdict(float)
        lease: dict[str, float] = defaultdict(float)
        comp: dict[str, float] = defaultdict(float)
        charge: dict[str, float] = defaultdict(float)
        provider: dict[str, float] = defaultdict(float)
        reason: dict[str, float] = defaultdict(float)
        for line in self.lines:
            cost = line.cost
            for i in line.intervals:
                charge[i.charge] += i.cost
                for d, c in i.by_day(self.tz).items():
                    day[d] += c
            lease[line.lease_id] += cost
            provider[line.provider] += cost
            reason[line.reason] += cost
            names = line.components or (NO_COMPONENT,)
            for name in names:
                comp[name] += cost / len(names)
        set_ = object.__setattr__  # frozen: the totals are derived once, here
        set_(self, "total", sum(line.cost for line in self.lines))
        set_(self, "by_day", _sorted(day))
        for name, totals in (("by_lease", lease), ("by_component", comp), ("by_charge", charge),
                             ("by_provider", provider), ("by_reason", reason)):
            set_(self, name, _sorted(totals))

    def to_json(self) -> dict[str, Any]:
        def r(totals: dict[Any, float]) -> dict[str, float]:
            return {str(k): round(v, 6) for k, v in totals.items()}

        return {
            "since": self.since.isoformat(), "now": self.now.isoformat(), "currency": "USD",
            "total": round(self.total, 6), "by_day": r(self.by_day), "by_lease": r(self.by_lease),
            "by_component": r(self.by_component), "by_charge": r(self.by_charge),
            "by_provider": r(self.by_provider), "by_reason": r(self.by_reason),
            "instances": [line.to_json() for line in self.lines],
        }


# ------------------------------------------------------------------------------ one record
_RAN = (State.RUNNING, State.READY, State.TERMINATING, State.TERMINATED)


def _span(rec: InstanceRecord, now: datetime) -> tuple[datetime | None, datetime, list[str], bool]:
    """(start, end, notes, still billing) of the instance's existence at the provider."""
    notes: list[str] = []
    if rec.state is State.FAILED or rec.state not in _RAN:
        return None, now, notes, False  # never ran, or not running yet
    start = rec.running_at
    if start is None:
        if rec.state in (State.RUNNING, State.READY) or rec.provider_id is not None:
            start = rec.created_at
            notes.append("running_at missing: billed from created_at (an upper bound)")
        else:
            notes.append("never recorded running and no provider id: nothing billed")
            return None, now, notes, False
    if rec.state is State.TERMINATED:
        end = rec.ended_at
        if end is None:
            end = rec.updated_at
            notes.append("ended_at missing: billed until updated_at")
        return start, end, notes, False
    return start, now, notes, True  # live: bills up to now (TERMINATING until the deletion is confirmed)


def _rates(rec: InstanceRecord, price: PriceLookup | None) -> tuple[float, str]:
    if rec.price_per_hour > 0 or rec.provider != "gce" or price is None:
        return rec.price_per_hour, "launch"
    region = region_of(rec.zone)
    found = price(rec.machine or "", region) if region and rec.machine else None
    return found if found is not None else (0.0, "unknown")


def intervals_of(rec: InstanceRecord, now: datetime, price: PriceLookup | None = None
                 ) -> tuple[list[Interval], str, list[str], bool]:
    """Every billed interval of the record's life (uncut), the rate source, notes, still billing."""
    start, end, notes, billing = _span(rec, now)
    if start is None:
        return [], "launch", notes, billing
    if end < start:
        notes.append(f"ends before it starts ({end.isoformat()} < {start.isoformat()}): nothing billed")
        return [], "launch", notes, billing
    rate, source = _rates(rec, price)
    if rate <= 0:
        notes.append("no rate known: billed at 0")
    if rec.provider == "gce":
        return [Interval("compute", start, max(end, start + GCE_MINIMUM), rate)], source, notes, billing
    storage = min(rec.storage_per_hour, rate)
    gpu_end = end if rec.stopped_at is None else max(start, min(rec.stopped_at, end))
    out = [Interval("gpu", start, gpu_end, rate - storage)]
    if storage > 0:
        out.append(Interval("storage", start, end, storage))
    return [i for i in out if i.end > i.start], source, notes, billing


def line_of(rec: InstanceRecord, since: datetime, now: datetime, price: PriceLookup | None = None) -> Line:
    raw, source, notes, billing = intervals_of(rec, now, price)
    cut = tuple(c for c in (i.clip(since, now) for i in raw) if c is not None)
    return Line(
        instance_id=rec.instance_id, lease_id=rec.lease_id, provider=rec.provider, machine=rec.machine,
        zone=rec.zone, state=str(rec.state), reason=reason_code(rec), components=tuple(rec.components),
        intervals=cut, rate_source=source, notes=tuple(notes), billing=billing,
    )


def build_ledger(records: Iterable[InstanceRecord], *, since: datetime, now: datetime,
                 price: PriceLookup | None = None, tz: tzinfo = UTC) -> Ledger:
    """The ledger of ``records`` over ``[since, now)``. Instances that billed nothing there are left out."""
    lines = [line_of(r, since, now, price) for r in records]
    kept = [ln for ln in lines if ln.intervals or ln.billing]
    kept.sort(key=lambda ln: (min((i.start for i in ln.intervals), default=now), ln.instance_id))
    return Ledger(since=since, now=now, tz=tz, lines=tuple(kept))


def month_to_date(records: Iterable[InstanceRecord], now: datetime, *, price: PriceLookup | None = None,
                  tz: tzinfo = UTC) -> Ledger:
    return build_ledger(records, since=month_start(now, tz), now=now, price=price, tz=tz)


def committed(records: Iterable[InstanceRecord], now: datetime) -> float:
    """Worst case still to pay for the live records: each at its current rate until its deadline."""
    total = 0.0
    for rec in records:
        if not rec.live or rec.deadline <= now:
            continue
        rate = rec.storage_per_hour if rec.stopped_at is not None else rec.price_per_hour
        total += (rec.deadline - now).total_seconds() / 3600 * rate
    return total
