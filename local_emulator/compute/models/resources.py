"""The Compute Engine fake's resources: the fake clock, zone operations and instances, and their JSON."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from local_emulator.compute import errors
from local_emulator.compute.metadata_server import MetadataServer
from local_emulator.procs import ManagedProcess

ZONES = (
    "us-central1-a", "us-central1-b", "us-central1-c", "us-central1-f",
    "us-east1-b", "us-east1-c", "us-east1-d", "us-west1-a", "us-west1-b", "us-west1-c",
    "europe-west1-b", "europe-west1-c", "europe-west1-d", "europe-west4-a", "europe-west4-b",
    "europe-west4-c", "asia-east1-a", "asia-east1-b", "asia-east1-c",
)
MACHINE_TYPES = frozenset(
    [f"e2-{k}" for k in ("micro", "small", "medium")]
    + [f"e2-standard-{n}" for n in (2, 4, 8, 16, 32)]
    + [f"e2-highmem-{n}" for n in (2, 4, 8, 16)]
    + [f"e2-highcpu-{n}" for n in (2, 4, 8, 16, 32)]
    + [f"n1-standard-{n}" for n in (1, 2, 4, 8, 16)]
    + [f"n2-standard-{n}" for n in (2, 4, 8, 16, 32)]
    + [f"n2-highmem-{n}" for n in (2, 4, 8, 16)]
    + ["g2-standard-4", "g2-standard-8", "a2-highgpu-1g", "c2-standard-4", "c2-standard-8"]
)


def rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds")


def fingerprint(value: Any) -> str:
    return base64.b64encode(hashlib.sha256(json.dumps(value, sort_keys=True).encode()).digest()[:8]).decode()


class Clock:
    """Fake time for deadlines: wall start + real elapsed * ``time_scale`` + what was advanced."""

    def __init__(self, time_scale: float = 1.0) -> None:
        self._lock = threading.Lock()
        self._base_wall = datetime.now(UTC)
        self._base_mono = time.monotonic()
        self.time_scale = time_scale

    def now(self) -> datetime:
        with self._lock:
            return self._base_wall + timedelta(seconds=(time.monotonic() - self._base_mono) * self.time_scale)

    def set_scale(self, scale: float) -> None:
        if scale <= 0:
            raise errors.invalid("time_scale must be > 0")
        now = self.now()
        with self._lock:
            self._base_wall, self._base_mono, self.time_scale = now, time.monotonic(), scale

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._base_wall += timedelta(seconds=seconds)


@dataclass
class Operation:
    id: int
    name: str
    project: str
    zone: str
    op_type: str
    target: str
    target_id: int
    insert_time: datetime
    status: str = "RUNNING"
    end_time: datetime | None = None
    error_code: str | None = None
    error_message: str | None = None
    http_error: int | None = None

    def finish(self, now: datetime, error: tuple[str, str, int] | None = None) -> None:
        self.status, self.end_time = "DONE", now
        if error:
            self.error_code, self.error_message, self.http_error = error

    def to_json(self, base: str) -> dict[str, Any]:
        zone_url = f"{base}/projects/{self.project}/zones/{self.zone}"
        out: dict[str, Any] = {
            "kind": "compute#operation",
            "id": str(self.id),
            "name": self.name,
            "zone": zone_url,
            "operationType": self.op_type,
            "targetLink": f"{zone_url}/instances/{self.target}",
            "targetId": str(self.target_id),
            "status": self.status,
            "user": "fake@spotleash.local",
            "progress": 100 if self.status == "DONE" else 0,
            "insertTime": rfc3339(self.insert_time),
            "startTime": rfc3339(self.insert_time),
            "selfLink": f"{zone_url}/operations/{self.name}",
        }
        if self.end_time:
            out["endTime"] = rfc3339(self.end_time)
        if self.error_code:
            out["error"] = {"errors": [{"code": self.error_code, "message": self.error_message}]}
            out["httpErrorStatusCode"] = self.http_error
            out["httpErrorMessage"] = "SERVICE UNAVAILABLE" if self.http_error == 503 else "BAD REQUEST"
        return out


@dataclass
class Instance:
    project: str
    zone: str
    name: str
    id: int
    body: dict[str, Any]  # the validated request resource (camelCase), kept as sent
    created: datetime
    labels: dict[str, str]
    metadata: dict[str, str]
    scheduling: dict[str, Any]
    status: str = "PROVISIONING"
    staging_at: float = 0.0  # real monotonic times for the boot
    running_at: float = 0.0
    last_start: datetime | None = None
    deadline: datetime | None = None  # fake time at which the termination action applies
    deadline_reason: str = ""
    preempted: bool = False
    workdir: Path | None = None
    proc: ManagedProcess | None = None  # the VM's process group while it runs
    md: MetadataServer | None = None
    changed: threading.Condition | None = None
    startup_check: dict[str, Any] = field(default_factory=dict)
    pending_ops: list[Operation] = field(default_factory=list)
    stopping: bool = False
    delete_after_stop: bool = False
    history: list[str] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.project, self.zone, self.name)

    @property
    def machine_type(self) -> str:
        return str(self.body["machineType"]).rsplit("/", 1)[-1]

    def action(self) -> str:
        return str(self.scheduling.get("instanceTerminationAction") or "STOP")

    def to_json(self, base: str) -> dict[str, Any]:
        zone_url = f"{base}/projects/{self.project}/zones/{self.zone}"
        out = {k: v for k, v in self.body.items() if k not in ("labels", "metadata", "scheduling", "labelFingerprint")}
        nics = []
        for i, nic in enumerate(self.body.get("networkInterfaces", [])):
            nic = dict(nic)
            nic.setdefault("name", f"nic{i}")
            nic.setdefault("networkIP", f"10.128.0.{(self.id % 250) + 2}")
            nics.append(nic)
        out.update({
            "kind": "compute#instance",
            "id": str(self.id),
            "creationTimestamp": rfc3339(self.created),
            "name": self.name,
            "machineType": f"{zone_url}/machineTypes/{self.machine_type}",
            "status": self.status,
            "zone": zone_url,
            "selfLink": f"{zone_url}/instances/{self.name}",
            "labels": dict(self.labels),
            "labelFingerprint": fingerprint(self.labels),
            "metadata": {
                "kind": "compute#metadata",
                "fingerprint": fingerprint(self.metadata),
                "items": [{"key": k, "value": v} for k, v in self.metadata.items()],
            },
            "scheduling": dict(self.scheduling),
            "networkInterfaces": nics,
        })
        if self.last_start:
            out["lastStartTimestamp"] = rfc3339(self.last_start)
        return out
