"""The shutdown that always cleans up, on a real agent process and Google's Pub/Sub emulator.

A real ``python -m spotleash.agent`` replays the demo RAM trace against the emulator; it is
signalled (SIGTERM, SIGINT, SIGHUP) and the release must arrive on a pull subscription of
spotleash-release while the process exits within its shutdown budget. A second signal exits at
once; with Pub/Sub unreachable the agent still exits within budget and says lease expiry will
clean up. (That the control plane then deletes the instances is shown by the control-plane tests.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from local_emulator.json_log import first_logged, log_lines
from spotleash.polling import wait_until
from spotleash.wire.events import DemandEvent, LeaseEvent, ReleaseEvent, parse_event

pytestmark = [pytest.mark.e2e]

TRACE = Path(__file__).resolve().parents[2] / "shared" / "spotleash" / "agent" / "traces" / "climb.csv"
BUDGET_S = 5.0
EXIT_SLACK_S = 4.0  # handler start-up + teardown on a shared, loaded 2-core machine; the bound, not a speed test


# ------------------------------------------------------------------ helpers
class AgentProc:
    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path

    def lines(self) -> list[dict[str, Any]]:
        return log_lines(self.log_path)

    def logged(self, fragment: str) -> dict[str, Any] | None:
        return first_logged(self.log_path, fragment)

    def signal_and_time_exit(self, sig: int, timeout_s: float) -> tuple[int, float]:
        t0 = time.monotonic()
        os.kill(self.proc.pid, sig)
        rc = self.proc.wait(timeout=timeout_s)
        return rc, time.monotonic() - t0


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(lease_id: str, *, emulator_host: str, project: str, speed: float = 10.0,
              budget_s: float = BUDGET_S) -> AgentProc:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPOTLEASH_")}
        env.update({
            "PUBSUB_EMULATOR_HOST": emulator_host,
            "GOOGLE_CLOUD_PROJECT": project,
            "SPOTLEASH_PROJECT": project,
            "SPOTLEASH_STATE_DIR": str(tmp_path / "state"),
            "SPOTLEASH_SAMPLE_INTERVAL_S": "0.25",
            "SPOTLEASH_LEASE_RENEW_S": "2",
            "SPOTLEASH_LEASE_TTL_S": "6",
            "SPOTLEASH_SHUTDOWN_BUDGET_S": str(budget_s),
            "PYTHONUNBUFFERED": "1",
        })
        log_path = tmp_path / f"agent-{lease_id}-{len(procs)}.log"
        with log_path.open("wb") as log:
            p = subprocess.Popen(
                [sys.executable, "-m", "spotleash.agent", "--lease-id", lease_id, "--trace", str(TRACE),
                 "--trace-speed", str(speed)],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        procs.append(p)
        return AgentProc(p, log_path)

    try:
        yield start
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)


def _unreachable_host() -> str:
    from local_emulator.procs import free_port

    return f"127.0.0.1:{free_port()}"  # nothing listens there


@pytest.fixture
def subscriptions(pubsub_emulator: Any) -> Iterator[dict[str, str]]:
    """Fresh pull subscriptions on the demand, lease and release topics (topics created if missing)."""
    from google.api_core import exceptions as gexc
    from google.cloud import pubsub_v1

    from spotleash.topology import load_topology

    project = pubsub_emulator.project
    pub = pubsub_v1.PublisherClient()
    sub = pubsub_v1.SubscriberClient()
    names: dict[str, str] = {}
    try:
        for kind in ("demand", "lease", "release"):
            topic = pub.topic_path(project, load_topology().topic_of(kind))
            try:
                pub.create_topic(name=topic)
            except gexc.AlreadyExists:
                pass
            path = sub.subscription_path(project, f"test-agent-{kind}-{uuid.uuid4().hex[:8]}")
            sub.create_subscription(name=path, topic=topic, ack_deadline_seconds=10)
            names[kind] = path
        yield names
    finally:
        for path in names.values():
            sub.delete_subscription(subscription=path)
        sub.close()


def _pull(path: str, model: type[Any], lease_id: str, *, timeout_s: float) -> Any:
    """Poll a pull subscription until an event of ``lease_id`` arrives; ack everything seen."""
    from google.cloud import pubsub_v1

    sub = pubsub_v1.SubscriberClient()
    try:
        def one() -> Any:
            resp = sub.pull(subscription=path, max_messages=20, timeout=2, return_immediately=True)
            found = None
            if resp.received_messages:
                sub.acknowledge(subscription=path, ack_ids=[m.ack_id for m in resp.received_messages])
            for m in resp.received_messages:
                ev = parse_event(m.message.data, model)
                if isinstance(ev, model) and ev.lease_id == lease_id and found is None:
                    assert m.message.attributes["lease_id"] == lease_id
                    found = ev
            return found

        return wait_until(one, timeout_s=timeout_s, interval_s=0.2, what=f"a {model.__name__} of {lease_id}")
    finally:
        sub.close()


# ------------------------------------------------------------------ tests
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_signal_publishes_release_and_exits_within_budget(sig: signal.Signals, start_agent: Any,
                                                          subscriptions: dict[str, str], pubsub_emulator: Any) -> None:
    lease_id = f"e2e-{sig.name.lower()}-{uuid.uuid4().hex[:6]}"
    agent = start_agent(lease_id, emulator_host=pubsub_emulator.host, project=pubsub_emulator.project)

    lease = _pull(subscriptions["lease"], LeaseEvent, lease_id, timeout_s=20)
    assert lease.ttl_s == 6.0
    demand = _pull(subscriptions["demand"], DemandEvent, lease_id, timeout_s=30)  # the trace climbs past 85 %
    # the demand names exactly what placement chose, heaviest first: ml_models (8 GB) before the 4 GB ones
    placed = agent.logged("demand: moving components")
    assert placed is not None and [c.name for c in demand.components] == placed["components"]
    assert placed["components"][0] == "ml_models" and placed["event_id"] == demand.event_id
    assert demand.trigger in ("threshold", "predictive")
    assert agent.proc.poll() is None

    rc, elapsed = agent.signal_and_time_exit(sig, timeout_s=BUDGET_S + 10)
    assert rc == 0, agent.log_path.read_text()
    assert elapsed <= BUDGET_S + EXIT_SLACK_S

    release = _pull(subscriptions["release"], ReleaseEvent, lease_id, timeout_s=10)
    assert release.reason == f"agent shutdown: {sig.name}"
    assert release.instance_id is None  # every instance of the lease
    confirmed = agent.logged("release confirmed")
    assert confirmed is not None and confirmed["event_id"] == release.event_id
    assert agent.logged("signal received")["signal"] == sig.name  # type: ignore[index]


def test_unreachable_pubsub_still_exits_within_budget_and_says_lease_expiry_cleans_up(start_agent: Any) -> None:
    budget = 3.0
    agent = start_agent("e2e-unreachable", emulator_host=_unreachable_host(), project="spotleash-test",
                        budget_s=budget)
    wait_until(lambda: agent.logged("agent started"), timeout_s=20, what="the agent to start")
    rc, elapsed = agent.signal_and_time_exit(signal.SIGTERM, timeout_s=budget + 10)
    assert rc == 1
    assert elapsed <= budget + EXIT_SLACK_S
    line = agent.logged("release NOT confirmed")
    assert line is not None and line["severity"] == "ERROR"
    assert "lease expiry will still delete" in line["message"] and line["lease_ttl_s"] == 6.0


def test_second_signal_exits_at_once(start_agent: Any) -> None:
    agent = start_agent("e2e-twice", emulator_host=_unreachable_host(), project="spotleash-test", budget_s=30)
    wait_until(lambda: agent.logged("agent started"), timeout_s=20, what="the agent to start")
    os.kill(agent.proc.pid, signal.SIGTERM)
    wait_until(lambda: agent.logged("shutdown: publishing release"), timeout_s=20, what="the release to start")
    rc, elapsed = agent.signal_and_time_exit(signal.SIGINT, timeout_s=5)
    assert rc == 128 + signal.SIGINT
    assert elapsed < 5.0  # far inside the 30 s budget: it did not wait for the release
    assert agent.logged("second signal")["exit_code"] == 130  # type: ignore[index]


def test_one_agent_per_lease(start_agent: Any) -> None:
    host = _unreachable_host()
    first = start_agent("e2e-lock", emulator_host=host, project="spotleash-test", budget_s=1)
    wait_until(lambda: first.logged("lease lock taken"), timeout_s=20, what="the first agent's lock")
    second = start_agent("e2e-lock", emulator_host=host, project="spotleash-test", budget_s=1)
    assert second.proc.wait(timeout=20) == 2
    assert second.logged("already holds lease 'e2e-lock'") is not None
    assert first.proc.poll() is None
    first.signal_and_time_exit(signal.SIGKILL, timeout_s=10)  # dies without cleaning its lock file
    third = start_agent("e2e-lock", emulator_host=host, project="spotleash-test", budget_s=1)
    wait_until(lambda: third.logged("lease lock taken"), timeout_s=20, what="the third agent's lock")
    stale = third.logged("recovered a stale lease lock")
    assert stale is not None and stale["stale_pid"] == first.proc.pid and "gone" in stale["reason"]
