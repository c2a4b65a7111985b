"""Cloud Scheduler fake — models: jobs, their rules, their clock and their firing.

The transport (server.py) only decodes requests and maps :class:`SchedulerFault` to gRPC codes.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import grpc
from croniter import croniter
from google.cloud import scheduler_v1
from google.protobuf import timestamp_pb2
from google.rpc import code_pb2, status_pb2

from local_emulator.faults import FaultPlan
from spotleash.log import get_logger

log = get_logger("spotleash.local.scheduler")

PARENT_RE = re.compile(r"^projects/[a-z][a-z0-9-]{4,28}[a-z0-9]/locations/[a-z0-9-]+$")
JOB_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,500}$")
TOPIC_RE = re.compile(r"^projects/[^/]+/topics/[^/]{3,255}$")


class SchedulerFault(Exception):
    """An error the fake returns to the client with a gRPC status code."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Clock:
    """Wall time, optionally sped up by ``time_scale`` (60 → a cron minute passes every real second)."""

    def __init__(self, time_scale: float = 1.0) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        self.time_scale = time_scale
        self._origin_real = time.time()
        self._origin_mono = time.monotonic()

    def now(self) -> datetime:
        elapsed = (time.monotonic() - self._origin_mono) * self.time_scale
        return datetime.fromtimestamp(self._origin_real + elapsed, UTC)

    def real_seconds_until(self, when: datetime) -> float:
        return max(0.0, (when - self.now()).total_seconds() / self.time_scale)


