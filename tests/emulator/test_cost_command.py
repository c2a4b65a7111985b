"""``spotleash cost`` as a user runs it (a subprocess) against records seeded into Google's Firestore emulator,
with a GCE record launched without a price priced by the Billing Catalog fake through the official client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import TEST_PROJECT
from tests.emulator.emulator_fixtures import firestore_emulator

from local_emulator.billing import BillingServer
from spotleash.adapters.firestore import FirestoreStore
from spotleash.model import InstanceRecord, State

pytestmark = [pytest.mark.emulator]


@pytest.fixture(scope="module")
def firestore_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with firestore_emulator(tmp_path_factory.mktemp("firestore-emulator")) as host:
        yield host


def rec(iid: str, dep: str, state: State, *, running: datetime, ended: datetime | None, price: float,
        **more: Any) -> InstanceRecord:
    provider = more.pop("provider", "gce")
    return InstanceRecord.model_validate({
        "instance_id": iid, "lease_id": more.pop("lease_id", "lease-a"), "deployment_id": dep, "event_id": f"e-{iid}",
        "provider": provider, "state": state, "created_at": running - timedelta(minutes=1),
        "updated_at": ended or running, "deadline": running + timedelta(hours=6), "running_at": running,
        "ended_at": ended, "price_per_hour": price, "provider_id": f"p-{iid}",
        "zone": more.pop("zone", "us-central1-a" if provider == "gce" else "Quebec, CA"),
        "machine": "e2-highmem-4" if provider == "gce" else "RTX 4090", **more})


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "spotleash.cli", *args], capture_output=True, text=True,
                          env={**env, "COLUMNS": "200"}, timeout=120)


def test_cost_json_and_table_from_firestore(firestore_host: str, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from google.cloud import firestore

    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_host)
    dep = f"cost-{uuid.uuid4().hex[:8]}"
    store = FirestoreStore(firestore.Client(project=TEST_PROJECT), dep)
    now = datetime.now(UTC)
    # A GCE VM that ran 3 h -> 1 h ago at 0.06: 0.12. A VAST box that ran 4 h -> 1 h ago, stopped for its last
    # hour, dph 0.30 incl. storage 0.02: gpu 2 h x 0.28 + storage 3 h x 0.02 = 0.62. A VM launched without a price
    # in europe-west1, ran 2 h -> 1 h ago: priced by the catalog fake at e2-highmem-4 in Belgium =
    # 4 x 0.007190757 + 32 x 0.000963823 = 0.059605364 $/h -> 0.059605364.
    store.put(rec("sl-a", dep, State.TERMINATED, running=now - timedelta(hours=3), ended=now - timedelta(hours=1),
                  price=0.06, reason="release: agent exit"))
    store.put(rec("sl-v", dep, State.TERMINATED, provider="vast", running=now - timedelta(hours=4),
                  ended=now - timedelta(hours=1), price=0.30, storage_per_hour=0.02,
                  stopped_at=now - timedelta(hours=2), reason="stopped_at_provider", lease_id="lease-b"))
    store.put(rec("sl-eu", dep, State.TERMINATED, running=now - timedelta(hours=2), ended=now - timedelta(hours=1),
                  price=0.0, zone="europe-west1-b", reason="heartbeat_lost"))
    store.put(rec("sl-other", "someone-else", State.TERMINATED, running=now - timedelta(hours=2),
                  ended=now - timedelta(hours=1), price=9.0))
    since = (now - timedelta(days=2)).date().isoformat()
    with BillingServer() as billing:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPOTLEASH_")}
        env.update({"FIRESTORE_EMULATOR_HOST": firestore_host, "GOOGLE_CLOUD_PROJECT": TEST_PROJECT,
                    "SPOTLEASH_PROJECT": TEST_PROJECT, "SPOTLEASH_DEPLOYMENT_ID": dep,
                    "SPOTLEASH_STATE_DIR": str(tmp_path), "SPOTLEASH_BILLING_ENDPOINT": billing.address})
        out = cli("cost", "--since", since, "--json", env=env)
        assert out.returncode == 0, out.stderr
        data = json.loads(out.stdout)  # stdout is JSON and nothing else
        table = cli("cost", "--since", since, env=env)
    assert data["since"].startswith(since)
    rows = {r["instance_id"]: r for r in data["instances"]}
    assert set(rows) == {"sl-a", "sl-v", "sl-eu"}
    assert rows["sl-a"]["cost"] == pytest.approx(0.12, abs=1e-6)
    assert rows["sl-v"]["cost"] == pytest.approx(0.62, abs=1e-6)
    assert rows["sl-eu"]["cost"] == pytest.approx(0.059605, abs=1e-6)
    assert rows["sl-eu"]["rate_source"].startswith("catalog ")
    assert data["total"] == pytest.approx(0.12 + 0.62 + 0.059605, abs=1e-5)
    assert sum(data["by_day"].values()) == pytest.approx(data["total"], abs=1e-5)
    assert data["by_reason"] == pytest.approx({"release": 0.12, "stopped_at_provider": 0.62, "heartbeat_lost": 0.059605},
                                              abs=1e-5)
    assert table.returncode == 0, table.stderr
    assert "sl-eu *" in table.stdout and "priced from catalog" in table.stdout and "sl-other" not in table.stdout
    cached = store.cached_price("e2-highmem-4", "europe-west1")  # the price is cached in Firestore with its date
    assert cached is not None and cached.usd_per_hour == pytest.approx(0.059605, abs=1e-6)
    assert rows["sl-eu"]["rate_source"] == cached.label
    assert not (tmp_path / "prices.json").exists()  # no per-machine file any more


def test_a_bad_since_exits_2_with_one_sentence(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPOTLEASH_")}
    out = cli("cost", "--since", "last tuesday", env={**env, "SPOTLEASH_STATE_DIR": str(tmp_path)})
    assert out.returncode == 2 and "not a date" in out.stderr and "Traceback" not in out.stderr
