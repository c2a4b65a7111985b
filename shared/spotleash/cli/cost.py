"""``spotleash cost [--since DATE] [--json]``: the cost ledger as a table (or JSON on stdout).

In the spirit of ``sky cost-report``, but from each instance's recorded life rather than catalog price ×
uptime: GCE Spot billed from RUNNING to the confirmed deletion at the price in force at launch, a VAST box's
GPU while it ran and its storage while it existed. The window runs from DATE (default: the first of this
month, UTC) to now; an instance spanning midnight bills both days.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, date, datetime, time
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from spotleash.clock import month_start
from spotleash.decide.ledger import Ledger, Line, build_ledger, region_of
from spotleash.errors import BadInput, ExitCode

if TYPE_CHECKING:
    from spotleash.adapters.firestore import Store
    from spotleash.config import Settings


def parse_since(text: str | None, now: datetime) -> datetime:
    """``YYYY-MM-DD`` (midnight UTC) or an ISO timestamp with a zone; default: the 1st of this month."""
    if text is None or not text.strip():
        return month_start(now)
    raw = text.strip()
    try:
        at = (datetime.combine(date.fromisoformat(raw), time.min, tzinfo=UTC) if len(raw) == 10
              else datetime.fromisoformat(raw))
    except ValueError as e:
        raise BadInput(f"--since {raw!r} is not a date: use YYYY-MM-DD (e.g. {now.date().isoformat()})") from e
    if at.tzinfo is None:
        raise BadInput(f"--since {raw!r} has no time zone: add one (e.g. {raw}+00:00) or give a date")
    if at > now:
        raise BadInput(f"--since {raw!r} is in the future")
    return at.astimezone(UTC)


def ledger_since(store: Store, since: datetime, now: datetime,
                 price: Callable[[str, str], tuple[float, str] | None] | None = None) -> Ledger:
    if since > now:
        raise BadInput(f"--since {since.date().isoformat()} is in the future")
    return build_ledger(store.billed_since(since), since=since, now=now, price=price)


def _money(v: float) -> str:
    return f"{v:.4f}"


def _rate(line: Line) -> str:
    rates = {i.charge: i.rate for i in line.intervals}
    if line.provider == "vast":
        total = rates.get("gpu", 0.0) + rates.get("storage", 0.0)
        return f"{total:.4f} ({rates.get('storage', 0.0):.4f} storage)" if "storage" in rates else f"{total:.4f}"
    return f"{rates.get('compute', 0.0):.4f}"


def _totals(title: str, what: str, totals: dict[Any, float]) -> Table:
    t = Table(title=title, title_justify="left")
    t.add_column(what)
    t.add_column("cost $", justify="right")
    for key, value in totals.items():
        t.add_row(str(key), _money(value))
    return t


def render(ledger: Ledger, console: Console) -> None:
    span = f"{ledger.since.date().isoformat()} → {ledger.now.strftime('%Y-%m-%d %H:%M')} UTC"
    if not ledger.lines:
        console.print(f"no instance billed anything from {span}")
        return
    t = Table(title=f"spotleash cost, {span}", title_justify="left")
    for col in ("instance", "lease", "provider", "machine", "where", "state", "ended because"):
        t.add_column(col, no_wrap=col == "instance")
    for col in ("hours", "$/h", "cost $"):
        t.add_column(col, justify="right")
    for line in ledger.lines:
        mark = " *" if line.notes or line.rate_source not in ("launch",) else ""
        t.add_row(line.instance_id + mark, line.lease_id, line.provider, line.machine or "",
                  region_of(line.zone) or line.zone or "", line.state, line.reason, f"{line.hours:.2f}",
                  _rate(line), _money(line.cost))
    t.add_section()
    t.add_row("total", "", "", "", "", "", "", "", "", f"[bold]{_money(ledger.total)}[/]")
    console.print(t)
    for title, what, totals in (("by day", "day", ledger.by_day), ("by lease", "lease", ledger.by_lease),
                                ("by provider", "provider", ledger.by_provider),
                                ("by reason ended", "reason", ledger.by_reason),
                                ("by component (split evenly)", "component", ledger.by_component),
                                ("by charge", "charge", ledger.by_charge)):
        console.print(_totals(title, what, totals))
    flagged = [ln for ln in ledger.lines if ln.notes or ln.rate_source != "launch"]
    for ln in flagged:
        why = "; ".join([*ln.notes, *([f"priced from {ln.rate_source}"] if ln.rate_source != "launch" else [])])
        console.print(f"* {ln.instance_id}: {why}")


def cost_command(settings: Settings, since: str | None, json_out: bool, *, store: Store | None = None,
                 now: datetime | None = None, console: Console | None = None) -> int:
    now = now or datetime.now(UTC)
    try:
        start = parse_since(since, now)
    except BadInput as e:  # wrong usage: exit 2, one sentence, as the CLI's other usage errors
        Console(stderr=True).print(f"[red]error:[/] {e}")
        return ExitCode.USAGE
    if store is None:
        from spotleash.adapters.firestore import FirestoreStore

        store = FirestoreStore.from_settings(settings)
    from spotleash.pricing.book import PriceBook, PriceCache

    # asked only for a GCE record launched without a price; cached in Firestore when the store is
    book = PriceBook.from_settings(settings, lambda: now, store if isinstance(store, PriceCache) else None)
    ledger = ledger_since(store, start, now, price=book.lookup)
    if json_out:
        print(json.dumps(ledger.to_json()))
    else:
        render(ledger, console or Console())
    return 0
