"""Event models and parse_event: round-trips, every rejection reason, and a parser that never raises."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spotleash.wire.events import (
    MAX_EVENT_BYTES,
    BudgetAlert,
    Component,
    DemandEvent,
    Event,
    GpuReport,
    Heartbeat,
    LeaseEvent,
    ReapTick,
    Rejected,
    ReleaseEvent,
    parse_event,
)
from spotleash.wire.ids import ID_PATTERN, new_id

REASONS = {"bad_json", "bad_encoding", "not_an_object", "unknown_version", "wrong_kind", "invalid", "oversize"}
EVENT_MODELS: list[type[Event]] = [DemandEvent, ReleaseEvent, LeaseEvent, ReapTick, Heartbeat]
ALL_MODELS: list[type[Any]] = [*EVENT_MODELS, BudgetAlert]
GCE_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")  # GCE label values: lowercase, digits, _ and -, <= 63

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def demand(**kw: Any) -> DemandEvent:
    base: dict[str, Any] = {"lease_id": "lease-1", "trigger": "threshold", "ram_percent": 91.5,
                            "components": [Component(name="vision", ram_gb=6), Component(name="chatbots")]}
    return DemandEvent(**{**base, **kw})


SAMPLES: list[Event] = [
    demand(),
    demand(trigger="failover", provider="vast", components=[Component(name="ml_models", ram_gb=24, gpu=True)]),
    demand(trigger="manual", provider="gce", created_at=T0, event_id="abc_def-0"),
    ReleaseEvent(lease_id="lease-1"),
    ReleaseEvent(lease_id="lease-1", instance_id="sl-0123456789abcdef0123", reason="user asked"),
    LeaseEvent(lease_id="lease-1", ttl_s=90, holder="host-a pid 42"),
    ReapTick(),
    ReapTick(dry_run=True, force=True, lease_id="lease-2"),
    Heartbeat(lease_id="lease-1", instance_id="sl-1", preempted=True, backend_alive=False, cpu_percent=350.5,
              idle_s=12.25),
]


def body(event: Event) -> dict[str, Any]:
    return json.loads(event.to_bytes())


def dumps(data: Any) -> bytes:
    return json.dumps(data).encode()


# --- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("event", SAMPLES, ids=[f"{e.KIND}-{i}" for i, e in enumerate(SAMPLES)])  # stable ids: xdist workers must collect the same names
def test_every_model_round_trips(event: Event) -> None:
    parsed = parse_event(event.to_bytes(), type(event))
    assert parsed == event
    assert isinstance(parsed, type(event))
    # and from str as well as bytes
    assert parse_event(event.to_bytes().decode(), type(event)) == event


@pytest.mark.parametrize("model", EVENT_MODELS)
def test_defaults_fill_version_id_and_time(model: type[Event]) -> None:
    before = datetime.now(UTC)
    ev = SAMPLES[[type(s) for s in SAMPLES].index(model)]
    fresh = ev.model_copy(update={"event_id": new_id(), "created_at": datetime.now(UTC)})
    assert fresh.schema_version == 1
    assert body(fresh)["kind"] == model.KIND
    assert fresh.created_at >= before and fresh.created_at.tzinfo is not None


def test_demand_derived_properties() -> None:
    ev = demand(components=[Component(name="a", ram_gb=6), Component(name="b", ram_gb=10.5)])
    assert ev.ram_gb == 16.5
    assert not ev.needs_gpu
    assert demand(components=[Component(name="a"), Component(name="b", gpu=True)]).needs_gpu


def test_only_a_failover_demand_names_the_instance_it_replaces() -> None:
    ev = demand(trigger="failover", replaces="sl-lost")
    parsed = parse_event(ev.to_bytes(), DemandEvent)
    assert isinstance(parsed, DemandEvent) and parsed.replaces == "sl-lost"
    refused = parse_event(demand().model_dump_json().replace('"replaces":null', '"replaces":"sl-lost"').encode(),
                          DemandEvent)
    assert isinstance(refused, Rejected) and "only for a failover demand" in refused.detail


# Strategies that build valid events, for a round-trip property over many field values.
ids = st.from_regex(ID_PATTERN, fullmatch=True)
aware = st.builds(
    lambda d, minutes: d.replace(tzinfo=timezone(timedelta(minutes=minutes))),
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)),
    st.integers(min_value=-23 * 60, max_value=23 * 60),
)
components = st.lists(
    st.builds(Component, name=st.from_regex(r"^[A-Za-z0-9_.-]{1,63}$", fullmatch=True),
              ram_gb=st.floats(min_value=0.001, max_value=1024), gpu=st.booleans()),
    min_size=1, max_size=32, unique_by=lambda c: c.name,
)
valid_events = st.one_of(
    st.builds(DemandEvent, event_id=ids, created_at=aware, lease_id=ids,
              trigger=st.sampled_from(["threshold", "predictive", "manual", "failover"]),
              ram_percent=st.floats(0, 100), components=components,
              provider=st.sampled_from([None, "gce", "vast"])),
    st.builds(ReleaseEvent, event_id=ids, created_at=aware, lease_id=ids, instance_id=st.none() | ids,
              reason=st.text(max_size=200)),
    st.builds(LeaseEvent, event_id=ids, created_at=aware, lease_id=ids,
              ttl_s=st.floats(min_value=0.001, max_value=3600), holder=st.text(max_size=200)),
    st.builds(ReapTick, event_id=ids, created_at=aware, lease_id=st.none() | ids, dry_run=st.booleans(),
              force=st.booleans()),
    st.builds(Heartbeat, event_id=ids, created_at=aware, lease_id=ids, instance_id=ids, preempted=st.booleans(),
              backend_alive=st.booleans(), cpu_percent=st.floats(0, 100 * 1024), idle_s=st.floats(min_value=0,
                                                                                                  max_value=1e12)),
)


@settings(max_examples=300, deadline=None)
@given(valid_events)
def test_round_trip_property(event: Event) -> None:
    assert parse_event(event.to_bytes(), type(event)) == event


# --- every rejection reason from a precise input -----------------------------------------------


def reject(raw: bytes | str, model: type[Any] = DemandEvent) -> Rejected:
    out = parse_event(raw, model)
    assert isinstance(out, Rejected), out
    assert out.reason in REASONS and out.detail
    return out


def test_bad_json() -> None:
    assert reject(b'{"kind": "demand",').reason == "bad_json"
    assert reject(b"").reason == "bad_json"
    assert reject(b"{'single': 'quotes'}").reason == "bad_json"


def test_deep_nesting_is_bad_json_not_a_crash() -> None:
    raw = b"[" * 16_000 + b"]" * 16_000  # valid JSON, nested far past the recursion limit
    assert len(raw) <= MAX_EVENT_BYTES
    assert reject(raw).reason == "bad_json"


def test_bad_encoding() -> None:
    out = reject(b'{"kind": "\xff\xfe"}')
    assert out.reason == "bad_encoding"
    assert "byte" in out.detail
    assert reject("lone surrogate \ud800").reason == "bad_encoding"  # a str that is not valid UTF-8


@pytest.mark.parametrize("raw", [b"[]", b"[1, 2]", b"42", b'"demand"', b"null", b"true"])
def test_not_an_object(raw: bytes) -> None:
    assert reject(raw).reason == "not_an_object"


@pytest.mark.parametrize("version", [None, 0, 2, "1", True, 1.0, [1]])
def test_unknown_version(version: Any) -> None:
    data = body(demand())
    if version is None:
        del data["schema_version"]
    else:
        data["schema_version"] = version
    out = reject(dumps(data))
    assert out.reason == "unknown_version"


@pytest.mark.parametrize("model", EVENT_MODELS)
def test_wrong_kind(model: type[Event]) -> None:
    other = next(s for s in SAMPLES if not isinstance(s, model))
    out = reject(other.to_bytes(), model)
    assert out.reason == "wrong_kind"
    assert repr(model.KIND) in out.detail
    data = body(SAMPLES[[type(s) for s in SAMPLES].index(model)])
    del data["kind"]
    assert reject(dumps(data), model).reason == "wrong_kind"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"components": []}, "components"),
        ({"components": None}, "components"),
        ({"ram_percent": 100.5}, "ram_percent"),
        ({"ram_percent": -1}, "ram_percent"),
        ({"trigger": "whim"}, "trigger"),
        ({"provider": "aws"}, "provider"),
        ({"lease_id": "Lease-1"}, "lease_id"),
        ({"lease_id": ""}, "lease_id"),
        ({"lease_id": "a" * 64}, "lease_id"),
        ({"event_id": "-leading-dash"}, "event_id"),
        ({"event_id": "has space"}, "event_id"),
        ({"created_at": "2025-03-01T12:00:00"}, "created_at"),  # naive
        ({"created_at": "yesterday"}, "created_at"),
        ({"surprise": 1}, "surprise"),  # extra fields are forbidden
        ({"components": [{"name": "a"}, {"name": "a", "ram_gb": 2}]}, "components"),
        ({"components": [{"name": "a", "ram_gb": 0}]}, "components.0.ram_gb"),
        ({"components": [{"name": "a", "ram_gb": 2000}]}, "components.0.ram_gb"),
        ({"components": [{"name": "a b"}]}, "components.0.name"),
        ({"components": [{"name": "a", "cpu": 4}]}, "components.0.cpu"),
        ({"components": [{"name": f"c{i}"} for i in range(33)]}, "components"),
    ],
)
def test_invalid_field_names_the_field(change: dict[str, Any], field: str) -> None:
    out = reject(dumps({**body(demand()), **change}))
    assert out.reason == "invalid"
    assert field in out.detail


def test_invalid_detail_is_bounded() -> None:
    data = {**body(demand()), **{f"x{i}": i for i in range(50)}}
    out = reject(dumps(data))
    assert out.reason == "invalid" and "and 47 more" in out.detail


def test_naive_datetime_rejected_even_when_built_in_python() -> None:
    with pytest.raises(ValueError, match="timezone"):
        demand(created_at=datetime(2025, 3, 1, 12, 0))


@pytest.mark.parametrize("value", ["Infinity", "-Infinity", "NaN"])
def test_non_finite_numbers_rejected(value: str) -> None:
    """Python's json accepts these; they would serialise back as null and slip past every bound."""
    raw = body(SAMPLES[-1])
    text = json.dumps(raw).replace('"idle_s": 12.25', f'"idle_s": {value}')
    assert value in text
    assert reject(text.encode(), Heartbeat).reason == "invalid"
    with pytest.raises(ValueError, match="finite"):
        Heartbeat(lease_id="l", instance_id="i", idle_s=float(value.lower().replace("infinity", "inf")))


