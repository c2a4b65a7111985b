"""``spotleash status --all`` shows every record of the deployment: the store pages through them with a
cursor instead of stopping silently at one page (it stopped at 500 rows)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from google.cloud import firestore

from spotleash.adapters.firestore import FirestoreStore
from spotleash.model import State, new_record, transition

pytestmark = [pytest.mark.e2e]


def seed(store: FirestoreStore, deployment_id: str, n: int) -> set[str]:
    now = datetime.now(UTC)

    def put(i: int) -> str:
        rec = new_record(instance_id=f"i-{deployment_id}-{i:04d}", lease_id="paging", deployment_id=deployment_id,
                         event_id=f"e-{i}", provider="gce", now=now - timedelta(seconds=i), max_runtime_s=3600)
        if i % 2:
            rec = transition(rec, State.FAILED, now, reason="seeded")
        store.put(rec)
        return rec.instance_id

    with ThreadPoolExecutor(8) as pool:
        return set(pool.map(put, range(n)))


def test_all_instances_pages_through_every_record(local_stack: object) -> None:
    deployment_id = f"pg-{uuid.uuid4().hex[:8]}"
    store = FirestoreStore(firestore.Client(project=os.environ["SPOTLEASH_PROJECT"]), deployment_id)
    ids = seed(store, deployment_id, 7)
    for page_size in (1, 3, 7, 100):
        got = [r.instance_id for r in store.all_instances(page_size=page_size)]
        assert sorted(got) == sorted(ids), page_size  # each exactly once
    assert len(store.all_instances(2, page_size=1)) == 2 and len(store.all_instances(5, page_size=3)) == 5


def test_status_all_shows_more_than_one_page(local_stack: object) -> None:
    deployment_id = f"pg-{uuid.uuid4().hex[:8]}"
    n = 503
    ids = seed(FirestoreStore(firestore.Client(project=os.environ["SPOTLEASH_PROJECT"]), deployment_id), deployment_id, n)
    env = {**os.environ, "SPOTLEASH_DEPLOYMENT_ID": deployment_id}
    proc = subprocess.run([sys.executable, "-m", "spotleash.cli", "status", "--all", "--json"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["instances"]
    assert len(rows) == n and {r["instance_id"] for r in rows} == ids
