"""State and rules of the Compute Engine fake (moto-style "backend"). No HTTP, no processes here.

Time: deadlines (``maxRunDuration``, ``terminationTime``, the 30 s preemption notice) run on a fake
clock ``now = wall start + real elapsed * time_scale + advanced``; boot delay and process-kill grace
are real seconds. ``time_scale=60`` makes a 60 s ``maxRunDuration`` last one real second.

Capacity: when a zone is marked exhausted, ``insert`` answers 200 with an operation that then ends
DONE with ``error.errors[0].code == "ZONE_RESOURCE_POOL_EXHAUSTED"`` (and httpErrorStatusCode 503),
and no instance is left behind — that is what GCE does for Spot stock-outs.

Disk: a VM's disk is ``<workdir>/root`` (its ``SPOTLEASH_VM_ROOT``: the startup script's ``/opt``, the
instance agent's state directories); a stopped VM keeps it, a deleted one loses it (its log stays).
"""

from __future__ import annotations

import collections
import itertools
import shutil
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from local_emulator.compute import errors
from local_emulator.compute.errors import ApiError
from local_emulator.compute.metadata_server import MetadataServer
from local_emulator.compute.models import vm
from local_emulator.compute.models.resources import ZONES, Clock, Instance, Operation, fingerprint, rfc3339
from local_emulator.compute.models.validation import validate_instance, validate_labels
from local_emulator.faults import FaultPlan
from spotleash.log import get_logger

log = get_logger("local_emulator.compute")
PREEMPT_NOTICE_S = 30.0
KILL_GRACE_S = 3.0
REQUEST_ID_TTL_S = 3600.0


