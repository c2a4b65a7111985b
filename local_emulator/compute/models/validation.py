"""What Compute Engine accepts: names, machine types, labels, metadata and scheduling, with its messages.

Pure functions over request bodies; each returns the normalised value or raises the 400 GCE answers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from local_emulator.compute import errors
from local_emulator.compute.models.resources import MACHINE_TYPES

NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
LABEL_KEY_RE = re.compile(r"^[a-z][-_a-z0-9]{0,62}$")
LABEL_VALUE_RE = re.compile(r"^[-_a-z0-9]{0,63}$")
METADATA_KEY_RE = re.compile(r"^[a-zA-Z0-9-_]{1,128}$")
MAX_LABELS = 64
MAX_METADATA_VALUE = 256 * 1024
MAX_METADATA_TOTAL = 512 * 1024
MIN_RUN_DURATION_S = 30
MAX_RUN_DURATION_S = 120 * 24 * 3600

INSTANCE_FIELDS = frozenset({
    "name", "description", "machineType", "labels", "labelFingerprint", "metadata", "scheduling", "disks",
    "networkInterfaces", "serviceAccounts", "tags", "deletionProtection", "canIpForward", "minCpuPlatform",
    "guestAccelerators", "shieldedInstanceConfig", "confidentialInstanceConfig", "reservationAffinity",
    "advancedMachineFeatures", "displayDevice", "resourcePolicies", "hostname", "params", "keyRevocationActionType",
})


@dataclass(frozen=True)
class ValidInstance:
    """An insert body that passed every check, with its normalised parts."""

    name: str
    body: dict[str, Any]
    labels: dict[str, str]
    metadata: dict[str, str]
    scheduling: dict[str, Any]


def validate_labels(labels: Any) -> dict[str, str]:
    if labels is None:
        return {}
    if not isinstance(labels, dict):
        raise errors.invalid("Invalid value for field 'labels': must be a map of strings.")
    if len(labels) > MAX_LABELS:
        raise errors.invalid(f"Invalid value for field 'labels': at most {MAX_LABELS} labels are allowed.")
    for k, v in labels.items():
        if not isinstance(k, str) or not LABEL_KEY_RE.match(k):
            raise errors.invalid(
                f"Invalid value for field 'labels': label key '{k}' must start with a lowercase letter and "
                "contain only lowercase letters, digits, '_' and '-', at most 63 characters."
            )
        if not isinstance(v, str) or not LABEL_VALUE_RE.match(v):
            raise errors.invalid(
                f"Invalid value for field 'labels.{k}': '{v}'. Label values contain only lowercase "
                "letters, digits, '_' and '-', at most 63 characters."
            )
    return dict(labels)


def validate_metadata(metadata: Any) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise errors.invalid("Invalid value for field 'metadata'.")
    items = metadata.get("items") or []
    out: dict[str, str] = {}
    total = 0
    for item in items:
        key, value = item.get("key"), item.get("value", "")
        if not isinstance(key, str) or not METADATA_KEY_RE.match(key):
            raise errors.invalid(
                f"Invalid value for field 'metadata.items.key': '{str(key)[:60]}'. Metadata keys must match "
                "[a-zA-Z0-9-_]{1,128}."
            )
        if key in out:
            raise errors.invalid(f"Invalid value for field 'metadata': duplicate key '{key}'.")
        if not isinstance(value, str):
            raise errors.invalid(f"Invalid value for field 'metadata.items.value' of key '{key}'.")
        size = len(value.encode())
        if size > MAX_METADATA_VALUE:
            raise errors.invalid(
                f"Value for metadata key '{key}' is {size} bytes; the limit is {MAX_METADATA_VALUE} bytes."
            )
        total += size + len(key)
        out[key] = value
    if total > MAX_METADATA_TOTAL:
        raise errors.invalid(f"Metadata total size {total} bytes exceeds the limit of {MAX_METADATA_TOTAL} bytes.")
    return out


def validate_scheduling(sched: Any, now: datetime) -> dict[str, Any]:
    """``now`` is the fake clock's: a ``terminationTime`` must lie at least 30 s after it."""
    if sched is None:
        return {"provisioningModel": "STANDARD", "automaticRestart": True, "onHostMaintenance": "MIGRATE"}
    if not isinstance(sched, dict):
        raise errors.invalid("Invalid value for field 'scheduling'.")
    s = dict(sched)
    model = s.setdefault("provisioningModel", "STANDARD")
    if model not in ("STANDARD", "SPOT"):
        raise errors.invalid(f"Invalid value for field 'scheduling.provisioningModel': '{model}'.")
    action = s.get("instanceTerminationAction")
    if action is not None and action not in ("STOP", "DELETE"):
        raise errors.invalid(f"Invalid value for field 'scheduling.instanceTerminationAction': '{action}'.")
    if model == "SPOT":
        if s.get("automaticRestart") is True:
            raise errors.invalid("Invalid value for field 'scheduling.automaticRestart': Spot VMs cannot restart automatically.")
        if s.get("onHostMaintenance", "TERMINATE") != "TERMINATE":
            raise errors.invalid("Invalid value for field 'scheduling.onHostMaintenance': Spot VMs must use TERMINATE.")
        s["automaticRestart"] = False
        s["onHostMaintenance"] = "TERMINATE"
        s["preemptible"] = True
        s.setdefault("instanceTerminationAction", "STOP")
    mrd, tt = s.get("maxRunDuration"), s.get("terminationTime")
    if mrd is not None and tt is not None:
        raise errors.invalid("Only one of 'scheduling.maxRunDuration' and 'scheduling.terminationTime' may be set.")
    if (mrd is not None or tt is not None) and action is None:
        raise errors.invalid(
            "Invalid value for field 'scheduling.instanceTerminationAction': it must be set when "
            "maxRunDuration or terminationTime is set."
        )
    if mrd is not None:
        try:
            seconds = int(mrd.get("seconds", 0)) + int(mrd.get("nanos", 0)) / 1e9
        except (TypeError, ValueError, AttributeError) as e:
            raise errors.invalid("Invalid value for field 'scheduling.maxRunDuration'.") from e
        if not MIN_RUN_DURATION_S <= seconds <= MAX_RUN_DURATION_S:
            raise errors.invalid(
                f"Invalid value for field 'scheduling.maxRunDuration': {seconds}s. It must be between "
                f"{MIN_RUN_DURATION_S}s and {MAX_RUN_DURATION_S}s."
            )
    if tt is not None:
        try:
            when = datetime.fromisoformat(str(tt).replace("Z", "+00:00"))
        except ValueError as e:
            raise errors.invalid(f"Invalid value for field 'scheduling.terminationTime': '{tt}'.") from e
        if when.tzinfo is None or when < now + timedelta(seconds=MIN_RUN_DURATION_S):
            raise errors.invalid("Invalid value for field 'scheduling.terminationTime': must be at least 30 s ahead.")
    return s