def test_oversize_is_checked_before_anything_else() -> None:
    ok_size = dumps({**body(ReleaseEvent(lease_id="l")), "reason": "r"})
    assert not isinstance(parse_event(ok_size, ReleaseEvent), Rejected)
    raw = b" " * (MAX_EVENT_BYTES - len(ok_size)) + ok_size  # exactly the limit: still parsed
    assert len(raw) == MAX_EVENT_BYTES
    assert not isinstance(parse_event(raw, ReleaseEvent), Rejected)
    out = reject(b" " + raw, ReleaseEvent)
    assert out.reason == "oversize" and str(MAX_EVENT_BYTES) in out.detail
    assert reject(b"\xff" * (MAX_EVENT_BYTES + 1)).reason == "oversize"  # not bad_encoding
    assert reject("é" * (MAX_EVENT_BYTES // 2 + 1)).reason == "oversize"  # counted in UTF-8 bytes, not chars


def test_long_strings_are_invalid_not_accepted() -> None:
    out = reject(dumps({**body(SAMPLES[3]), "reason": "x" * 201}), ReleaseEvent)
    assert out.reason == "invalid" and "reason" in out.detail
    out = reject(dumps({**body(SAMPLES[5]), "holder": "x" * 3000}), LeaseEvent)
    assert out.reason == "invalid"


@pytest.mark.parametrize(("ttl", "ok"), [(0, False), (0.001, True), (3600, True), (3600.01, False), (-5, False)])
def test_lease_ttl_bounds(ttl: float, ok: bool) -> None:
    out = parse_event(dumps({**body(SAMPLES[5]), "ttl_s": ttl}), LeaseEvent)
    assert isinstance(out, LeaseEvent) is ok


# --- ids --------------------------------------------------------------------------------------


def test_generated_ids_are_label_safe_and_unique() -> None:
    made = {new_id() for _ in range(1000)}
    assert len(made) == 1000
    for i in made:
        assert re.fullmatch(ID_PATTERN, i) and GCE_LABEL_VALUE.fullmatch(i)


@given(st.from_regex(ID_PATTERN, fullmatch=True))
def test_every_accepted_id_is_a_gce_label_value(value: str) -> None:
    assert GCE_LABEL_VALUE.fullmatch(value)


@pytest.mark.parametrize("bad", ["", "A", "a" * 64, "-a", "_a", "a.b", "a b", "é", "a/b", "a\n"])
def test_id_pattern_refuses(bad: str) -> None:
    out = parse_event(dumps({**body(SAMPLES[3]), "lease_id": bad}), ReleaseEvent)
    assert isinstance(out, Rejected) and out.reason == "invalid"


# --- the budget notification (Cloud Billing's schema, not ours) --------------------------------

GOOGLE_BUDGET = {  # the shape Cloud Billing publishes (cloud.google.com/billing/docs/how-to/budgets-programmatic-notifications)
    "budgetDisplayName": "spotleash-monthly",
    "alertThresholdExceeded": 1.0,
    "costAmount": 50.07,
    "costIntervalStart": "2025-03-01T08:00:00Z",
    "budgetAmount": 50.0,
    "budgetAmountType": "SPECIFIED_AMOUNT",
    "currencyCode": "USD",
}


def test_budget_alert_parses_googles_notification() -> None:
    out = parse_event(dumps(GOOGLE_BUDGET), BudgetAlert)
    assert isinstance(out, BudgetAlert)
    assert out.costAmount == 50.07 and out.budgetAmount == 50.0
    assert out.alertThresholdExceeded == 1.0
    assert out.budgetDisplayName == "spotleash-monthly"
    assert out.costIntervalStart == "2025-03-01T08:00:00Z"
    assert out.currencyCode == "USD"


def test_budget_periodic_update_without_threshold() -> None:
    """Cloud Billing also sends periodic spend updates with no alertThresholdExceeded."""
    data = {k: v for k, v in GOOGLE_BUDGET.items() if k != "alertThresholdExceeded"}
    data["forecastThresholdExceeded"] = 0.9  # a field we do not model is ignored, not refused
    out = parse_event(dumps(data), BudgetAlert)
    assert isinstance(out, BudgetAlert) and out.alertThresholdExceeded == 0.0


@pytest.mark.parametrize(
    ("change", "field"),
    [({"costAmount": None}, "costAmount"), ({"costAmount": -1}, "costAmount"), ({"budgetAmount": 0}, "budgetAmount"),
     ({"costAmount": "lots"}, "costAmount"), ({"alertThresholdExceeded": -0.5}, "alertThresholdExceeded")],
)
def test_budget_alert_invalid(change: dict[str, Any], field: str) -> None:
    out = reject(dumps({**GOOGLE_BUDGET, **change}), BudgetAlert)
    assert out.reason == "invalid" and field in out.detail


def test_budget_alert_needs_no_version_or_kind() -> None:
    assert isinstance(parse_event(dumps({"costAmount": 1, "budgetAmount": 2}), BudgetAlert), BudgetAlert)
    assert reject(b"[]", BudgetAlert).reason == "not_an_object"


# --- the parser never raises -------------------------------------------------------------------

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)  # NaN and inf too
flat_values = scalars | st.lists(scalars, max_size=3) | st.dictionaries(st.text(max_size=6), scalars, max_size=3)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
models = st.sampled_from(ALL_MODELS)


def check(out: Any, model: type[Any]) -> None:
    if isinstance(out, Rejected):
        assert out.reason in REASONS and isinstance(out.detail, str)
    else:
        assert isinstance(out, model)
        if isinstance(out, Event):  # anything accepted must survive its own round trip
            assert parse_event(out.to_bytes(), model) == out


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=600), models)
def test_arbitrary_bytes_never_raise(raw: bytes, model: type[Any]) -> None:
    check(parse_event(raw, model), model)


