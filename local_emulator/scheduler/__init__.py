"""Cloud Scheduler fake: the CloudScheduler gRPC subset the official client needs, firing jobs on cron.

    with SchedulerServer(project="p", pubsub_host=emulator) as fake:
        client = scheduler_client(fake.address)
        client.create_job(parent="projects/p/locations/us-central1", job=...)

Run standalone: ``python -m local_emulator.scheduler --host 127.0.0.1 --port PORT --project P``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from local_emulator.scheduler.models import Scheduler, SchedulerFault
from local_emulator.scheduler.server import SchedulerServer, control_call
from spotleash.log import get_logger

log = get_logger("local_emulator.scheduler")
DRAIN_TIMEOUT_S = 120.0  # the reap subscription's backoff tops at 60 s (topology.json)

__all__ = ["Scheduler", "SchedulerFault", "SchedulerServer", "control_call", "reaper_paused", "scheduler_client"]


def scheduler_client(host: str) -> Any:
    """The official ``CloudSchedulerClient`` talking gRPC, without TLS or credentials, to ``host`` (HOST:PORT)."""
    import grpc
    from google.cloud import scheduler_v1
    from google.cloud.scheduler_v1.services.cloud_scheduler.transports import CloudSchedulerGrpcTransport

    return scheduler_v1.CloudSchedulerClient(transport=CloudSchedulerGrpcTransport(channel=grpc.insecure_channel(host)))


@contextmanager
def reaper_paused(host: str, project: str, region: str, *, handled: Callable[[], set[str]] | None = None,
                  drain_timeout_s: float = DRAIN_TIMEOUT_S) -> Iterator[None]:
    """The scheduler's reap job paused through the official client, resumed after: only what else asks for a
    reap (an agent's tick naming an instance it lost) can then explain one.

    With ``handled`` (the Pub/Sub message ids the reaper has handled), it also waits until every tick the job
    published before the pause was handled: a tick whose push was refused (the function restarting) comes
    back seconds later with the emulator's backoff, and would act inside the paused window."""
    from spotleash.polling import wait_until
    from spotleash.topology import load_topology

    topo = load_topology()
    [job] = [s.name for s in topo.schedules.values() if s.topic == topo.topic_of("reap")]
    name = f"projects/{project}/locations/{region}/jobs/{job}"
    client = scheduler_client(host)
    try:
        client.pause_job(name=name)
        if handled is not None:
            published, started = set(control_call(host, "Published").get(name, [])), time.monotonic()
            waiting = sorted(published - handled())
            wait_until(lambda: published <= handled(), timeout_s=drain_timeout_s, interval_s=0.2,
                       what=f"the reaper to handle the {len(published)} ticks published before the pause")
            log.info("reaper paused, its earlier ticks handled", waited_for=waiting,
                     waited_s=round(time.monotonic() - started, 2))
        yield
    finally:
        client.resume_job(name=name)
        client.transport.close()