def _ts(dt: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(dt.astimezone(UTC).replace(tzinfo=None))
    return ts


@dataclass
class JobRecord:
    job: scheduler_v1.Job
    next_run: datetime | None = None
    fired: int = 0
    history: list[dict[str, object]] = field(default_factory=list)


Dispatcher = Callable[[scheduler_v1.Job], str | None]  # returns the Pub/Sub message id of a Pub/Sub target


class Scheduler:
    """The jobs of one fake Cloud Scheduler and the thread that fires them on their cron schedule."""

    def __init__(self, dispatch: Dispatcher, *, time_scale: float = 1.0) -> None:
        self._dispatch = dispatch
        self.clock = Clock(time_scale)
        # RPC faults (taken by the transport) and the model's own: a firing whose target fails.
        self.faults = FaultPlan(effects=("fire_fails",))
        self._jobs: dict[str, JobRecord] = {}
        self._lock = threading.RLock()
        self._firing = threading.Lock()  # held through each firing (pause waits for one under way)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ rules
    def _tz(self, job: scheduler_v1.Job) -> ZoneInfo:
        try:
            return ZoneInfo(job.time_zone or "Etc/UTC")
        except (ZoneInfoNotFoundError, ValueError) as e:
            raise SchedulerFault(grpc.StatusCode.INVALID_ARGUMENT, f"unknown time_zone {job.time_zone!r}") from e

    def _next_after(self, job: scheduler_v1.Job, after: datetime) -> datetime:
        local = after.astimezone(self._tz(job))
        nxt: datetime = croniter(job.schedule, local).get_next(datetime)
        return nxt.astimezone(UTC)

    def _validate(self, parent: str, job: scheduler_v1.Job) -> None:
        if not PARENT_RE.match(parent):
            raise SchedulerFault(grpc.StatusCode.INVALID_ARGUMENT, f"invalid parent {parent!r}: want projects/P/locations/L")
        if not job.name.startswith(parent + "/jobs/") or not JOB_ID_RE.match(job.name[len(parent) + 6:]):
            raise SchedulerFault(
                grpc.StatusCode.INVALID_ARGUMENT, f"job name {job.name!r} must be {parent}/jobs/ID (letters, digits, - or _)"
            )
        if not job.schedule or not croniter.is_valid(job.schedule):
            raise SchedulerFault(grpc.StatusCode.INVALID_ARGUMENT, f"invalid cron schedule {job.schedule!r}")
        self._tz(job)
        targets = [t for t in ("pubsub_target", "http_target", "app_engine_http_target") if t in job]
        if len(targets) != 1:
            raise SchedulerFault(grpc.StatusCode.INVALID_ARGUMENT, "a job needs exactly one target")
        if targets[0] == "app_engine_http_target":
            raise SchedulerFault(grpc.StatusCode.UNIMPLEMENTED, "App Engine targets are not supported by this fake")
        if targets[0] == "pubsub_target" and not TOPIC_RE.match(job.pubsub_target.topic_name):
            raise SchedulerFault(
                grpc.StatusCode.INVALID_ARGUMENT, f"invalid topic_name {job.pubsub_target.topic_name!r}: want projects/P/topics/T"
            )
        if targets[0] == "http_target" and not job.http_target.uri.startswith(("http://", "https://")):
            raise SchedulerFault(grpc.StatusCode.INVALID_ARGUMENT, f"invalid http_target.uri {job.http_target.uri!r}")

    def _get(self, name: str) -> JobRecord:
        rec = self._jobs.get(name)
        if rec is None:
            raise SchedulerFault(grpc.StatusCode.NOT_FOUND, f"job {name!r} not found")
        return rec

    def _snapshot(self, rec: JobRecord) -> scheduler_v1.Job:
        job = scheduler_v1.Job.deserialize(scheduler_v1.Job.serialize(rec.job))
        if rec.next_run is not None and job.state == scheduler_v1.Job.State.ENABLED:
            job.schedule_time = _ts(rec.next_run)
        return job

    # ------------------------------------------------------------------ verbs
    def create(self, parent: str, job: scheduler_v1.Job) -> scheduler_v1.Job:
        self._validate(parent, job)
        with self._lock:
            if job.name in self._jobs:
                raise SchedulerFault(grpc.StatusCode.ALREADY_EXISTS, f"job {job.name!r} already exists")
            stored = scheduler_v1.Job.deserialize(scheduler_v1.Job.serialize(job))
            stored.state = scheduler_v1.Job.State.ENABLED
            stored.time_zone = job.time_zone or "Etc/UTC"
            stored.user_update_time = _ts(self.clock.now())
            rec = JobRecord(stored, self._next_after(stored, self.clock.now()))
            self._jobs[job.name] = rec
            log.info("job created", job=job.name, schedule=job.schedule, next_run=str(rec.next_run))
        self._wake.set()
        return self._snapshot(rec)

    def get(self, name: str) -> scheduler_v1.Job:
        with self._lock:
            return self._snapshot(self._get(name))

    def list(self, parent: str, page_size: int = 0, page_token: str = "") -> tuple[list[scheduler_v1.Job], str]:
        if not PARENT_RE.match(parent):
            raise SchedulerFault(grpc.StatusCode.INVALID_ARGUMENT, f"invalid parent {parent!r}")
        try:
            start = int(page_token or 0)
        except ValueError as e:
            raise SchedulerFault(grpc.StatusCode.INVALID_ARGUMENT, f"invalid page_token {page_token!r}") from e
        size = page_size if 0 < page_size <= 500 else 500
        with self._lock:
            names = sorted(n for n in self._jobs if n.startswith(parent + "/jobs/"))
            page = [self._snapshot(self._jobs[n]) for n in names[start:start + size]]
        nxt = str(start + size) if start + size < len(names) else ""
        return page, nxt

    def delete(self, name: str) -> None:
        with self._lock:
            self._get(name)
            del self._jobs[name]
        log.info("job deleted", job=name)

    def pause(self, name: str) -> scheduler_v1.Job:
        """Returns once no firing of the job is under way: what it published before is all in ``published``."""
        with self._lock:
            rec = self._get(name)
            rec.job.state = scheduler_v1.Job.State.PAUSED
            rec.next_run = None
        with self._firing:
            with self._lock:
                return self._snapshot(rec)

    def resume(self, name: str) -> scheduler_v1.Job:
        with self._lock:
            rec = self._get(name)
            rec.job.state = scheduler_v1.Job.State.ENABLED
            rec.next_run = self._next_after(rec.job, self.clock.now())
        self._wake.set()
        return self._snapshot(rec)

    def run(self, name: str) -> scheduler_v1.Job:
        """Fire the job now (whatever its state), as RunJob does."""
        with self._lock:
            rec = self._get(name)
        self._fire(rec, manual=True)
        with self._lock:
            return self._snapshot(rec)

    # ------------------------------------------------------------------ control / inspection
    def reset(self) -> None:
        with self._lock:
            self._jobs.clear()
        self.faults.reset()

    def fired(self) -> dict[str, int]:
        with self._lock:
            return {n: r.fired for n, r in self._jobs.items()}

    def published(self) -> dict[str, list[str]]:
        """The Pub/Sub message ids of each job's last 50 firings (a test waits until its target handled them)."""
        with self._lock:
            return {n: [str(h["message_id"]) for h in r.history if h.get("message_id")] for n, r in self._jobs.items()}

    # ------------------------------------------------------------------ firing
    def _fire(self, rec: JobRecord, *, manual: bool) -> None:
        with self._firing:
            with self._lock:
                if not manual and rec.job.state != scheduler_v1.Job.State.ENABLED:
                    return  # paused between the tick that found it due and now
            self._fire_now(rec, manual=manual)

    def _fire_now(self, rec: JobRecord, *, manual: bool) -> None:
        job = rec.job
        started = self.clock.now()
        try:
            fault = self.faults.take("fire", path=job.name, effect="fire_fails")
            if fault is not None:
                raise RuntimeError(fault.message or "injected fault: the job's target failed")
            message_id = self._dispatch(job)
            status = status_pb2.Status(code=code_pb2.OK)
            log.info("job fired", job=job.name, manual=manual)
        except Exception as e:  # noqa: BLE001 - a failed target is recorded on the job, as Cloud Scheduler does
            message_id = None
            status = status_pb2.Status(code=code_pb2.UNKNOWN, message=f"{type(e).__name__}: {e}")
            log.warning("job target failed", job=job.name, error=str(e))
        with self._lock:
            rec.fired += 1
            job.last_attempt_time = _ts(started)
            job.status = status  # type: ignore[assignment]
            rec.history.append({"at": started.isoformat(), "code": status.code, "manual": manual,
                                "message_id": message_id})
            del rec.history[:-50]

    def tick(self) -> float:
        """Fire every due job once; return real seconds until the next one is due (≤ 1)."""
        now = self.clock.now()
        due: list[JobRecord] = []
        with self._lock:
            for rec in self._jobs.values():
                if rec.next_run is not None and rec.job.state == scheduler_v1.Job.State.ENABLED and rec.next_run <= now:
                    due.append(rec)
                    # skip missed slots rather than firing a burst (as Cloud Scheduler does)
                    rec.next_run = self._next_after(rec.job, max(now, rec.next_run))
            upcoming = [r.next_run for r in self._jobs.values() if r.next_run is not None]
        for rec in due:
            self._fire(rec, manual=False)
        if not upcoming:
            return 1.0
        return min(1.0, self.clock.real_seconds_until(min(upcoming)))

    def _loop(self) -> None:
        while not self._stop.is_set():
            wait = self.tick()
            self._wake.wait(timeout=max(wait, 0.01))
            self._wake.clear()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="scheduler-fake-ticker", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