def validate_machine_type(value: Any, zone: str) -> None:
    if not isinstance(value, str) or not value:
        raise errors.invalid("Invalid value for field 'resource.machineType': ''. Machine type must be specified.")
    m = re.search(r"(?:zones/([^/]+)/)?machineTypes/([^/]+)$", value)
    if not m:
        raise errors.invalid(f"Invalid value for field 'resource.machineType': '{value}'.")
    mzone, mtype = m.group(1), m.group(2)
    if mzone is not None and mzone != zone:
        raise errors.invalid(
            f"Invalid value for field 'resource.machineType': '{value}'. Machine type zone must match "
            f"the instance zone '{zone}'."
        )
    if mtype not in MACHINE_TYPES:
        raise errors.invalid(f"Invalid value for field 'resource.machineType': '{value}'. Machine type does not exist.")


def validate_instance(body: Any, zone: str, now: datetime) -> ValidInstance:
    """Every check ``instances.insert`` makes on its body, in the order GCE reports them."""
    if not isinstance(body, dict):
        raise errors.invalid("Invalid JSON payload: the instance resource must be an object.")
    unknown = sorted(set(body) - INSTANCE_FIELDS)
    if unknown:
        raise errors.invalid(f"Invalid JSON payload received. Unknown name \"{unknown[0]}\" at 'resource'.")
    name = body.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise errors.invalid(
            f"Invalid value for field 'resource.name': '{name}'. Must be a match of regex "
            "'(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'"
        )
    validate_machine_type(body.get("machineType"), zone)
    labels = validate_labels(body.get("labels"))
    metadata = validate_metadata(body.get("metadata"))
    scheduling = validate_scheduling(body.get("scheduling"), now)
    disks = body.get("disks") or []
    if not any(isinstance(d, dict) and d.get("boot") for d in disks):
        raise errors.invalid("Invalid value for field 'resource.disks': ''. Boot disk must be specified.")
    if not body.get("networkInterfaces"):
        raise errors.invalid(
            "Invalid value for field 'resource.networkInterfaces': ''. At least one network interface is required."
        )
    return ValidInstance(name, body, labels, metadata, scheduling)