@settings(max_examples=2000, deadline=None)
@given(st.text(max_size=300), models)
def test_arbitrary_text_never_raises(raw: str, model: type[Any]) -> None:
    check(parse_event(raw, model), model)


@settings(max_examples=1000, deadline=None)
@given(json_values, models)
def test_arbitrary_json_never_raises(value: Any, model: type[Any]) -> None:
    check(parse_event(dumps(value), model), model)


def _mutate(data: dict[str, Any], ops: list[tuple[int, str, Any]]) -> dict[str, Any]:
    out = dict(data)
    keys = sorted(out)
    for op, extra_key, value in ops:
        key = keys[op % len(keys)]
        match op % 4:
            case 0:
                out.pop(key, None)
            case 1:
                out[key] = value
            case 2:
                out[extra_key] = value
            case _:
                if isinstance(out.get("components"), list) and out["components"]:
                    first = dict(out["components"][0]) if isinstance(out["components"][0], dict) else {}
                    first[extra_key if op % 8 == 3 else "ram_gb"] = value
                    out["components"] = [first, *out["components"][1:]]
                else:
                    out[key] = [value]
    return out


mutations = st.lists(st.tuples(st.integers(0, 1000), st.text(max_size=8), flat_values), min_size=1, max_size=3)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SAMPLES), mutations, st.booleans())
def test_mutated_valid_events_never_raise(event: Event, ops: list[tuple[int, str, Any]], as_other: bool) -> None:
    data = _mutate(body(event), ops)
    model = DemandEvent if as_other and not isinstance(event, DemandEvent) else type(event)
    check(parse_event(dumps(data), model), model)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(GOOGLE_BUDGET)), json_values, max_size=3), st.booleans())
