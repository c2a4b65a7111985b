"""Cloud Scheduler fake — transport: the CloudScheduler gRPC service the official client calls.

Implemented: CreateJob, GetJob, ListJobs, DeleteJob, PauseJob, ResumeJob, RunJob. UpdateJob and
anything else answers UNIMPLEMENTED. A small control service (``spotleash.local.SchedulerControl``,
JSON over gRPC bytes) offers Health, Reset, Fired and Published (inspection) for tests, and the faults control of
every fake (local_emulator.faults) as AddFault (POST /_control/faults), Faults (GET) and ClearFaults
(DELETE), with the same JSON. RPC faults match the RPC name (``CreateJob``) and, as path, the request's
job name or parent; the effect ``fire_fails`` makes a firing of the job (operation ``fire``) fail.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any, TypeVar

import grpc
import httpx
from google.cloud import scheduler_v1
from google.protobuf import empty_pb2

from local_emulator.faults import FaultError, FaultPlan, grpc_code_name
from local_emulator.scheduler.models import Scheduler, SchedulerFault
from spotleash.log import get_logger

log = get_logger("spotleash.local.scheduler")

SERVICE = "google.cloud.scheduler.v1.CloudScheduler"
CONTROL_SERVICE = "spotleash.local.SchedulerControl"
PUBLISH_TIMEOUT_S = 30.0

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class Dispatcher:
    """Delivers a job to its target: Pub/Sub through the official publisher, HTTP through httpx."""

    def __init__(self, pubsub_host: str | None = None) -> None:
        self._pubsub_host = pubsub_host
        self._publisher: Any = None
        self._lock = threading.Lock()

    def _client(self) -> Any:
        with self._lock:
            if self._publisher is None:
                from google.cloud import pubsub_v1

                host = self._pubsub_host or os.environ.get("PUBSUB_EMULATOR_HOST")
                if not host:
                    raise RuntimeError("no Pub/Sub emulator: set PUBSUB_EMULATOR_HOST (the fake never publishes to real Pub/Sub)")
                from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

                self._publisher = pubsub_v1.PublisherClient(
                    transport=PublisherGrpcTransport(channel=grpc.insecure_channel(host))
                )
            return self._publisher

    def __call__(self, job: scheduler_v1.Job) -> str | None:
        if "pubsub_target" in job:
            t = job.pubsub_target
            future = self._client().publish(t.topic_name, bytes(t.data), **dict(t.attributes))
            return str(future.result(timeout=PUBLISH_TIMEOUT_S))
        if "http_target" in job:
            t = job.http_target
            method = scheduler_v1.HttpMethod(t.http_method or scheduler_v1.HttpMethod.POST).name
            r = httpx.request(method, t.uri, headers=dict(t.headers), content=bytes(t.body), timeout=30.0)
            if r.status_code >= 300:
                raise RuntimeError(f"HTTP target answered {r.status_code}")
            return None
        raise RuntimeError("job has no supported target")

    def close(self) -> None:
        with self._lock:
            if self._publisher is not None:
                self._publisher.stop()
                self._publisher = None


def _inject(faults: FaultPlan, rpc: str, request: Any) -> None:
    fault = faults.take(rpc, path=str(getattr(request, "name", "") or getattr(request, "parent", "")))
    if fault is None:
        return
    if fault.latency_s:
        time.sleep(fault.latency_s)
    if fault.status:
        code = grpc.StatusCode[grpc_code_name(fault.status)]
        raise SchedulerFault(code, fault.message or f"injected fault: {code.name}")


def _unary(
    fn: Callable[[Req, grpc.ServicerContext], Resp],
    deserializer: Callable[[bytes], Req],
    serializer: Callable[[Resp], bytes],
    *,
    faults: FaultPlan | None = None,
    rpc: str = "",
) -> grpc.RpcMethodHandler:
    def handler(request: Req, context: grpc.ServicerContext) -> Resp:
        try:
            if faults is not None:
                _inject(faults, rpc, request)
            return fn(request, context)
        except SchedulerFault as e:
            context.abort(e.code, e.message)
            raise  # abort raises; this keeps type checkers content

    return grpc.unary_unary_rpc_method_handler(handler, request_deserializer=deserializer, response_serializer=serializer)


def _empty(_: Any) -> bytes:
    return empty_pb2.Empty().SerializeToString()


class SchedulerServer:
    """The fake, in-process: ``with SchedulerServer(project="p") as s: client = scheduler_client(s.address)``."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        project: str = "spotleash-local",
        time_scale: float = 1.0,
        pubsub_host: str | None = None,
        dispatch: Callable[[scheduler_v1.Job], None] | None = None,
    ) -> None:
        self.project = project
        self._dispatcher = Dispatcher(pubsub_host) if dispatch is None else None
        self.scheduler = Scheduler(dispatch or self._dispatcher or (lambda _j: None), time_scale=time_scale)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="scheduler-fake"))
        self._server.add_generic_rpc_handlers((self._handlers(), self._control_handlers()))
        self.host = host
        self.port = self._server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise OSError(f"cannot bind the scheduler fake to {host}:{port}")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _handlers(self) -> grpc.GenericRpcHandler:
        s = self.scheduler
        v1 = scheduler_v1

        def list_jobs(req: v1.ListJobsRequest, _ctx: grpc.ServicerContext) -> v1.ListJobsResponse:
            jobs, token = s.list(req.parent, req.page_size, req.page_token)
            return v1.ListJobsResponse(jobs=jobs, next_page_token=token)

        def update_job(_req: v1.UpdateJobRequest, _ctx: grpc.ServicerContext) -> v1.Job:
            raise SchedulerFault(grpc.StatusCode.UNIMPLEMENTED, "UpdateJob is not implemented by this fake")

        rpcs: dict[str, tuple[Callable[[Any, grpc.ServicerContext], Any], Callable[[bytes], Any], Callable[[Any], bytes]]] = {
            "CreateJob": (lambda r, _c: s.create(r.parent, r.job), v1.CreateJobRequest.deserialize, v1.Job.serialize),
            "GetJob": (lambda r, _c: s.get(r.name), v1.GetJobRequest.deserialize, v1.Job.serialize),
            "ListJobs": (list_jobs, v1.ListJobsRequest.deserialize, v1.ListJobsResponse.serialize),
            "DeleteJob": (lambda r, _c: s.delete(r.name), v1.DeleteJobRequest.deserialize, _empty),
            "PauseJob": (lambda r, _c: s.pause(r.name), v1.PauseJobRequest.deserialize, v1.Job.serialize),
            "ResumeJob": (lambda r, _c: s.resume(r.name), v1.ResumeJobRequest.deserialize, v1.Job.serialize),
            "RunJob": (lambda r, _c: s.run(r.name), v1.RunJobRequest.deserialize, v1.Job.serialize),
            "UpdateJob": (update_job, v1.UpdateJobRequest.deserialize, v1.Job.serialize),
        }
        handlers = {name: _unary(*rpc, faults=s.faults, rpc=name) for name, rpc in rpcs.items()}
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    def _control_handlers(self) -> grpc.GenericRpcHandler:
        s = self.scheduler

        def loads(b: bytes) -> Any:
            return json.loads(b or b"{}")

        def dumps(o: Any) -> bytes:
            return json.dumps(o).encode()

        def reset(_r: Any, _c: grpc.ServicerContext) -> dict[str, bool]:
            s.reset()
            return {"ok": True}

        def faults(verb: str) -> Callable[[Any, grpc.ServicerContext], Any]:
            def call(body: Any, _c: grpc.ServicerContext) -> Any:
                try:
                    return s.faults.control(verb, body)
                except FaultError as e:
                    raise SchedulerFault(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from e

            return call

        handlers = {
            "Health": _unary(lambda _r, _c: {"ok": True, "project": self.project}, loads, dumps),
            "Reset": _unary(reset, loads, dumps),
            "Fired": _unary(lambda _r, _c: s.fired(), loads, dumps),
            "Published": _unary(lambda _r, _c: s.published(), loads, dumps),
            "AddFault": _unary(faults("POST"), loads, dumps),
            "Faults": _unary(faults("GET"), loads, dumps),
            "ClearFaults": _unary(faults("DELETE"), loads, dumps),
        }
        return grpc.method_handlers_generic_handler(CONTROL_SERVICE, handlers)

    def start(self) -> SchedulerServer:
        self._server.start()
        self.scheduler.start()
        log.info("scheduler fake listening", address=self.address, project=self.project,
                 time_scale=self.scheduler.clock.time_scale)
        return self

    def stop(self, grace: float = 1.0) -> None:
        self.scheduler.stop()
        self._server.stop(grace).wait(timeout=grace + 5)
        if self._dispatcher is not None:
            self._dispatcher.close()

    def wait_for_termination(self) -> None:
        self._server.wait_for_termination()

    def __enter__(self) -> SchedulerServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def control_call(address: str, method: str, body: dict[str, Any] | None = None, timeout: float = 5.0) -> Any:
    """Call the fake's control service (Health, Reset, Fired, Published, AddFault, Faults, ClearFaults) from any
    process."""
    with grpc.insecure_channel(address) as ch:
        call = ch.unary_unary(
            f"/{CONTROL_SERVICE}/{method}",
            request_serializer=lambda o: json.dumps(o).encode(),
            response_deserializer=lambda b: json.loads(b),
        )
        return call(body or {}, timeout=timeout)
