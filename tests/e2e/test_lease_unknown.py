"""A demand for a lease that was never created, through the whole local stack: Pub/Sub redelivers it
(each wait one WARNING line in on_demand's log, no traceback) until its last allowed delivery, which
records it in ``rejected`` as ``lease_unknown`` and dead-letters it with that reason."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
from google.cloud import pubsub_v1
from tests.e2e.flows import Flows

from local_emulator.stack import logs_dir
from spotleash.polling import wait_until
from spotleash.services.entry import max_delivery_attempts
from spotleash.topology import load_topology

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def flows(local_stack: object) -> Flows:
    return Flows()


def test_a_demand_for_a_never_created_lease_is_rejected_as_lease_unknown_at_its_last_delivery(flows: Flows) -> None:
    limit = max_delivery_attempts("demand")
    assert limit is not None
    log = logs_dir(Path(os.environ["SPOTLEASH_STATE_DIR"])) / "on_demand.log"
    start = log.stat().st_size if log.exists() else 0
    lease_id = f"never-{uuid.uuid4().hex[:10]}"
    event = flows.demand(lease_id)  # no lease event was ever sent for it

    # backoff 2 s, 4 s, 8 s, 16 s between the deliveries (topology.json), plus a loaded machine
    found = wait_until(lambda: [r for r in flows.store.rejected() if event.event_id.encode() in bytes(r["raw"])],
                       timeout_s=120, what="the lease_unknown rejection")
    assert len(found) == 1
    assert found[0]["reason"] == "lease_unknown" and found[0]["source"] == "demand"
    assert lease_id in found[0]["detail"] and f"of {limit}" in found[0]["detail"]

    sub = pubsub_v1.SubscriberClient()
    path = sub.subscription_path(flows.project, "spotleash-dead-letter-hold")
    assert "spotleash-dead-letter-hold" in load_topology().subscriptions
    seen: list[dict[str, str]] = []

    def dead_lettered() -> bool:
        resp = sub.pull(request={"subscription": path, "max_messages": 50}, timeout=5)
        if resp.received_messages:
            sub.acknowledge(request={"subscription": path, "ack_ids": [m.ack_id for m in resp.received_messages]})
        seen.extend(dict(m.message.attributes) for m in resp.received_messages
                    if event.event_id.encode() in m.message.data)
        return bool(seen)

    wait_until(dead_lettered, timeout_s=30, what="the dead-lettered copy")
    assert seen[0].get("reason") == "lease_unknown"

    with log.open("rb") as f:  # what on_demand logged during this test
        f.seek(start)
        written = f.read().decode(errors="replace")
    lines = [ln for ln in written.splitlines() if lease_id in ln]
    waits = [json.loads(ln) for ln in lines if "waits for its lease" in ln]
    assert len(waits) == limit - 1, lines
    assert {w["severity"] for w in waits} == {"WARNING"} and not any("exception" in w for w in waits)
    assert "Traceback" not in written
