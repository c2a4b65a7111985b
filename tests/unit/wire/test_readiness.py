"""READY only when every launched component is healthy; failures and deadlines fail the instance."""

from __future__ import annotations

from spotleash.model import Readiness, readiness
from spotleash.wire.events import ComponentReport, Heartbeat, InstanceFailure, Rejected, parse_event

OK = ComponentReport(state="healthy", endpoint="127.0.0.1:8101")
STARTING = ComponentReport(state="starting")
FAILING = ComponentReport(state="failing", error="exited with code 1")


def test_no_package_is_ready_at_first_beat() -> None:
    assert readiness(["vision"], False, {}, None) == Readiness(True)


def test_package_waits_for_every_launched_component() -> None:
    assert readiness(["a", "b"], True, {}, None) == Readiness(False)
    assert readiness(["a", "b"], True, {"a": OK, "b": STARTING}, None) == Readiness(False)
    assert readiness(["a", "b"], True, {"a": OK}, None) == Readiness(False)  # b not reported: not ready
    assert readiness(["a", "b"], True, {"a": OK, "b": FAILING}, None) == Readiness(False)  # restarting
    assert readiness(["a", "b"], True, {"a": OK, "b": OK}, None) == Readiness(True)


def test_extra_components_do_not_hold_readiness_back() -> None:
    assert readiness(["a"], True, {"a": OK, "b": STARTING}, None) == Readiness(True)


def test_reports_without_a_recorded_package_still_gate() -> None:
    assert readiness(["a"], False, {"a": STARTING}, None) == Readiness(False)
    assert readiness([], False, {"a": OK}, None) == Readiness(True)


def test_package_failure_fails_the_instance() -> None:
    f = InstanceFailure(reason="package_unverified", detail="sha256 mismatch")
    assert readiness(["a"], True, {"a": STARTING}, f) == Readiness(False, ("package_unverified", "sha256 mismatch"))


def test_a_component_past_its_deadline_fails_the_instance() -> None:
    gone = ComponentReport(state="failing", error="not healthy within 5 s: refused", gave_up=True)
    got = readiness(["a", "b"], True, {"a": OK, "b": gone}, None)
    assert got == Readiness(False, ("component_unhealthy", "b: not healthy within 5 s: refused"))


def test_heartbeat_round_trips_components_and_rejects_bad_ones() -> None:
    beat = Heartbeat(lease_id="l-1", instance_id="sl-1", components={"web": OK},
                     failure=InstanceFailure(reason="package_missing", detail="404"))
    back = parse_event(beat.to_bytes(), Heartbeat)
    assert back == beat
    bad_endpoint = beat.to_bytes().replace(b"127.0.0.1:8101", b"http://x/")
    assert isinstance(parse_event(bad_endpoint, Heartbeat), Rejected)
    bad_state = beat.to_bytes().replace(b'"healthy"', b'"dead"')
    assert isinstance(parse_event(bad_state, Heartbeat), Rejected)
    bad_reason = beat.to_bytes().replace(b"package_missing", b"Package Missing!")
    assert isinstance(parse_event(bad_reason, Heartbeat), Rejected)
    old = b'{"schema_version":1,"kind":"heartbeat","lease_id":"l","instance_id":"i"}'
    parsed = parse_event(old, Heartbeat)  # an agent of before this change still parses
    assert isinstance(parsed, Heartbeat) and parsed.components == {} and parsed.failure is None
