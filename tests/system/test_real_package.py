"""publish → launch → READY → release against a real, deployed project — only when asked.

    SPOTLEASH_SYSTEM_TESTS=1 SPOTLEASH_PROJECT=my-project SPOTLEASH_PACKAGE_BUCKET=my-project-spotleash-packages \\
        SPOTLEASH_DEPLOYMENT_ID=default scripts/uv run --frozen pytest -q -p no:cacheprovider tests/system/test_real_package.py

What it needs: the Terraform deployment applied (docs/deploy.md: topics, functions, Firestore, the package
bucket, the VM service account) and Application Default Credentials (``gcloud auth application-default
login``) allowed to publish to the topics, read Firestore and write the bucket. Optional:
``SPOTLEASH_REGION`` / ``SPOTLEASH_ZONES`` / ``SPOTLEASH_PACKAGE_CHANNEL`` as deployed.

What it does, as a user would: ``spotleash publish`` of examples/thumbs (the CLI, a subprocess), a lease
kept renewed and a demand for both components on the deployment's Pub/Sub topics, then it watches
Firestore until the record is READY with both components healthy and endpoints — the VM fetched the
pinned archive with its own service account, verified it, installed it offline and started both — then
a release, and the VM confirmed gone through the Compute API. A VM left by a failed run is deleted at the
end by its labels (and GCE's ``max_run_duration`` ends it anyway). Costs one e2-highmem-4 Spot VM for a
few minutes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(os.environ.get("SPOTLEASH_SYSTEM_TESTS") != "1",
                       reason="real GCP: set SPOTLEASH_SYSTEM_TESTS=1, SPOTLEASH_PROJECT and SPOTLEASH_PACKAGE_BUCKET"),
    pytest.mark.skipif(not os.environ.get("SPOTLEASH_PACKAGE_BUCKET"),
                       reason="set SPOTLEASH_PACKAGE_BUCKET to the deployment's package bucket (Terraform output)"),
]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "thumbs"
READY_TIMEOUT_S = 900.0  # a fresh Spot VM: boot, fetch ~90 MB, venv, offline install, two components
GONE_TIMEOUT_S = 300.0


@pytest.fixture
def lease_id() -> Iterator[str]:
    """A unique lease, renewed in the background while the test runs, released and swept at the end."""
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

    from spotleash.config import load_settings
    from spotleash.providers import build_provider
    from spotleash.topology import load_topology
    from spotleash.wire.events import LeaseEvent, ReleaseEvent

    settings = load_settings(compute_endpoint=None)
    publisher = pubsub_v1.PublisherClient()
    topo = load_topology()
    lease = f"systest-{uuid.uuid4().hex[:10]}"
    stop = threading.Event()

    def publish(event: LeaseEvent | ReleaseEvent) -> None:
        topic = publisher.topic_path(settings.project, topo.topic_of(event.KIND))
        publisher.publish(topic, event.to_bytes()).result(timeout=60)

    def renew() -> None:
        while True:
            publish(LeaseEvent(lease_id=lease, ttl_s=settings.lease_ttl_s, holder="systest"))
            if stop.wait(settings.lease_renew_s):
                return

    beat = threading.Thread(target=renew, daemon=True)
    beat.start()
    try:
        yield lease
    finally:
        stop.set()
        beat.join(timeout=30)
        publish(ReleaseEvent(lease_id=lease, reason="system test cleanup"))
        gce = build_provider("gce", settings)
        for inst in gce.list_owned(settings.deployment_id):  # belt and braces: nothing of this lease stays up
            if inst.labels.get("spotleash-lease") == lease:
                gce.delete(inst.provider_id)


def test_publish_launch_ready_release_on_a_real_project(lease_id: str) -> None:
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

    from spotleash.adapters.firestore import FirestoreStore
    from spotleash.config import load_settings
    from spotleash.model import ENDED, InstanceRecord, State
    from spotleash.polling import wait_until
    from spotleash.providers import build_provider
    from spotleash.topology import load_topology
    from spotleash.wire.events import Component, DemandEvent, ReleaseEvent

    settings = load_settings(compute_endpoint=None)
    out = subprocess.run([sys.executable, "-m", "spotleash.cli", "publish", "--app", str(EXAMPLE), "--json"],
                         env=dict(os.environ), capture_output=True, text=True, timeout=1800, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    published = json.loads(out.stdout)
    assert published["uri"] == f"gs://{settings.package_bucket}/packages/{published['sha256']}.json"

    store = FirestoreStore.from_settings(settings)
    publisher = pubsub_v1.PublisherClient()
    topo = load_topology()
    demand = DemandEvent(lease_id=lease_id, trigger="manual", ram_percent=91.0, components=[
        Component(name="thumbnailer", ram_gb=2.0), Component(name="vectors", ram_gb=4.0)])
    publisher.publish(publisher.topic_path(settings.project, topo.topic_of(demand.KIND)),
                      demand.to_bytes()).result(timeout=60)

    def ready() -> InstanceRecord | None:
        for r in store.instances_of_lease(lease_id, live_only=False):
            if r.state in ENDED:
                raise AssertionError(f"{r.instance_id} ended {r.state}: {r.reason}")
            if r.state == State.READY:
                return r
        return None

    rec: InstanceRecord = wait_until(ready, timeout_s=READY_TIMEOUT_S, interval_s=5.0,
                                     what=f"a READY instance for {lease_id}")
    assert rec.provider == "gce" and rec.package_sha256 == published["sha256"]
    assert {n: c.state for n, c in rec.component_states.items()} == {"thumbnailer": "healthy", "vectors": "healthy"}
    assert all(c.endpoint for c in rec.component_states.values())
    entry = next(e for e in store.audit_entries(rec.instance_id) if e["action"] == "ready")
    print(f"\nREADY in {(entry['at'] - rec.created_at).total_seconds():.0f} s after the intent; "
          f"instance timings {entry.get('timings')}")

    status = subprocess.run([sys.executable, "-m", "spotleash.cli", "status", "--json", "--all"],
                            env=dict(os.environ), capture_output=True, text=True, timeout=120, check=True)
    [row] = [r for r in json.loads(status.stdout)["instances"] if r["instance_id"] == rec.instance_id]
    assert row["components"]["vectors"]["state"] == "healthy"

    release = ReleaseEvent(lease_id=lease_id, instance_id=rec.instance_id, reason="system test")
    publisher.publish(publisher.topic_path(settings.project, topo.topic_of(release.KIND)),
                      release.to_bytes()).result(timeout=60)
    gce = build_provider("gce", settings)

    def gone() -> InstanceRecord | None:
        r = store.get(rec.instance_id)
        if r is None or r.state not in ENDED:
            return None
        return r if rec.provider_id is None or gce.get(rec.provider_id) is None else None

    done: InstanceRecord = wait_until(gone, timeout_s=GONE_TIMEOUT_S, interval_s=5.0,
                                      what=f"{rec.instance_id} released and deleted")
    assert done.state is State.TERMINATED
