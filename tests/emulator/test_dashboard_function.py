"""on_dashboard under functions-framework on the local stack, reading Google's Firestore emulator."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import httpx
import pytest

from spotleash.adapters.firestore import FirestoreStore
from spotleash.clock import utcnow
from spotleash.config import load_settings
from spotleash.model import InstanceRecord, State

pytestmark = pytest.mark.emulator


def test_the_function_serves_the_page_and_the_state_from_firestore(local_stack: Any) -> None:
    url = local_stack.url_of("on_dashboard")
    store = FirestoreStore.from_settings(load_settings())
    now = utcnow()
    iid = f"sl-dash-{now.strftime('%H%M%S%f')}"
    store.put(InstanceRecord.model_validate({
        "instance_id": iid, "lease_id": "lease-dash", "deployment_id": store.deployment_id, "event_id": f"e-{iid}",
        "provider": "gce", "state": State.READY, "created_at": now - timedelta(minutes=31),
        "updated_at": now, "deadline": now + timedelta(hours=1), "running_at": now - timedelta(minutes=30),
        "price_per_hour": 0.08, "zone": "us-central1-a", "machine": "e2-highmem-4", "last_heartbeat": now}))

    page = httpx.get(url, timeout=30)
    assert page.status_code == 200 and "<main" in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert httpx.get(url + "assets/app.js", timeout=30).status_code == 200
    state = httpx.get(url + "api/state", timeout=60)
    assert state.status_code == 200, state.text
    view = json.loads(state.text)
    row = next(i for i in view["instances"] if i["instance_id"] == iid)
    assert row["state"] == "READY" and row["lease"]["known"] is False
    assert view["spend"]["month"] >= 0.08 * 0.5 - 1e-6
    assert httpx.post(url + "api/state", timeout=30).status_code == 405
