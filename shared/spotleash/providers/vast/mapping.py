"""VAST's one free-text label and its instance states, in spotleash's terms. Pure, no I/O.

Ownership lives in the label: ``spotleash:<deployment>:<lease>:<instance_id>``, parsed back into
the label dict of :mod:`spotleash.providers.base`.
"""

from __future__ import annotations

from spotleash.errors import ProviderPermanent
from spotleash.providers.base import (
    LABEL_DEPLOYMENT,
    LABEL_INSTANCE,
    LABEL_LEASE,
    LABEL_MANAGED,
    MANAGED_VALUE,
    ProviderStatus,
)

LABEL_PREFIX = "spotleash"


def make_label(deployment_id: str, lease_id: str, instance_id: str) -> str:
    for part in (deployment_id, lease_id, instance_id):
        if ":" in part or not part:
            raise ProviderPermanent(f"label parts must be non-empty and free of ':' (got {part!r})")
    return f"{LABEL_PREFIX}:{deployment_id}:{lease_id}:{instance_id}"


def parse_label(label: str | None) -> dict[str, str]:
    """Our label back into base.py's label dict; {} for anything that is not ours."""
    if not label:
        return {}
    parts = label.strip().split(":")
    if len(parts) != 4 or parts[0] != LABEL_PREFIX or not all(parts[1:]):
        return {}
    return {LABEL_MANAGED: MANAGED_VALUE, LABEL_DEPLOYMENT: parts[1], LABEL_LEASE: parts[2],
            LABEL_INSTANCE: parts[3]}


def map_status(actual: str | None, cur_state: str | None, intended: str | None) -> ProviderStatus:
    """The one place VAST's states become ours. ``actual_status`` is null while an instance loads."""
    a = (actual or "").lower()
    wants_stop = (intended or "").lower() == "stopped"
    if a in ("", "created", "loading", "scheduling", "pulling"):
        if (cur_state or "").lower() == "stopped":
            return ProviderStatus.STOPPED
        return ProviderStatus.STOPPING if wants_stop and actual is not None else ProviderStatus.PENDING
    if a == "running":
        return ProviderStatus.STOPPING if wants_stop else ProviderStatus.RUNNING
    if a in ("exited", "stopped", "inactive"):
        return ProviderStatus.STOPPED
    if a in ("destroying", "destroyed", "deleted"):
        return ProviderStatus.TERMINATED
    return ProviderStatus.UNKNOWN  # "offline", "unknown", anything new
