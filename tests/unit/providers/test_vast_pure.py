"""Pure parts of the VAST provider, fake catalog and watchdog: no I/O."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from local_emulator.vast.offers import build_catalog, search
from spotleash.errors import CapacityExhausted, NotFound, ProviderPermanent, ProviderTransient
from spotleash.instance_agent import watchdog
from spotleash.providers.base import LABEL_INSTANCE, GpuRequirements, LaunchSpec, ProviderStatus
from spotleash.providers.vast import (
    Offer,
    VastCreateFailed,
    agent_env,
    build_onstart,
    make_label,
    map_status,
    parse_label,
    rank_offers,
    search_query,
    translate,
)
from spotleash.wire.agent_config import AgentConfig


def test_label_round_trip_and_foreign_labels() -> None:
    labels = parse_label(make_label("dep", "lease-1", "inst-9"))
    assert labels[LABEL_INSTANCE] == "inst-9" and labels["spotleash-lease"] == "lease-1"
    for foreign in (None, "", "my box", "spotleash:a:b", "other:a:b:c", "spotleash::b:c"):
        assert parse_label(foreign) == {}
    with pytest.raises(ProviderPermanent):
        make_label("d", "l:x", "i")


@pytest.mark.parametrize(("actual", "cur", "intended", "want"), [
    (None, "running", "running", ProviderStatus.PENDING),
    (None, "stopped", "stopped", ProviderStatus.STOPPED),
    ("loading", "running", "running", ProviderStatus.PENDING),
    ("running", "running", "running", ProviderStatus.RUNNING),
    ("running", "running", "stopped", ProviderStatus.STOPPING),
    ("exited", "stopped", "running", ProviderStatus.STOPPED),
    ("offline", "running", "running", ProviderStatus.UNKNOWN),
    ("something-new", None, None, ProviderStatus.UNKNOWN),
])
def test_map_status(actual: str | None, cur: str, intended: str, want: ProviderStatus) -> None:
    assert map_status(actual, cur, intended) is want


def _offer(i: int, dph: float, rel: float, **kw: object) -> Offer:
    d = {"id": i, "gpu_name": "RTX 4090", "num_gpus": 1, "gpu_ram": 24564, "dph_total": dph, "min_bid": dph / 2,
         "reliability2": rel, "geolocation": "US", "verified": True, **kw}
    return Offer.from_json(d)


def test_rank_weighs_reliability_and_rechecks_requirements() -> None:
    req = GpuRequirements(gpu_names=("RTX 4090",), min_vram_gb=16, max_dph=1.0, min_reliability=0.9)
    cheap_flaky = _offer(1, 0.30, 0.91)  # 0.30 * 1.9 = 0.57
    steady = _offer(2, 0.35, 0.995)  # 0.35 * 1.05 = 0.3675
    too_dear = _offer(3, 1.5, 0.999)
    small = _offer(4, 0.1, 0.999, gpu_ram=8000)
    unverified = _offer(5, 0.1, 0.999, verified=False)
    assert [o.id for o in rank_offers([cheap_flaky, steady, too_dear, small, unverified], req)] == [2, 1]


def test_search_query_matches_the_fake_catalog() -> None:
    req = GpuRequirements(gpu_names=("RTX 4090", "RTX 3090"), min_vram_gb=20, max_dph=0.6, min_reliability=0.95)
    rows = search(build_catalog(), search_query(req, interruptible=False, limit=50))
    assert rows and all(r["gpu_name"] in req.gpu_names and r["dph_total"] <= 0.6 for r in rows)
    assert [r["dph_total"] for r in rows] == sorted(r["dph_total"] for r in rows)
    assert build_catalog()[0].fields == build_catalog()[0].fields  # deterministic


def test_onstart_and_env_carry_deadline_but_no_secret_in_script() -> None:
    deadline = datetime(2030, 1, 1, tzinfo=UTC)
    spec = LaunchSpec(instance_id="i", lease_id="l", deployment_id="d", deadline=deadline, max_run_s=60,
                      heartbeat_url="https://hb", heartbeat_token="tok-secret")
    script = build_onstart(spec)
    assert "spotleash.instance_agent.watchdog --deadline 2030-01-01T00:00:00+00:00" in script
    assert str(int(deadline.timestamp())) in script and "CONTAINER_API_KEY" in script
    assert "--provider vast" in script and "tok-secret" not in script
    env = agent_env(spec)
    cfg = json.loads(env["SPOTLEASH_AGENT_CONFIG"])
    assert datetime.fromisoformat(cfg["deadline"]) == deadline and cfg["heartbeat_url"] == "https://hb"
    assert AgentConfig.parse(env["SPOTLEASH_AGENT_CONFIG"]) == AgentConfig.for_launch(spec)
    assert env["SPOTLEASH_HEARTBEAT_TOKEN"] == "tok-secret"


def _resp(status: int, body: object) -> httpx.Response:
    return httpx.Response(status, json=body)


def test_translate_errors() -> None:
    assert isinstance(translate(_resp(429, {}), "x"), ProviderTransient)
    assert isinstance(translate(_resp(503, {}), "x"), ProviderTransient)
    assert isinstance(translate(_resp(404, {"error": "no_such_instance"}), "x"), NotFound)
    assert isinstance(translate(_resp(404, {"error": "no_such_ask"}), "x"), CapacityExhausted)
    e = translate(_resp(400, {"error": "bid_too_low", "new_contract": 77}), "x")
    assert isinstance(e, VastCreateFailed) and e.new_contract == 77
    auth = translate(_resp(401, {"error": "auth_error"}), "x")
    assert isinstance(auth, ProviderPermanent) and "VAST_API_KEY" in str(auth)


def test_watchdog_waits_then_retries_until_destroyed(monkeypatch: pytest.MonkeyPatch) -> None:
    t = [datetime(2030, 1, 1, tzinfo=UTC)]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        t[0] += timedelta(seconds=s)

    answers = iter([(False, "HTTP 503"), (False, "URLError"), (True, "no_such_instance")])
    calls: list[tuple[str, str, str]] = []

    def destroy(url: str, cid: str, key: str, **_: object) -> tuple[bool, str]:
        calls.append((url, cid, key))
        return next(answers)

    monkeypatch.setattr(watchdog, "destroy_once", destroy)
    deadline = t[0] + timedelta(seconds=12)
    assert watchdog.run(deadline, url="http://v", container_id="5", key="k", check_every_s=5,
                        now=lambda: t[0], sleep=sleep)
    assert t[0] >= deadline and slept[:3] == [5, 5, 2] and slept[3:] == [1.0, 2.0]
    assert calls == [("http://v", "5", "k")] * 3


def test_watchdog_deadline_sources() -> None:
    assert watchdog.deadline_from("2030-01-01T00:00:00Z", {}) == datetime(2030, 1, 1, tzinfo=UTC)
    env = {"SPOTLEASH_AGENT_CONFIG": json.dumps({"deadline": "2030-01-01T01:00:00+01:00"})}
    assert watchdog.deadline_from(None, env) == datetime(2030, 1, 1, tzinfo=UTC)
    assert watchdog.deadline_from(None, {}) is None
    with pytest.raises(ValueError):
        watchdog.parse_deadline("2030-01-01T00:00:00")  # no zone