def test_mutated_budget_alerts_never_raise(change: dict[str, Any], drop: bool) -> None:
    data = {**GOOGLE_BUDGET, **change}
    if drop:
        data.pop("costAmount")
    check(parse_event(dumps(data), BudgetAlert), BudgetAlert)


NUMERIC_FIELDS = [(SAMPLES[0], "ram_percent"), (SAMPLES[5], "ttl_s"), (SAMPLES[-1], "cpu_percent"),
                  (SAMPLES[-1], "idle_s")]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(NUMERIC_FIELDS), st.floats() | st.integers())
def test_any_number_in_a_numeric_field_is_refused_or_round_trips(target: tuple[Event, str], value: float) -> None:
    event, name = target
    text = json.dumps({**body(event), name: value})  # json.dumps writes NaN / Infinity, json.loads reads them
    check(parse_event(text, type(event)), type(event))


def test_a_pressure_demand_parses_and_an_older_agents_demand_still_does() -> None:
    old = (b'{"schema_version":1,"kind":"demand","event_id":"e1","created_at":"2026-11-01T00:00:00Z",'
           b'"lease_id":"l1","trigger":"threshold","ram_percent":91.0,"components":[{"name":"vision","ram_gb":4}]}')
    ev = parse_event(old, DemandEvent)
    assert isinstance(ev, DemandEvent) and [c.name for c in ev.components] == ["vision"]
    new = parse_event(old.replace(b'"threshold"', b'"pressure"'), DemandEvent)
    assert isinstance(new, DemandEvent) and new.trigger == "pressure"


