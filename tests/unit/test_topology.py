"""The topology is the one definition of topics, subscriptions, functions and schedules: check it is coherent."""

from __future__ import annotations

import ast
import json
import re
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

from spotleash.topology import load_topology

FUNCTIONS_MAIN = Path(__file__).resolve().parents[2] / "functions" / "main.py"
PUBSUB_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}$")  # Pub/Sub: 3-255 chars, starts with a letter
FUNCTION_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")

topo = load_topology()


def test_raw_file_matches_loaded_topology() -> None:
    raw = json.loads(resources.files("spotleash").joinpath("topology.json").read_text())
    assert tuple(raw["topics"]) == topo.topics
    assert set(raw["functions"]) == set(topo.functions)
    assert set(raw["subscriptions"]) == set(topo.subscriptions)
    assert set(raw["schedules"]) == set(topo.schedules)
    assert len(set(topo.topics)) == len(topo.topics), "duplicate topic"


@pytest.mark.parametrize("name", [*topo.topics, *topo.subscriptions, *topo.schedules])
def test_names_are_valid_pubsub_names(name: str) -> None:
    assert PUBSUB_NAME.match(name), f"{name!r} is not a valid Pub/Sub / Scheduler name (≥3 chars, starts with a letter)"


def test_every_subscription_topic_exists() -> None:
    for s in topo.subscriptions.values():
        assert s.topic in topo.topics, f"subscription {s.name} points at unknown topic {s.topic}"


def test_every_pubsub_function_has_exactly_one_push_subscription_on_its_topic() -> None:
    for fn in topo.functions.values():
        subs = [s for s in topo.subscriptions.values() if s.function == fn.name]
        if fn.trigger == "pubsub":
            assert fn.topic in topo.topics, f"{fn.name} listens to unknown topic {fn.topic}"
            assert len(subs) == 1, f"{fn.name} has {len(subs)} push subscriptions, want exactly 1"
            assert subs[0].topic == fn.topic, f"{fn.name}'s subscription is on {subs[0].topic}, not {fn.topic}"
        else:
            assert fn.trigger == "http", f"{fn.name}: unknown trigger {fn.trigger!r}"
            assert fn.topic is None and not subs, f"HTTP function {fn.name} must not be fed by Pub/Sub"


def test_subscriptions_name_known_functions() -> None:
    for s in topo.subscriptions.values():
        if s.function is not None:
            assert s.function in topo.functions, f"{s.name} pushes to unknown function {s.function}"
            assert topo.functions[s.function].trigger == "pubsub"


def test_dead_letter_topic_exists_and_is_held_by_a_pull_subscription() -> None:
    assert topo.dead_letter_topic in topo.topics
    holds = [s for s in topo.subscriptions.values() if s.topic == topo.dead_letter_topic]
    assert len(holds) == 1, "the dead-letter topic needs exactly one subscription that holds its messages"
    hold = holds[0]
    assert hold.function is None, "dead letters must be held (pull), not pushed into a function"
    assert hold.max_delivery_attempts is None, "the hold subscription must not dead-letter into itself"


def test_push_subscriptions_have_valid_delivery_policies() -> None:
    for s in topo.subscriptions.values():
        assert 10 <= s.ack_deadline_s <= 600, f"{s.name}: ack deadline {s.ack_deadline_s} outside 10..600"
        if s.function is None:
            continue
        fn = topo.functions[s.function]
        assert s.max_delivery_attempts is not None and 5 <= s.max_delivery_attempts <= 100, (
            f"{s.name}: max_delivery_attempts must be 5..100 (Pub/Sub's range)"
        )
        assert s.min_backoff_s is not None and s.max_backoff_s is not None
        assert 0 <= s.min_backoff_s <= s.max_backoff_s <= 600, f"{s.name}: backoff must satisfy 0 ≤ min ≤ max ≤ 600"
        assert s.ack_deadline_s >= min(fn.timeout_s, 600), (
            f"{s.name}: ack deadline {s.ack_deadline_s}s shorter than {fn.name}'s timeout {fn.timeout_s}s "
            "would redeliver messages that are still being handled"
        )


def test_dead_letter_topic_is_not_a_function_trigger() -> None:
    assert all(fn.topic != topo.dead_letter_topic for fn in topo.functions.values())


@pytest.mark.parametrize("name", list(topo.schedules))
def test_schedules_have_valid_cron_time_zone_topic_and_payload(name: str) -> None:
    sch = topo.schedules[name]
    assert croniter.is_valid(sch.cron), f"{name}: invalid cron {sch.cron!r}"
    tz = ZoneInfo(sch.time_zone)
    nxt = croniter(sch.cron, datetime(2026, 1, 1, tzinfo=tz)).get_next(datetime)
    assert nxt > datetime(2026, 1, 1, tzinfo=UTC).astimezone(tz)
    assert sch.topic in topo.topics and sch.topic != topo.dead_letter_topic
    assert any(fn.topic == sch.topic for fn in topo.functions.values()), f"{name} fires into a topic no function reads"
    assert json.dumps(sch.payload), "payload must be JSON"


def test_reaper_schedule_exists() -> None:
    reap = topo.topic_of("reap")
    assert any(s.topic == reap for s in topo.schedules.values()), "nothing fires the reaper"


def test_function_names_are_valid_and_exist_in_functions_main() -> None:
    for name in topo.functions:
        assert FUNCTION_NAME.match(name), f"{name!r} is not a valid function entry-point name"
    if not FUNCTIONS_MAIN.exists():
        pytest.skip("functions/main.py does not exist yet")
    tree = ast.parse(FUNCTIONS_MAIN.read_text(), filename=str(FUNCTIONS_MAIN))
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    defined |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    missing = set(topo.functions) - defined
    assert not missing, f"functions/main.py defines no entry point for {sorted(missing)}"


def test_functions_main_decorators_match_triggers() -> None:
    if not FUNCTIONS_MAIN.exists():
        pytest.skip("functions/main.py does not exist yet")
    tree = ast.parse(FUNCTIONS_MAIN.read_text())
    decorators: dict[str, set[str]] = {}
    for n in tree.body:
        if isinstance(n, ast.FunctionDef):
            decorators[n.name] = {ast.unparse(d) for d in n.decorator_list}
    for fn in topo.functions.values():
        want = "functions_framework.http" if fn.trigger == "http" else "functions_framework.cloud_event"
        assert want in decorators.get(fn.name, set()), f"{fn.name} should be decorated with @{want}"
