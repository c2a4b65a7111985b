"""An outbid VAST box is seen by the agent's router and replaced without a scheduled reap (issue 14).

A VAST box that is outbid sends nothing. The reaper's scheduled pass would see it stopped at the provider,
but in production that pass comes once a minute. Here the scheduler's reaper job is paused for the test, and
every tick it published before is handled, so only the agent can explain a replacement: its router's probe of
the box's TLS front fails, the agent publishes a reap tick naming the box (reason ``probe_failed``), on_reap
asks the VAST fake, finds the box stopped and publishes the failover demand in that pass. Everything is real:
the agent (``python -m spotleash.agent`` with its router), the VAST fake box running the example app, the
functions.
The test prints the time from the outbid to each step (no timing assertion: a noisy machine).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from tests.e2e.flows import Flows, running
from tests.e2e.packaged import packages_on
from tests.e2e.state_app import set_launcher_env, vast_control, wait_ready

from local_emulator import stack
from local_emulator.routed_app import RoutedApp
from local_emulator.scheduler import reaper_paused
from spotleash.model import InstanceRecord
from spotleash.polling import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def flows(local_stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flows]:
    with packages_on(local_stack.state_dir, tmp_path_factory.mktemp("publish-state")):
        set_launcher_env(local_stack.state_dir, {"SPOTLEASH_VAST_INTERRUPTIBLE": "true"})  # bids: a box can be outbid
        try:
            yield Flows()
        finally:
            set_launcher_env(local_stack.state_dir, {"SPOTLEASH_VAST_INTERRUPTIBLE": None})


@pytest.fixture
def app(flows: Flows, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RoutedApp]:
    with running(RoutedApp(lease_id=f"detect-{uuid.uuid4().hex[:8]}", work=tmp_path_factory.mktemp("routed-app"),
                           gpu=True), flows) as app:
        yield app


def _at(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def test_an_outbid_box_is_replaced_on_the_router_s_word_with_no_scheduled_reap(
        app: RoutedApp, flows: Flows, local_stack: Any) -> None:
    first = wait_ready(flows, app.lease_id)
    assert first.provider == "vast" and first.provider_id
    app.wait_served_by(first.instance_id, timeout_s=60)

    # and the ticks published before the pause all handled: one refused while the fixture restarted on_reap comes
    # back with the emulator's backoff, and once failed the box over before the router's check
    with reaper_paused(local_stack.scheduler_host, flows.project, flows.settings.region,
                       handled=lambda: stack.handled_message_ids(local_stack.state_dir, "on_reap")):
        outbid_at, t0 = datetime.now(UTC), time.monotonic()
        vast_control(f"outbid/{first.provider_id}")

        def replaced() -> InstanceRecord | None:
            r = flows.store.get(first.instance_id)
            return r if r is not None and r.replaced_by else None

        old = wait_until(replaced, timeout_s=60, interval_s=0.1, what="the outbid box's replacement requested")
        seen_s = time.monotonic() - t0
        def audited() -> list[dict[str, Any]] | None:  # the failover's entry follows the record's replaced_by
            entries = flows.audit(first.instance_id)
            return entries if any(e["action"] == "failover" for e in entries) else None

        audit = wait_until(audited, timeout_s=10, interval_s=0.1, what="the failover audited")
        [check] = [e for e in audit if e["action"] == "reap_check"]
        assert (check["reason"], check["decided"], check["lease_id"]) == (
            "probe_failed", "stopped_at_provider", app.lease_id)
        # one reap only, the agent's: with the scheduler paused, nothing else decided about this box
        assert [e["reason"] for e in audit if e["action"] == "reap_decision"] == ["stopped_at_provider"]
        [failover] = [e for e in audit if e["action"] == "failover"]
        assert failover["replacement"] == old.replaced_by
        fell = app.logged("remote copy failed a probe without notice")
        asked = app.logged("asked the control plane to check a lost instance")
        assert fell is not None and asked is not None and asked["instance_id"] == first.instance_id
        # the traffic leaves the box at its fall (two failed probes), which may come after the check
        wait_until(lambda: app.served_by("thumbnailer") == "local", timeout_s=15, interval_s=0.1,
                   what="the router routing locally")

        second = wait_ready(flows, app.lease_id, replaces=first.instance_id)
        ready_s = time.monotonic() - t0
        app.wait_served_by(second.instance_id, timeout_s=60)

    def since(at: Any) -> str:
        return f"{(_at(at) - outbid_at).total_seconds():.2f}s"

    print(f"outbid → router's probe failed {since(fell['time'])}, check published {since(asked['time'])}, "
          f"reap decided {since(check['at'])}, failover demand {since(failover['at'])} "
          f"(replacement requested, seen by the test: {seen_s:.2f}s); replacement READY {ready_s:.1f}s")
    gone = flows.wait_gone(first, timeout_s=60)
    assert (gone.reason, gone.replaced_by) == ("stopped_at_provider", second.instance_id)
