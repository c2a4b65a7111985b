"""Against real Google Cloud, only when asked: SPOTLEASH_SYSTEM_TESTS=1 and SPOTLEASH_PROJECT set.

Creates one tiny Spot VM with a unique name and our labels, checks it is listed as ours, deletes
it and confirms it is gone. The VM carries max_run_duration, so even a crashed run cleans itself.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta

import pytest

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(os.environ.get("SPOTLEASH_SYSTEM_TESTS") != "1",
                       reason="real GCP: set SPOTLEASH_SYSTEM_TESTS=1 and SPOTLEASH_PROJECT"),
]


def test_spot_vm_create_list_delete_on_real_gce() -> None:
    from spotleash.config import load_settings
    from spotleash.providers.base import LaunchSpec
    from spotleash.providers.gce.provider import GceProvider
    from spotleash.services.terminate import confirm_gone

    settings = load_settings(compute_endpoint=None, deployment_id=f"systest-{uuid.uuid4().hex[:6]}")
    provider = GceProvider.from_settings(settings)
    iid = f"sl-systest-{uuid.uuid4().hex[:10]}"
    spec = LaunchSpec(instance_id=iid, lease_id="systest", deployment_id=settings.deployment_id,
                      deadline=datetime.now(UTC) + timedelta(minutes=10), max_run_s=600,
                      machine_type="e2-small", zones=tuple(settings.zones))
    made = provider.create(spec)
    try:
        assert made.instance_id == iid
        assert [p.provider_id for p in provider.list_owned(settings.deployment_id)] == [made.provider_id]
    finally:
        provider.delete(made.provider_id)
        assert confirm_gone(provider, made.provider_id, timeout_s=300)
