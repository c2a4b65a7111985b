"""State and rules of the Compute Engine fake (moto-style "models"). No HTTP here.

Time: deadlines (``maxRunDuration``, ``terminationTime``, the 30 s preemption notice) run on a fake
clock ``now = wall start + real elapsed * time_scale + advanced``; boot delay and process-kill grace
are real seconds. ``time_scale=60`` makes a 60 s ``maxRunDuration`` last one real second.

Capacity: when a zone is marked exhausted, ``insert`` answers 200 with an operation that then ends
DONE with ``error.errors[0].code == "ZONE_RESOURCE_POOL_EXHAUSTED"`` (and httpErrorStatusCode 503),
and no instance is left behind — that is what GCE does for Spot stock-outs.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil

from local_emulator.compute import errors
from local_emulator.compute.errors import ApiError
from local_emulator.compute.metadata_server import MetadataServer, directory_listing
from spotleash.instance_agent.config import without_agent_env

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
NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
LABEL_KEY_RE = re.compile(r"^[a-z][-_a-z0-9]{0,62}$")
LABEL_VALUE_RE = re.compile(r"^[-_a-z0-9]{0,63}$")
METADATA_KEY_RE = re.compile(r"^[a-zA-Z0-9-_]{1,128}$")
MAX_LABELS = 64
MAX_METADATA_VALUE = 256 * 1024
MAX_METADATA_TOTAL = 512 * 1024
MIN_RUN_DURATION_S = 30
MAX_RUN_DURATION_S = 120 * 24 * 3600
PREEMPT_NOTICE_S = 30.0
KILL_GRACE_S = 3.0
GROUP_GONE_TIMEOUT_S = 10.0
REQUEST_ID_TTL_S = 3600.0

INSTANCE_FIELDS = frozenset({
    "name", "description", "machineType", "labels", "labelFingerprint", "metadata", "scheduling", "disks",
    "networkInterfaces", "serviceAccounts", "tags", "deletionProtection", "canIpForward", "minCpuPlatform",
    "guestAccelerators", "shieldedInstanceConfig", "confidentialInstanceConfig", "reservationAffinity",
    "advancedMachineFeatures", "displayDevice", "resourcePolicies", "hostname", "params", "keyRevocationActionType",
})


def rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds")


def fingerprint(value: Any) -> str:
    import base64
    import json

    return base64.b64encode(hashlib.sha256(json.dumps(value, sort_keys=True).encode()).digest()[:8]).decode()


class Clock:
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
class Fault:
    operation: str  # e.g. "instances.insert", or "*"
    count: int
    http_code: int | None = None
    reason: str = "backendError"
    message: str = "injected fault"
    latency_s: float = 0.0


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
    proc: subprocess.Popen[bytes] | None = None
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

    def action(self) -> str:
        return str(self.scheduling.get("instanceTerminationAction") or "STOP")

    def to_json(self, base: str) -> dict[str, Any]:
        zone_url = f"{base}/projects/{self.project}/zones/{self.zone}"
        out = {k: v for k, v in self.body.items() if k not in ("labels", "metadata", "scheduling", "labelFingerprint")}
        mt = str(self.body["machineType"]).rsplit("/", 1)[-1]
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
            "machineType": f"{zone_url}/machineTypes/{mt}",
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


class ComputeModel:
    """All state. Every public method takes the one lock; HTTP threads and the ticker share it."""

    def __init__(
        self,
        *,
        project: str | None = None,
        boot_delay_s: float = 0.5,
        time_scale: float = 1.0,
        vm_command: list[str] | None = None,
        workdir: Path | None = None,
        kill_grace_s: float = KILL_GRACE_S,
    ) -> None:
        self.project = project  # None: any project is accepted (state kept per project)
        self.boot_delay_s = boot_delay_s
        self.kill_grace_s = kill_grace_s
        self.clock = Clock(time_scale)
        self.vm_command = vm_command or [sys.executable, "-m", "spotleash.instance_agent", "--provider", "gce"]
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="spotleash-gce-fake-"))
        self.lock = threading.RLock()
        self.op_done = threading.Condition(self.lock)
        self.instances: dict[tuple[str, str, str], Instance] = {}
        self.operations: dict[tuple[str, str, str], Operation] = {}
        self.request_ids: dict[tuple[str, str], tuple[float, Operation]] = {}
        self.exhausted_zones: set[str] = set()
        self.faults: list[Fault] = []
        self.calls: dict[str, int] = {}
        # (operation, instance name, wall-clock time.time()) of every API call, newest last: the
        # benchmark measures "event published -> insert received" with it.
        self.call_log: collections.deque[tuple[str, str, float]] = collections.deque(maxlen=10_000)
        self._ids = itertools.count(int(time.time() * 1000) % 10**12 * 1000 + 1)
        self._killers: list[threading.Thread] = []
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick_loop, name="gce-fake-ticker", daemon=True)

    # ------------------------------------------------------------------ lifecycle of the model
    def start(self) -> None:
        self._ticker.start()

    def shutdown(self) -> None:
        self._stop.set()
        if self._ticker.is_alive():
            self._ticker.join(timeout=5)
        self.reset()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def reset(self) -> None:
        """Kill every VM process, close every metadata server, forget everything."""
        with self.lock:
            victims = list(self.instances.values())
            self.instances.clear()
            self.operations.clear()
            self.request_ids.clear()
            self.exhausted_zones.clear()
            self.faults.clear()
            self.calls.clear()
            self.call_log.clear()
            killers = list(self._killers)
            self._killers.clear()
        def end(inst: Instance) -> None:
            self._end_processes(inst)
            if inst.md:
                inst.md.close()

        enders = [threading.Thread(target=end, args=(i,), daemon=True) for i in victims]
        for t in enders:
            t.start()
        for t in enders + killers:
            t.join(timeout=GROUP_GONE_TIMEOUT_S + self.kill_grace_s + 5)

    # ------------------------------------------------------------------ faults
    def add_fault(self, fault: Fault) -> None:
        with self.lock:
            self.faults.append(fault)

    def log_call(self, operation: str, name: str) -> None:
        with self.lock:
            self.call_log.append((operation, name, time.time()))

    def take_fault(self, operation: str) -> Fault | None:
        with self.lock:
            self.calls[operation] = self.calls.get(operation, 0) + 1
            for f in self.faults:
                if f.count > 0 and f.operation in (operation, "*"):
                    f.count -= 1
                    if f.count == 0:
                        self.faults.remove(f)
                    return f
        return None

    # ------------------------------------------------------------------ helpers
    def _check_scope(self, project: str, zone: str | None = None) -> None:
        if self.project is not None and project != self.project:
            raise errors.not_found(f"projects/{project}")
        if zone is not None and zone not in ZONES:
            raise ApiError(400, "invalid", f"Invalid value for field 'zone': '{zone}'. Unknown zone.")

    def _get(self, project: str, zone: str, name: str) -> Instance:
        self._check_scope(project, zone)
        inst = self.instances.get((project, zone, name))
        if inst is None:
            raise errors.not_found(f"projects/{project}/zones/{zone}/instances/{name}")
        return inst

    def _new_op(self, project: str, zone: str, op_type: str, target: str, target_id: int) -> Operation:
        now = self.clock.now()
        op_id = next(self._ids)
        name = f"operation-{int(now.timestamp() * 1000)}-{uuid.uuid4().hex[:12]}"
        op = Operation(op_id, name, project, zone, op_type, target, target_id, now)
        self.operations[(project, zone, name)] = op
        return op

    def _idempotent(self, project: str, request_id: str | None) -> Operation | None:
        if request_id is None:
            return None
        try:
            parsed = uuid.UUID(request_id)
        except ValueError as e:
            raise errors.invalid(f"Invalid value for field 'requestId': '{request_id}'. Must be a UUID.") from e
        if parsed.int == 0:
            raise errors.invalid("Invalid value for field 'requestId': the zero UUID is not allowed.")
        hit = self.request_ids.get((project, request_id))
        if hit and time.monotonic() - hit[0] < REQUEST_ID_TTL_S:
            return hit[1]
        return None

    def _remember(self, project: str, request_id: str | None, op: Operation) -> None:
        if request_id is not None:
            self.request_ids[(project, request_id)] = (time.monotonic(), op)

    def _notify(self, inst: Instance) -> None:
        if inst.changed is not None:
            inst.changed.notify_all()
        self.op_done.notify_all()

    # ------------------------------------------------------------------ validation
    @staticmethod
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

    @staticmethod
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

    def validate_scheduling(self, sched: Any) -> dict[str, Any]:
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
            if when.tzinfo is None or when < self.clock.now() + timedelta(seconds=MIN_RUN_DURATION_S):
                raise errors.invalid("Invalid value for field 'scheduling.terminationTime': must be at least 30 s ahead.")
        return s

    def _validate_machine_type(self, value: Any, zone: str) -> None:
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

    # ------------------------------------------------------------------ API: instances
    def insert(self, project: str, zone: str, body: Any, request_id: str | None) -> Operation:
        with self.lock:
            self._check_scope(project, zone)
            seen = self._idempotent(project, request_id)
            if seen is not None:
                return seen
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
            self._validate_machine_type(body.get("machineType"), zone)
            labels = self.validate_labels(body.get("labels"))
            metadata = self.validate_metadata(body.get("metadata"))
            scheduling = self.validate_scheduling(body.get("scheduling"))
            disks = body.get("disks") or []
            if not any(isinstance(d, dict) and d.get("boot") for d in disks):
                raise errors.invalid("Invalid value for field 'resource.disks': ''. Boot disk must be specified.")
            if not body.get("networkInterfaces"):
                raise errors.invalid(
                    "Invalid value for field 'resource.networkInterfaces': ''. At least one network interface is required."
                )
            if (project, zone, name) in self.instances:
                raise errors.already_exists(f"projects/{project}/zones/{zone}/instances/{name}")
            inst_id = next(self._ids)
            op = self._new_op(project, zone, "insert", name, inst_id)
            self._remember(project, request_id, op)
            if zone in self.exhausted_zones:
                op.status = "RUNNING"
                op.error_code = "pending-exhaustion"  # finished with the real error by the ticker
                return op
            inst = Instance(
                project=project, zone=zone, name=name, id=inst_id, body=body, created=self.clock.now(),
                labels=labels, metadata=metadata, scheduling=scheduling,
            )
            now = time.monotonic()
            inst.staging_at = now + self.boot_delay_s / 2
            inst.running_at = now + self.boot_delay_s
            inst.pending_ops.append(op)
            inst.changed = threading.Condition(self.lock)
            inst.workdir = self.workdir / f"{zone}--{name}--{inst_id}"
            inst.workdir.mkdir(parents=True, exist_ok=True)
            inst.startup_check = self._check_startup_script(metadata.get("startup-script"))
            inst.md = MetadataServer(lambda p, r, i=inst: self._metadata(i, p, r), inst.changed).start()
            inst.history.append("PROVISIONING")
            self.instances[inst.key] = inst
            return op

    def get(self, project: str, zone: str, name: str) -> Instance:
        with self.lock:
            return self._get(project, zone, name)

    def list(self, project: str, zone: str | None) -> list[Instance]:
        with self.lock:
            self._check_scope(project, zone)
            found = [i for i in self.instances.values() if i.project == project and (zone is None or i.zone == zone)]
            return sorted(found, key=lambda i: (i.zone, i.name))

    def delete(self, project: str, zone: str, name: str, request_id: str | None) -> Operation:
        with self.lock:
            self._check_scope(project, zone)
            seen = self._idempotent(project, request_id)
            if seen is not None:
                return seen
            inst = self._get(project, zone, name)
            op = self._new_op(project, zone, "delete", name, inst.id)
            self._remember(project, request_id, op)
            inst.pending_ops.append(op)
            self._terminate(inst, delete=True, reason="delete")
            return op

    def set_labels(self, project: str, zone: str, name: str, body: Any, request_id: str | None) -> Operation:
        with self.lock:
            self._check_scope(project, zone)
            seen = self._idempotent(project, request_id)
            if seen is not None:
                return seen
            inst = self._get(project, zone, name)
            if not isinstance(body, dict):
                raise errors.invalid("Invalid JSON payload for setLabels.")
            fp = body.get("labelFingerprint")
            if not fp:
                raise errors.invalid("Required field 'labelFingerprint' not specified")
            if fp != fingerprint(inst.labels):
                raise errors.condition_not_met(
                    "Labels fingerprint either invalid or resource labels have changed"
                )
            inst.labels = self.validate_labels(body.get("labels"))
            op = self._new_op(project, zone, "setLabels", name, inst.id)
            self._remember(project, request_id, op)
            op.finish(self.clock.now())
            self._notify(inst)
            return op

    def stop(self, project: str, zone: str, name: str, request_id: str | None) -> Operation:
        with self.lock:
            self._check_scope(project, zone)
            seen = self._idempotent(project, request_id)
            if seen is not None:
                return seen
            inst = self._get(project, zone, name)
            op = self._new_op(project, zone, "stop", name, inst.id)
            self._remember(project, request_id, op)
            if inst.status in ("TERMINATED",):
                op.finish(self.clock.now())
                return op
            inst.pending_ops.append(op)
            self._terminate(inst, delete=False, reason="stop")
            return op

    def start_instance(self, project: str, zone: str, name: str, request_id: str | None) -> Operation:
        with self.lock:
            self._check_scope(project, zone)
            seen = self._idempotent(project, request_id)
            if seen is not None:
                return seen
            inst = self._get(project, zone, name)
            op = self._new_op(project, zone, "start", name, inst.id)
            self._remember(project, request_id, op)
            if inst.status in ("RUNNING", "PROVISIONING", "STAGING"):
                op.finish(self.clock.now())
                return op
            if inst.status == "STOPPING":
                raise errors.ApiError(400, "resourceNotReady", f"The resource '{name}' is not ready")
            if inst.zone in self.exhausted_zones:
                op.finish(self.clock.now(), ("ZONE_RESOURCE_POOL_EXHAUSTED", self._exhausted_msg(inst.zone), 503))
                return op
            inst.status = "STAGING"
            inst.preempted = False
            inst.deadline = None
            inst.running_at = time.monotonic() + self.boot_delay_s
            inst.pending_ops.append(op)
            inst.history.append("STAGING")
            self._notify(inst)
            return op

    # ------------------------------------------------------------------ API: operations
    def get_operation(self, project: str, zone: str, name: str) -> Operation:
        with self.lock:
            self._check_scope(project, zone)
            op = self.operations.get((project, zone, name))
            if op is None:
                raise errors.not_found(f"projects/{project}/zones/{zone}/operations/{name}")
            return op

    def wait_operation(self, project: str, zone: str, name: str, timeout_s: float) -> Operation:
        deadline = time.monotonic() + timeout_s
        with self.lock:
            op = self.get_operation(project, zone, name)
            while op.status != "DONE" and not self._stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.op_done.wait(timeout=min(left, 0.5))
            return op

    # ------------------------------------------------------------------ control
    def set_capacity(self, zone: str, exhausted: bool) -> None:
        with self.lock:
            if zone not in ZONES:
                raise errors.invalid(f"unknown zone {zone}")
            (self.exhausted_zones.add if exhausted else self.exhausted_zones.discard)(zone)

    def preempt(self, project: str, zone: str, name: str) -> Instance:
        """Spot preemption: ``instance/preempted`` turns TRUE now; the termination action follows
        after the (scaled) 30 s notice."""
        with self.lock:
            inst = self._get(project, zone, name)
            if inst.status != "RUNNING":
                raise errors.ApiError(400, "resourceNotReady", f"{name} is {inst.status}, only RUNNING VMs are preempted")
            inst.preempted = True
            notice = self.clock.now() + timedelta(seconds=PREEMPT_NOTICE_S)
            if inst.deadline is None or notice < inst.deadline:
                inst.deadline, inst.deadline_reason = notice, "preempted"
            inst.history.append("PREEMPTED")
            self._notify(inst)
            return inst

    def inspect(self, inst: Instance) -> dict[str, Any]:
        with self.lock:
            log = inst.workdir / "vm.log" if inst.workdir else None
            return {
                "project": inst.project, "zone": inst.zone, "name": inst.name, "id": str(inst.id),
                "status": inst.status, "history": list(inst.history), "preempted": inst.preempted,
                "deadline": rfc3339(inst.deadline) if inst.deadline else None,
                "deadline_reason": inst.deadline_reason or None,
                "termination_action": inst.action(),
                "pid": inst.proc.pid if inst.proc else None,
                "metadata_host": inst.md.host if inst.md else None,
                "workdir": str(inst.workdir) if inst.workdir else None,
                "log_path": str(log) if log else None,
                "startup_script_check": inst.startup_check,
                "labels": dict(inst.labels),
            }

    # ------------------------------------------------------------------ the metadata server's view
    def _metadata(self, inst: Instance, path: str, recursive: bool) -> tuple[str, str] | None:
        with self.lock:
            attrs = dict(inst.metadata)
            instance = {
                "id": str(inst.id),
                "name": inst.name,
                "hostname": f"{inst.name}.{inst.zone}.c.{inst.project}.internal",
                "zone": f"projects/{self._project_number(inst.project)}/zones/{inst.zone}",
                "machine-type": f"projects/{self._project_number(inst.project)}/machineTypes/"
                + str(inst.body["machineType"]).rsplit("/", 1)[-1],
                "preempted": "TRUE" if inst.preempted else "FALSE",
                "maintenance-event": "TERMINATE_ON_HOST_MAINTENANCE" if inst.preempted else "NONE",
                "tags": "[]",
            }
            project = {"project-id": inst.project, "numeric-project-id": str(self._project_number(inst.project))}
        path = path.rstrip("/") if path.endswith("/") and path.count("/") > 1 else path
        if path in ("instance/attributes", "instance/attributes/"):
            return directory_listing(attrs, recursive)
        if path.startswith("instance/attributes/"):
            key = path[len("instance/attributes/"):]
            return ("application/text", attrs[key]) if key in attrs else None
        if path in ("instance", "instance/"):
            return directory_listing({**instance, "attributes": attrs} if recursive else {**instance, "attributes/": ""}, recursive)
        if path.startswith("instance/") and path[len("instance/"):] in instance:
            return "application/text", instance[path[len("instance/"):]]
        if path.startswith("project/") and path[len("project/"):] in project:
            return "application/text", project[path[len("project/"):]]
        return None

    @staticmethod
    def _project_number(project: str) -> int:
        return int(hashlib.sha256(project.encode()).hexdigest()[:10], 16) % 10**12

    @staticmethod
    def _exhausted_msg(zone: str) -> str:
        return (
            f"The zone 'projects/-/zones/{zone}' does not have enough resources available to fulfill the "
            "request.  Try a different zone, or try again later."
        )

    @staticmethod
    def _check_startup_script(script: str | None) -> dict[str, Any]:
        """GCE stores any startup script; we do too, and record whether ``bash -n`` accepts it."""
        if script is None:
            return {"present": False}
        try:
            res = subprocess.run(["bash", "-n"], input=script.encode(), capture_output=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            return {"present": True, "bash_n_ok": None, "stderr": str(e)}
        return {"present": True, "bash_n_ok": res.returncode == 0, "stderr": res.stderr.decode(errors="replace")[-2000:]}

    # ------------------------------------------------------------------ the clock's work
    def _tick_loop(self) -> None:
        while not self._stop.wait(0.05):
            self.tick()

    def tick(self) -> None:
        with self.lock:
            now_real, now = time.monotonic(), self.clock.now()
            for op in self.operations.values():
                if op.status != "DONE" and op.error_code == "pending-exhaustion":
                    op.error_code = None
                    op.finish(now, ("ZONE_RESOURCE_POOL_EXHAUSTED", self._exhausted_msg(op.zone), 503))
                    self.op_done.notify_all()
            for inst in list(self.instances.values()):
                if inst.status == "PROVISIONING" and now_real >= inst.staging_at:
                    inst.status = "STAGING"
                    inst.history.append("STAGING")
                    self._notify(inst)
                if inst.status == "STAGING" and now_real >= inst.running_at:
                    self._run(inst, now)
                if inst.status == "RUNNING" and inst.deadline is not None and now >= inst.deadline:
                    self._terminate(inst, delete=inst.action() == "DELETE", reason=inst.deadline_reason)

    def _run(self, inst: Instance, now: datetime) -> None:
        inst.status, inst.last_start = "RUNNING", now
        inst.history.append("RUNNING")
        s = inst.scheduling
        if s.get("maxRunDuration"):
            mrd = s["maxRunDuration"]
            inst.deadline = now + timedelta(seconds=int(mrd.get("seconds", 0)) + int(mrd.get("nanos", 0)) / 1e9)
            inst.deadline_reason = "maxRunDuration"
        elif s.get("terminationTime"):
            inst.deadline = datetime.fromisoformat(str(s["terminationTime"]).replace("Z", "+00:00"))
            inst.deadline_reason = "terminationTime"
        assert inst.workdir is not None and inst.md is not None
        env = without_agent_env(os.environ)
        env.update({"GCE_METADATA_HOST": inst.md.host, "GCE_METADATA_IP": inst.md.host, "PYTHONUNBUFFERED": "1"})
        with open(inst.workdir / "vm.log", "ab") as log:
            inst.proc = subprocess.Popen(  # noqa: S603 - our own fixed command
                self.vm_command, cwd=inst.workdir, env=env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        for op in inst.pending_ops:
            op.finish(now)
        inst.pending_ops.clear()
        self._notify(inst)

    def _terminate(self, inst: Instance, *, delete: bool, reason: str) -> None:
        """Move to STOPPING and end the VM's process group on a worker thread; then either forget the
        instance (DELETE) or leave it TERMINATED (STOP). Caller holds the lock."""
        if inst.stopping:
            inst.delete_after_stop = inst.delete_after_stop or delete
            return
        inst.stopping = True
        inst.status = "STOPPING"
        inst.history.append(f"STOPPING({reason})")
        inst.deadline = None
        self._notify(inst)

        def work() -> None:
            self._end_processes(inst)
            with self.lock:
                now = self.clock.now()
                inst.proc = None
                inst.stopping = False
                really_delete = delete or inst.delete_after_stop
                for op in inst.pending_ops:
                    op.finish(now)
                inst.pending_ops.clear()
                if really_delete:
                    inst.status = "DELETED"
                    inst.history.append("DELETED")
                    if self.instances.get(inst.key) is inst:
                        del self.instances[inst.key]
                else:
                    inst.status = "TERMINATED"
                    inst.history.append("TERMINATED")
                self._notify(inst)
            if really_delete and inst.md:
                inst.md.close()

        t = threading.Thread(target=work, name=f"gce-fake-stop-{inst.name}", daemon=True)
        self._killers = [k for k in self._killers if k.is_alive()] + [t]
        t.start()

    def _end_processes(self, inst: Instance) -> None:
        """SIGTERM the VM's process group, SIGKILL after the grace, and wait until none is left."""
        proc = inst.proc
        if proc is None:
            return
        pgid = proc.pid  # start_new_session: the leader's pid is the group id
        _signal_group(pgid, signal.SIGTERM)
        try:
            proc.wait(timeout=self.kill_grace_s)
        except subprocess.TimeoutExpired:
            pass
        _signal_group(pgid, signal.SIGKILL)
        try:
            proc.wait(timeout=GROUP_GONE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + GROUP_GONE_TIMEOUT_S
        while group_alive(pgid) and time.monotonic() < deadline:
            _signal_group(pgid, signal.SIGKILL)
            time.sleep(0.05)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_alive(pgid: int) -> bool:
    """Any non-zombie process left in the group? (Zombies of reparented children do not count.)"""
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
            continue
    return False