def _keep_journal(workdir: Path) -> None:
    """The guest's service logs (vmshim's journal) outlive its disk, beside ``vm.log``: what the guest did on
    its way down is the first thing to read when a deletion was slow."""
    journal = workdir / "root" / "var" / "log" / "journal"
    if journal.is_dir():
        shutil.copytree(journal, workdir / "journal", dirs_exist_ok=True)


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
        # None: a VM runs its own startup-script metadata with bash (through local_emulator.vmshim), as
        # GCE's guest agent does; a VM without one runs nothing of spotleash. A list: run that instead.
        self.vm_command = vm_command
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="spotleash-gce-fake-"))
        self.lock = threading.RLock()
        self.op_done = threading.Condition(self.lock)
        self.instances: dict[tuple[str, str, str], Instance] = {}
        self.operations: dict[tuple[str, str, str], Operation] = {}
        self.request_ids: dict[tuple[str, str], tuple[float, Operation]] = {}
        self.exhausted_zones: set[str] = set()
        self.faults = FaultPlan()  # every API call is counted here, by operation
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
            self.faults.reset()
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
            t.join(timeout=vm.GROUP_GONE_TIMEOUT_S + self.kill_grace_s + 5)

    # ------------------------------------------------------------------ calls and faults
    def log_call(self, operation: str, name: str) -> None:
        with self.lock:
            self.call_log.append((operation, name, time.time()))

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

    def _replay_or_get(self, project: str, zone: str, name: str, request_id: str | None) -> Operation | Instance:
        """The operation of a replayed ``requestId``, else the instance the call acts on (404 if none)."""
        self._check_scope(project, zone)
        seen = self._idempotent(project, request_id)
        return seen if seen is not None else self._get(project, zone, name)

    def _op_on(self, inst: Instance, op_type: str, request_id: str | None) -> Operation:
        op = self._new_op(inst.project, inst.zone, op_type, inst.name, inst.id)
        self._remember(inst.project, request_id, op)
        return op

    def _notify(self, inst: Instance) -> None:
        if inst.changed is not None:
            inst.changed.notify_all()
        self.op_done.notify_all()

    # ------------------------------------------------------------------ API: instances
    def insert(self, project: str, zone: str, body: Any, request_id: str | None) -> Operation:
        with self.lock:
            self._check_scope(project, zone)
            seen = self._idempotent(project, request_id)
            if seen is not None:
                return seen
            valid = validate_instance(body, zone, self.clock.now())
            name = valid.name
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
                project=project, zone=zone, name=name, id=inst_id, body=valid.body, created=self.clock.now(),
                labels=valid.labels, metadata=valid.metadata, scheduling=valid.scheduling,
            )
            now = time.monotonic()
            inst.staging_at = now + self.boot_delay_s / 2
            inst.running_at = now + self.boot_delay_s
            inst.pending_ops.append(op)
            inst.changed = threading.Condition(self.lock)
            inst.workdir = self.workdir / f"{zone}--{name}--{inst_id}"
            inst.workdir.mkdir(parents=True, exist_ok=True)
            inst.startup_check = vm.check_startup_script(valid.metadata.get("startup-script"))
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
            inst = self._replay_or_get(project, zone, name, request_id)
            if isinstance(inst, Operation):
                return inst
            op = self._op_on(inst, "delete", request_id)
            inst.pending_ops.append(op)
            self._terminate(inst, delete=True, reason="delete")
            return op

    def set_labels(self, project: str, zone: str, name: str, body: Any, request_id: str | None) -> Operation:
        with self.lock:
            inst = self._replay_or_get(project, zone, name, request_id)
            if isinstance(inst, Operation):
                return inst
            if not isinstance(body, dict):
                raise errors.invalid("Invalid JSON payload for setLabels.")
            fp = body.get("labelFingerprint")
            if not fp:
                raise errors.invalid("Required field 'labelFingerprint' not specified")
            if fp != fingerprint(inst.labels):
                raise errors.condition_not_met(
                    "Labels fingerprint either invalid or resource labels have changed"
                )
            inst.labels = validate_labels(body.get("labels"))
            op = self._op_on(inst, "setLabels", request_id)
            op.finish(self.clock.now())
            self._notify(inst)
            return op

    def stop(self, project: str, zone: str, name: str, request_id: str | None) -> Operation:
        with self.lock:
            inst = self._replay_or_get(project, zone, name, request_id)
            if isinstance(inst, Operation):
                return inst
            op = self._op_on(inst, "stop", request_id)
            if inst.status in ("TERMINATED",):
                op.finish(self.clock.now())
                return op
            inst.pending_ops.append(op)
            self._terminate(inst, delete=False, reason="stop")
            return op

    def start_instance(self, project: str, zone: str, name: str, request_id: str | None) -> Operation:
        with self.lock:
            inst = self._replay_or_get(project, zone, name, request_id)
            if isinstance(inst, Operation):
                return inst
            op = self._op_on(inst, "start", request_id)
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
                "root": str(inst.workdir / "root") if inst.workdir else None,  # the VM's disk (SPOTLEASH_VM_ROOT)
                "log_path": str(log) if log else None,
                "startup_script_check": inst.startup_check,
                "labels": dict(inst.labels),
            }

    # ------------------------------------------------------------------ the metadata server's view
    def _metadata(self, inst: Instance, path: str, recursive: bool) -> tuple[str, str] | None:
        with self.lock:
            return vm.metadata_view(inst, path, recursive)

    @staticmethod
    def _exhausted_msg(zone: str) -> str:
        return (
            f"The zone 'projects/-/zones/{zone}' does not have enough resources available to fulfill the "
            "request.  Try a different zone, or try again later."
        )

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
        inst.proc = vm.start(self.vm_command, inst, metadata_host=inst.md.host)
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
            began = time.monotonic()
            self._end_processes(inst)
            ended_s = time.monotonic() - began
            with self.lock:
                now = self.clock.now()
                inst.proc = None
                inst.stopping = False
                really_delete = delete or inst.delete_after_stop
                if really_delete and inst.workdir is not None:  # the boot disk goes with the VM, before "DONE"
                    _keep_journal(inst.workdir)
                    shutil.rmtree(inst.workdir / "root", ignore_errors=True)
                # when the guest was gone and how long its processes took to end (a grace sat out shows here)
                self.call_log.append((f"vm.{'deleted' if really_delete else 'stopped'}", inst.name, time.time()))
                log.info("VM processes ended", vm=inst.name, seconds=round(ended_s, 3), delete=really_delete)
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
        vm.stop(inst, grace_s=self.kill_grace_s)
