"""The cost ledger, with a fixed clock and figures computed by hand (in each test's comments)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from spotleash.clock import month_start
from spotleash.decide.ledger import (
    NO_COMPONENT,
    STILL_RUNNING,
    Interval,
    build_ledger,
    committed,
    intervals_of,
    month_to_date,
    reason_code,
    region_of,
)
from spotleash.model import InstanceRecord, State

NOW = datetime(2026, 11, 3, 12, 0, tzinfo=UTC)
MONTH = datetime(2026, 11, 1, tzinfo=UTC)


def t(day: int, hour: int = 0, minute: int = 0, second: int = 0, month: int = 11) -> datetime:
    return datetime(2026, month, day, hour, minute, second, tzinfo=UTC)


def rec(iid: str, state: State = State.TERMINATED, *, provider: str = "gce", created: datetime | None = None,
        running: datetime | None = None, ended: datetime | None = None, price: float = 0.0528,
        **more: Any) -> InstanceRecord:
    created = created or (running - timedelta(minutes=1) if running else t(2))
    data: dict[str, Any] = {
        "instance_id": iid, "lease_id": more.pop("lease_id", "lease-1"), "deployment_id": "dep",
        "event_id": f"ev-{iid}", "provider": provider, "state": state, "created_at": created,
        "updated_at": more.pop("updated", ended or running or created),
        "deadline": more.pop("deadline", created + timedelta(hours=3)),
        "running_at": running, "ended_at": ended, "price_per_hour": price,
        "provider_id": more.pop("provider_id", f"p-{iid}"),
        "zone": more.pop("zone", "us-central1-a" if provider == "gce" else "Texas, US"),
        "machine": more.pop("machine", "e2-highmem-4" if provider == "gce" else "RTX 4090"), **more,
    }
    return InstanceRecord.model_validate(data)


def close(a: float, b: float) -> bool:
    return a == pytest.approx(b, abs=1e-9)


# ------------------------------------------------------------------------------ one instance
def test_gce_bills_from_running_to_confirmed_deletion() -> None:
    # 10:00:00 -> 11:30:00 at $0.0528/h = 1.5 h x 0.0528 = $0.0792
    r = rec("a", running=t(2, 10), ended=t(2, 11, 30), reason="release: agent exit")
    led = build_ledger([r], since=MONTH, now=NOW)
    [line] = led.lines
    assert close(line.cost, 0.0792) and close(led.total, 0.0792)
    assert [(i.charge, i.start, i.end, i.rate) for i in line.intervals] == [("compute", t(2, 10), t(2, 11, 30), 0.0528)]
    assert line.reason == "release" and not line.billing and line.rate_source == "launch"


def test_gce_deleted_mid_hour_bills_to_the_second() -> None:
    # 09:00:00 -> 09:37:30 = 2250 s at $0.1056/h = 2250/3600 x 0.1056 = $0.066
    r = rec("a", running=t(2, 9), ended=t(2, 9, 37, 30), price=0.1056, reason="heartbeat_lost")
    led = build_ledger([r], since=MONTH, now=NOW)
    assert close(led.total, 0.066)
    assert led.by_reason == {"heartbeat_lost": pytest.approx(0.066)}


def test_gce_bills_at_least_one_minute() -> None:
    # ran 12 s, billed 60 s: 60/3600 x 0.0528 = $0.00088
    r = rec("a", running=t(2, 9), ended=t(2, 9, 0, 12))
    assert close(build_ledger([r], since=MONTH, now=NOW).total, 0.00088)


def test_terminating_still_bills_until_the_deletion_is_confirmed() -> None:
    # TERMINATING since 11:00, not confirmed yet: it bills 10:00 -> now 12:00 = 2 h x 0.0528 = $0.1056
    r = rec("a", State.TERMINATING, running=t(3, 10), updated=t(3, 11), reason="max_runtime: past its deadline")
    [line] = build_ledger([r], since=MONTH, now=NOW).lines
    assert close(line.cost, 0.1056) and line.billing and line.reason == STILL_RUNNING


def test_a_running_instance_bills_up_to_now() -> None:
    # READY since 11:15, now 12:00: 0.75 h x 0.0528 = $0.0396
    r = rec("a", State.READY, running=t(3, 11, 15))
    led = build_ledger([r], since=MONTH, now=NOW)
    assert close(led.total, 0.0396) and led.lines[0].billing
    assert led.lines[0].intervals[0].end == NOW
    assert led.by_reason == {STILL_RUNNING: pytest.approx(0.0396)}


def test_an_instance_spanning_midnight_splits_across_days() -> None:
    # 22:30 Nov 1 -> 01:00 Nov 2 at $0.24/h: 1.5 h on Nov 1 = $0.36, 1 h on Nov 2 = $0.24, total $0.60
    r = rec("a", running=t(1, 22, 30), ended=t(2, 1), price=0.24)
    led = build_ledger([r], since=MONTH, now=NOW)
    assert led.by_day == {date(2026, 11, 1): pytest.approx(0.36), date(2026, 11, 2): pytest.approx(0.24)}
    assert close(led.total, 0.60)


def test_days_are_split_in_the_requested_time_zone() -> None:
    # Same instance, Pacific time (UTC-7 on Nov 1-2 2026, PDT ends Nov 1 09:00 UTC; after: UTC-8):
    # 22:30Z Nov 1 = 14:30 PST Nov 1, 01:00Z Nov 2 = 17:00 PST Nov 1: all of it on Nov 1.
    r = rec("a", running=t(1, 22, 30), ended=t(2, 1), price=0.24)
    led = build_ledger([r], since=MONTH, now=NOW, tz=ZoneInfo("America/Los_Angeles"))
    assert led.by_day == {date(2026, 11, 1): pytest.approx(0.60)}


def test_the_window_cuts_an_instance_that_started_last_month() -> None:
    # Oct 31 23:00 -> Nov 1 02:00 at $0.10/h: 2 h fall in November = $0.20 (the October hour is not ours)
    r = rec("a", running=t(31, 23, month=10), ended=t(1, 2), price=0.10)
    led = month_to_date([r], NOW)
    assert led.since == MONTH and close(led.total, 0.20)
    assert led.lines[0].intervals[0].start == MONTH and list(led.by_day) == [date(2026, 11, 1)]


def test_since_cuts_and_drops_what_billed_nothing_in_the_window() -> None:
    early = rec("early", running=t(1, 1), ended=t(1, 2))
    late = rec("late", running=t(2, 23), ended=t(3, 1), price=0.5)
    led = build_ledger([early, late], since=t(3), now=NOW)
    # only late's hour after midnight Nov 3: 1 h x 0.5 = $0.5
    assert [ln.instance_id for ln in led.lines] == ["late"] and close(led.total, 0.5)


# ------------------------------------------------------------------------------ VAST
def test_vast_running_bills_gpu_and_storage() -> None:
    # dph_total $0.40/h of which storage $0.02/h; 2 h running: gpu 2 x 0.38 = 0.76, storage 2 x 0.02 = 0.04
    r = rec("v", provider="vast", running=t(2, 8), ended=t(2, 10), price=0.40, storage_per_hour=0.02)
    led = build_ledger([r], since=MONTH, now=NOW)
    assert led.by_charge == {"gpu": pytest.approx(0.76), "storage": pytest.approx(0.04)}
    assert close(led.total, 0.80) and led.by_provider == {"vast": pytest.approx(0.80)}


def test_a_stopped_vast_box_bills_storage_only() -> None:
    # ran 08:00 -> 09:00 (stopped), deleted 10:00: gpu 1 h x 0.38 = 0.38; storage 2 h x 0.02 = 0.04
    r = rec("v", provider="vast", running=t(2, 8), ended=t(2, 10), price=0.40, storage_per_hour=0.02,
            stopped_at=t(2, 9), reason="stopped_at_provider")
    led = build_ledger([r], since=MONTH, now=NOW)
    [line] = led.lines
    assert {(i.charge, i.start, i.end) for i in line.intervals} == {("gpu", t(2, 8), t(2, 9)),
                                                                     ("storage", t(2, 8), t(2, 10))}
    assert close(led.total, 0.42) and close(line.hours, 2.0)
    assert led.by_reason == {"stopped_at_provider": pytest.approx(0.42)}


def test_a_live_stopped_vast_box_keeps_billing_storage_up_to_now() -> None:
    # stopped at 11:00 and still there at 12:00: gpu 10:00-11:00 0.48, storage 10:00-12:00 2 x 0.02 = 0.04
    r = rec("v", State.TERMINATING, provider="vast", running=t(3, 10), price=0.50, storage_per_hour=0.02,
            stopped_at=t(3, 11))
    led = build_ledger([r], since=MONTH, now=NOW)
    assert led.by_charge == {"gpu": pytest.approx(0.48), "storage": pytest.approx(0.04)}
    assert led.lines[0].billing


def test_vast_without_a_storage_rate_bills_dph_total_as_gpu_and_has_no_minimum() -> None:
    # 30 s at $0.36/h = $0.003 (VAST bills by the second, no minute minimum)
    r = rec("v", provider="vast", running=t(2, 8), ended=t(2, 8, 0, 30), price=0.36)
    led = build_ledger([r], since=MONTH, now=NOW)
    assert led.by_charge == {"gpu": pytest.approx(0.003)}


def test_stopped_before_running_is_read_as_no_gpu_time() -> None:
    r = rec("v", provider="vast", running=t(2, 8), ended=t(2, 9), price=0.40, storage_per_hour=0.02,
            stopped_at=t(2, 7))
    led = build_ledger([r], since=MONTH, now=NOW)
    assert led.by_charge == {"storage": pytest.approx(0.02)}


# ------------------------------------------------------------------------------ never ran, missing timestamps
def test_failed_and_pending_records_bill_nothing() -> None:
    failed = rec("f", State.FAILED, ended=t(2, 1), reason="no_capacity: every zone")
    pending = rec("p", State.PROVISIONING, created=t(3, 11), provider_id=None)
    requested = rec("q", State.REQUESTED, created=t(3, 11), provider_id=None)
    led = build_ledger([failed, pending, requested], since=MONTH, now=NOW)
    assert led.lines == () and led.total == 0.0


def test_missing_running_at_bills_from_created_at_with_a_note() -> None:
    # RUNNING without running_at: created 11:00, bills 11:00 -> 12:00 = $0.0528, and says so
    r = rec("a", State.RUNNING, created=t(3, 11), running=None)
    [line] = build_ledger([r], since=MONTH, now=NOW).lines
    assert close(line.cost, 0.0528) and "running_at missing" in line.notes[0]


def test_missing_ended_at_ends_at_updated_at_with_a_note() -> None:
    # TERMINATED without ended_at, last updated 10:30: 10:00 -> 10:30 = 0.5 x 0.0528 = $0.0264
    r = rec("a", running=t(2, 10), ended=None, updated=t(2, 10, 30))
    [line] = build_ledger([r], since=MONTH, now=NOW).lines
    assert close(line.cost, 0.0264) and "ended_at missing" in line.notes[0]


def test_ended_without_running_and_without_provider_id_bills_nothing() -> None:
    r = rec("a", running=None, ended=t(2, 1), provider_id=None, reason="released during launch")
    raw, _, notes, billing = intervals_of(r, NOW)
    assert raw == [] and not billing and "nothing billed" in notes[0]


def test_an_end_before_the_start_bills_nothing_and_says_so() -> None:
    r = rec("a", running=t(2, 10), ended=t(2, 9))
    raw, _, notes, _ = intervals_of(r, NOW)
    assert raw == [] and "ends before it starts" in notes[0]


def test_a_gce_record_without_a_price_is_priced_by_the_lookup() -> None:
    # no launch price; the lookup says $0.06/h in us-east1 for e2-highmem-4: 2 h = $0.12
    def lookup(machine: str, region: str) -> tuple[float, str] | None:
        return (0.06, "catalog 2026-11-01") if (machine, region) == ("e2-highmem-4", "us-east1") else None

    r = rec("a", running=t(2, 10), ended=t(2, 12), price=0.0, zone="us-east1-b")
    [line] = build_ledger([r], since=MONTH, now=NOW, price=lookup).lines
    assert close(line.cost, 0.12) and line.rate_source == "catalog 2026-11-01"
    other = rec("b", running=t(2, 10), ended=t(2, 12), price=0.0, zone="asia-east1-a")
    [line] = build_ledger([other], since=MONTH, now=NOW, price=lookup).lines
    assert line.cost == 0.0 and line.rate_source == "unknown" and "no rate known" in line.notes[0]


# ------------------------------------------------------------------------------ totals
def test_totals_by_lease_component_provider_reason_and_day() -> None:
    a = rec("a", running=t(1, 10), ended=t(1, 12), price=0.10, lease_id="l1",
            components=["vision", "chatbots"], reason="release: agent exit")  # 0.20
    b = rec("b", provider="vast", running=t(2, 23), ended=t(3, 1), price=0.30, storage_per_hour=0.05,
            lease_id="l2", components=["ml_models"], stopped_at=t(3, 0), reason="stopped_at_provider")
    # b: gpu 23:00-00:00 = 0.25; storage 23:00-01:00 = 0.10; total 0.35 (Nov 2: 0.25+0.05, Nov 3: 0.05)
    c = rec("c", State.READY, running=t(3, 11), price=0.12, lease_id="l1")  # 1 h to now: 0.12, no components
    led = month_to_date([c, b, a], NOW)
    assert close(led.total, 0.67)
    assert [ln.instance_id for ln in led.lines] == ["a", "b", "c"]  # by start time
    assert led.by_lease == {"l1": pytest.approx(0.32), "l2": pytest.approx(0.35)}
    assert led.by_component == {NO_COMPONENT: pytest.approx(0.12), "chatbots": pytest.approx(0.10),
                                "ml_models": pytest.approx(0.35), "vision": pytest.approx(0.10)}
    assert led.by_provider == {"gce": pytest.approx(0.32), "vast": pytest.approx(0.35)}
    assert led.by_reason == {STILL_RUNNING: pytest.approx(0.12), "release": pytest.approx(0.20),
                             "stopped_at_provider": pytest.approx(0.35)}
    assert led.by_charge == {"compute": pytest.approx(0.32), "gpu": pytest.approx(0.25),
                             "storage": pytest.approx(0.10)}
    assert led.by_day == {date(2026, 11, 1): pytest.approx(0.20), date(2026, 11, 2): pytest.approx(0.30),
                          date(2026, 11, 3): pytest.approx(0.17)}
    assert close(sum(led.by_day.values()), led.total)


def test_to_json_is_plain_data_with_every_total() -> None:
    led = month_to_date([rec("a", running=t(1, 10), ended=t(1, 12), price=0.10)], NOW)
    out = led.to_json()
    assert out["total"] == 0.2 and out["by_day"] == {"2026-11-01": 0.2} and out["currency"] == "USD"
    assert out["instances"][0]["intervals"][0] == {"charge": "compute", "start": t(1, 10).isoformat(),
                                                   "end": t(1, 12).isoformat(), "rate": 0.10, "cost": 0.2}


def test_committed_is_the_rest_of_each_live_instance_at_its_current_rate() -> None:
    # a: 2 h left at 0.10 = 0.20; b (stopped VAST) 1 h left at storage 0.02 = 0.02; ended and past-deadline: 0
    a = rec("a", State.READY, running=t(3, 11), price=0.10, deadline=t(3, 14))
    b = rec("b", State.TERMINATING, provider="vast", running=t(3, 10), price=0.40, storage_per_hour=0.02,
            stopped_at=t(3, 11), deadline=t(3, 13))
    done = rec("c", running=t(3, 1), ended=t(3, 2), deadline=t(3, 14))
    late = rec("d", State.RUNNING, running=t(3, 1), deadline=t(3, 11))
    assert close(committed([a, b, done, late], NOW), 0.22)


# ------------------------------------------------------------------------------ helpers
def test_helpers() -> None:
    assert month_start(NOW) == MONTH
    assert region_of("europe-west4-b") == "europe-west4" and region_of("Texas, US") is None and region_of(None) is None
    assert reason_code(rec("a", reason="release: bye")) == "release"
    assert reason_code(rec("a", reason=None)) == "unknown"
    assert Interval("gpu", t(1, 23), t(2, 2), 1.0).by_day(UTC) == {date(2026, 11, 1): pytest.approx(1.0),
                                                                  date(2026, 11, 2): pytest.approx(2.0)}
    assert Interval("gpu", t(1, 1), t(1, 2), 1.0).clip(t(1, 3), t(1, 4)) is None