def test_a_beat_carries_its_gpus_and_a_beat_without_gpus_is_what_it_was_before() -> None:
    plain = Heartbeat(lease_id="lease-1", instance_id="sl-1", idle_s=3.0)
    assert "gpus" not in json.loads(plain.wire_json())  # a control plane of before forbids unknown keys
    assert parse_event(plain.wire_json(), Heartbeat) == plain  # and one of now reads it as no GPUs
    rtx = GpuReport(name="NVIDIA GeForce RTX 4090", memory_total_mib=24564, memory_used_mib=9000,
                    utilization_percent=71.0)
    with_gpu = plain.model_copy(update={"gpus": [rtx, GpuReport(name="NVIDIA GeForce RTX 4090")]})
    assert json.loads(with_gpu.wire_json())["gpus"][0] == {"name": "NVIDIA GeForce RTX 4090",
                                                            "memory_total_mib": 24564, "memory_used_mib": 9000,
                                                            "utilization_percent": 71.0}
    assert parse_event(with_gpu.wire_json(), Heartbeat) == with_gpu
    for bad in ({"name": ""}, {"name": "g", "utilization_percent": 101}, {"name": "g", "memory_used_mib": -1},
                {"name": "g", "cores": 5}):
        raw = json.loads(plain.wire_json()) | {"gpus": [bad]}
        out = parse_event(json.dumps(raw), Heartbeat)
        assert isinstance(out, Rejected) and out.reason == "invalid" and "gpus.0" in out.detail
    too_many = json.loads(plain.wire_json()) | {"gpus": [{"name": "g"}] * 17}
    assert isinstance(parse_event(json.dumps(too_many), Heartbeat), Rejected)
