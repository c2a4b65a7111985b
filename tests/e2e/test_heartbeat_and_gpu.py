"""on_heartbeat over real HTTP, and a GPU demand through the control plane to the VAST fake."""

from __future__ import annotations

import os
import uuid

import httpx
import pytest
from tests.e2e.flows import Flows

from spotleash.model import State
from spotleash.polling import wait_until
from spotleash.wire.events import Heartbeat

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def flows(local_stack: object) -> Flows:
    return Flows()


def _beat(instance_id: str, lease_id: str, token: str) -> httpx.Response:
    body = Heartbeat(instance_id=instance_id, lease_id=lease_id).model_dump_json()
    return httpx.post(os.environ["SPOTLEASH_HEARTBEAT_URL"], content=body, timeout=10,
                      headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})


def test_heartbeat_answers_401_404_and_stop(flows: Flows) -> None:
    from spotleash.services.context import Context

    lid = f"hb-{uuid.uuid4().hex[:8]}"
    with flows.lease_kept(lid):
        flows.demand(lid)
        rec = flows.wait_ready(lid)
        token = Context(settings=flows.settings, store=flows.store).heartbeat_token(rec.instance_id)
        assert _beat(rec.instance_id, lid, token).json()["action"] == "continue"
        assert _beat(rec.instance_id, lid, "0" * len(token)).status_code == 401
        assert _beat("sl-does-not-exist", lid, token).status_code == 404
        bad = httpx.post(os.environ["SPOTLEASH_HEARTBEAT_URL"], content=b"{not json", timeout=10,
                         headers={"Authorization": f"Bearer {token}"})
        assert bad.status_code == 400 and bad.json()["error"] == "bad_json"
        flows.release(lid)
        flows.wait_gone(rec, timeout_s=30)
        reply = _beat(rec.instance_id, lid, token)
        assert reply.status_code == 200 and reply.json()["action"] == "stop"


def test_a_gpu_demand_rents_a_vast_box_that_heartbeats_and_is_destroyed_on_release(flows: Flows) -> None:
    lid = f"gpu-{uuid.uuid4().hex[:8]}"
    with flows.lease_kept(lid):
        flows.demand(lid, gpu=True)
        rec = flows.wait_ready(lid, timeout_s=90)  # the box's own instance agent has heartbeated
        assert rec.provider == "vast" and rec.price_per_hour > 0
        vast = httpx.get(f"{os.environ['SPOTLEASH_VAST_URL']}/_control/inspect", timeout=10).json()
        mine = [i for i in vast["instances"] if str(i.get("id")) == rec.provider_id]
        assert mine, "the VAST fake holds the instance"
        pinned = wait_until(lambda: (flows.store.get(rec.instance_id) or rec).host_key, timeout_s=30,
                            what="the pinned host key")
        assert pinned.split()[0].startswith(("ssh-", "ecdsa-")), "host key pinned at first contact"
        flows.release(lid)
        done = flows.wait_gone(rec, timeout_s=60)
    assert done.state == State.TERMINATED
