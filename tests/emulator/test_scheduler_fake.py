"""The Cloud Scheduler fake, driven by the official google-cloud-scheduler client over gRPC."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1, scheduler_v1

from local_emulator.procs import free_port, spawn, wait_ready
from local_emulator.scheduler import SchedulerServer, control_call, scheduler_client
from spotleash.polling import wait_until

pytestmark = pytest.mark.emulator


@pytest.fixture()
def fake(pubsub_emulator: Any) -> Iterator[SchedulerServer]:
    server = SchedulerServer(project=pubsub_emulator.project, time_scale=60.0, pubsub_host=pubsub_emulator.host)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def client(fake: SchedulerServer) -> Iterator[Any]:
    c = scheduler_client(fake.address)
    try:
        yield c
    finally:
        c.transport.close()


def _parent(project: str) -> str:
    return f"projects/{project}/locations/us-central1"


def _topic_with_subscription(project: str) -> tuple[str, str, Any]:
    suffix = uuid.uuid4().hex[:8]
    pub, sub = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic = pub.create_topic(name=pub.topic_path(project, f"tick-{suffix}")).name
    subscription = sub.create_subscription(name=sub.subscription_path(project, f"tick-{suffix}-sub"), topic=topic).name
    pub.stop()
    return topic, subscription, sub


def _job(project: str, job_id: str, topic: str, schedule: str = "* * * * *", data: bytes = b"{}") -> scheduler_v1.Job:
    return scheduler_v1.Job(
        name=f"{_parent(project)}/jobs/{job_id}",
        schedule=schedule,
        time_zone="Etc/UTC",
        pubsub_target=scheduler_v1.PubsubTarget(topic_name=topic, data=data, attributes={"origin": "scheduler"}),
    )


def _pull(sub: Any, subscription: str, *, timeout_s: float) -> list[Any]:
    def pulled() -> list[Any] | None:
        r = sub.pull(subscription=subscription, max_messages=10, timeout=5)
        if r.received_messages:
            sub.acknowledge(subscription=subscription, ack_ids=[m.ack_id for m in r.received_messages])
        return list(r.received_messages) or None

    return wait_until(pulled, timeout_s=timeout_s, interval_s=0.1, what=f"a message on {subscription}")


def test_official_client_full_lifecycle(fake: SchedulerServer, client: Any, pubsub_emulator: Any) -> None:
    project = pubsub_emulator.project
    topic, _, _ = _topic_with_subscription(project)
    job = _job(project, "lifecycle", topic, schedule="0 3 * * *")  # far away: only manual runs fire

    created = client.create_job(parent=_parent(project), job=job)
    assert created.name == job.name
    assert created.state == scheduler_v1.Job.State.ENABLED
    assert created.schedule_time.timestamp() > time.time() - 60

    got = client.get_job(name=job.name)
    assert got.schedule == "0 3 * * *" and got.pubsub_target.topic_name == topic

    names = [j.name for j in client.list_jobs(parent=_parent(project))]
    assert job.name in names

    assert client.pause_job(name=job.name).state == scheduler_v1.Job.State.PAUSED
    assert client.get_job(name=job.name).state == scheduler_v1.Job.State.PAUSED
    assert client.resume_job(name=job.name).state == scheduler_v1.Job.State.ENABLED

    ran = client.run_job(name=job.name)
    assert ran.last_attempt_time.timestamp() > 0
    assert ran.status.code == 0
    assert control_call(fake.address, "Fired")[job.name] == 1

    client.delete_job(name=job.name)
    assert job.name not in [j.name for j in client.list_jobs(parent=_parent(project))]
    with pytest.raises(gexc.NotFound):
        client.get_job(name=job.name)


def test_errors_carry_grpc_codes(client: Any, pubsub_emulator: Any) -> None:
    project = pubsub_emulator.project
    topic = f"projects/{project}/topics/whatever"
    job = _job(project, "errors", topic)
    client.create_job(parent=_parent(project), job=job)
    with pytest.raises(gexc.AlreadyExists):
        client.create_job(parent=_parent(project), job=job)
    for bad in (
        _job(project, "bad-cron", topic, schedule="every minute"),
        scheduler_v1.Job(name=f"{_parent(project)}/jobs/no-target", schedule="* * * * *"),
        _job(project, "bad/name", topic),
        _job(project, "bad-topic", "tick"),
    ):
        with pytest.raises(gexc.InvalidArgument):
            client.create_job(parent=_parent(project), job=bad)
    for call in (client.get_job, client.delete_job, client.pause_job, client.resume_job, client.run_job):
        with pytest.raises(gexc.NotFound):
            call(name=f"{_parent(project)}/jobs/missing")
    with pytest.raises(gexc.MethodNotImplemented):
        client.update_job(job=job)
    client.delete_job(name=job.name)


def test_injected_faults_through_the_shared_control_api(fake: SchedulerServer, client: Any, pubsub_emulator: Any) -> None:
    project = pubsub_emulator.project
    topic, _, _ = _topic_with_subscription(project)
    job = _job(project, "faulty", topic, schedule="0 3 * * *")
    control_call(fake.address, "AddFault", {"operation": "CreateJob", "count": 1, "status": 503})
    control_call(fake.address, "AddFault", {"operation": "GetJob", "status": 429, "latency_s": 0.3})
    control_call(fake.address, "AddFault", {"effect": "fire_fails", "operation": "fire", "path": "/jobs/faulty$"})
    with pytest.raises(gexc.ServiceUnavailable):
        client.create_job(parent=_parent(project), job=job, retry=None)
    assert client.create_job(parent=_parent(project), job=job).name == job.name
    t = time.monotonic()
    with pytest.raises(gexc.TooManyRequests):
        client.get_job(name=job.name, retry=None)
    assert time.monotonic() - t >= 0.3
    ran = client.run_job(name=job.name)
    assert ran.status.code != 0 and "injected" in ran.status.message
    plan = control_call(fake.address, "Faults")
    assert plan["left"] == 0 and [r["fired"] for r in plan["rules"]] == [1, 1, 1]
    assert plan["calls"]["CreateJob"] == 2
    with pytest.raises(grpc.RpcError) as bad:
        control_call(fake.address, "AddFault", {"effect": "offer_gone"})
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert control_call(fake.address, "ClearFaults") == {"ok": True}
    assert client.run_job(name=job.name).status.code == 0
    client.delete_job(name=job.name)


def test_list_pages(client: Any, pubsub_emulator: Any) -> None:
    project = pubsub_emulator.project
    parent = f"projects/{project}/locations/europe-west1"
    names = {f"{parent}/jobs/page-{i}" for i in range(7)}
    for n in names:
        client.create_job(parent=parent, job=scheduler_v1.Job(
            name=n, schedule="0 0 1 1 *", pubsub_target=scheduler_v1.PubsubTarget(topic_name=f"projects/{project}/topics/x-y-z")))
    pager = client.list_jobs(request=scheduler_v1.ListJobsRequest(parent=parent, page_size=3))
    assert {j.name for j in pager} == names
    assert len(list(client.list_jobs(request=scheduler_v1.ListJobsRequest(parent=parent, page_size=3)).pages)) == 3
    for n in names:
        client.delete_job(name=n)


def test_job_fires_on_its_cron_schedule_into_pubsub(client: Any, pubsub_emulator: Any) -> None:
    # time_scale=60: the "* * * * *" job is due within one real second or so, and again each second.
    project = pubsub_emulator.project
    topic, subscription, sub = _topic_with_subscription(project)
    payload = json.dumps({"schema_version": 1, "kind": "reap"}).encode()
    job = client.create_job(parent=_parent(project), job=_job(project, "cron-fires", topic, data=payload))
    try:
        messages = _pull(sub, subscription, timeout_s=15)
        assert messages[0].message.data == payload
        assert messages[0].message.attributes["origin"] == "scheduler"
        # paused jobs stop firing: after pausing (and draining), nothing more arrives for a few cron minutes
        client.pause_job(name=job.name)
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:  # drain what was already in flight, then expect silence
            r = sub.pull(subscription=subscription, max_messages=10, timeout=1)
            if r.received_messages:
                sub.acknowledge(subscription=subscription, ack_ids=[m.ack_id for m in r.received_messages])
        fired_before = client.get_job(name=job.name).last_attempt_time
        r = sub.pull(subscription=subscription, max_messages=10, timeout=3)
        assert not r.received_messages, "a paused job kept firing"
        assert client.get_job(name=job.name).last_attempt_time == fired_before
    finally:
        client.delete_job(name=job.name)
        sub.close()


def test_published_lists_every_message_a_paused_job_sent(fake: SchedulerServer, client: Any,
                                                        pubsub_emulator: Any) -> None:
    """``Published`` (control) names the Pub/Sub message of each firing, and once the pause has returned nothing
    else comes: a test waits until its target handled exactly those (local_emulator.scheduler.reaper_paused)."""
    project = pubsub_emulator.project
    topic, subscription, sub = _topic_with_subscription(project)
    job = client.create_job(parent=_parent(project), job=_job(project, "listed", topic))
    try:
        received = {m.message.message_id for m in _pull(sub, subscription, timeout_s=15)}
        client.pause_job(name=job.name)
        published = set(control_call(fake.address, "Published")[job.name])
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:  # what was in flight at the pause, then silence
            r = sub.pull(subscription=subscription, max_messages=10, timeout=1)
            received |= {m.message.message_id for m in r.received_messages}
            if r.received_messages:
                sub.acknowledge(subscription=subscription, ack_ids=[m.ack_id for m in r.received_messages])
        assert published and published == received
    finally:
        client.delete_job(name=job.name)
        sub.close()


class _Recorder(BaseHTTPRequestHandler):
    received: list[tuple[str, str, bytes, dict[str, str]]] = []

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.received.append(("POST", self.path, body, dict(self.headers)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return


def test_http_target_fires(client: Any, pubsub_emulator: Any) -> None:
    project = pubsub_emulator.project
    _Recorder.received = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        job = scheduler_v1.Job(
            name=f"{_parent(project)}/jobs/http-job",
            schedule="0 0 1 1 *",
            http_target=scheduler_v1.HttpTarget(
                uri=f"http://127.0.0.1:{httpd.server_address[1]}/hook",
                http_method=scheduler_v1.HttpMethod.POST,
                headers={"X-Test": "yes"},
                body=b'{"hello":1}',
            ),
        )
        client.create_job(parent=_parent(project), job=job)
        ran = client.run_job(name=job.name)
        assert ran.status.code == 0
        method, path, body, headers = _Recorder.received[0]
        assert (method, path, body, headers.get("X-Test")) == ("POST", "/hook", b'{"hello":1}', "yes")
        client.delete_job(name=job.name)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_failed_target_is_recorded_on_the_job(client: Any, pubsub_emulator: Any) -> None:
    project = pubsub_emulator.project
    port = free_port()  # nothing listens there
    job = scheduler_v1.Job(
        name=f"{_parent(project)}/jobs/http-down",
        schedule="0 0 1 1 *",
        http_target=scheduler_v1.HttpTarget(uri=f"http://127.0.0.1:{port}/", http_method=scheduler_v1.HttpMethod.POST),
    )
    client.create_job(parent=_parent(project), job=job)
    ran = client.run_job(name=job.name)
    assert ran.status.code != 0 and ran.status.message
    client.delete_job(name=job.name)


def test_cli_process_serves_and_fires(tmp_path: Path, pubsub_emulator: Any) -> None:
    project = pubsub_emulator.project
    port = free_port()
    env = {**os.environ, "PUBSUB_EMULATOR_HOST": pubsub_emulator.host}
    proc = spawn("scheduler-cli", [sys.executable, "-m", "local_emulator.scheduler", "--host", "127.0.0.1",
                                   "--port", str(port), "--project", project, "--time-scale", "60"],
                 log_path=tmp_path / "scheduler.log", port=port, env=env)
    try:
        address = f"127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                return bool(control_call(address, "Health", timeout=1)["ok"])
            except Exception:  # noqa: BLE001 - not up yet
                return False

        wait_ready(proc, timeout=30, check=healthy)
        topic, subscription, sub = _topic_with_subscription(project)
        c = scheduler_client(address)
        c.create_job(parent=_parent(project), job=_job(project, "cli-job", topic, data=b"from-cli"))
        assert _pull(sub, subscription, timeout_s=15)[0].message.data == b"from-cli"
        c.transport.close()
        sub.close()
    finally:
        assert proc.stop()
    assert not proc.alive()


def test_cli_refuses_without_pubsub_emulator(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PUBSUB_EMULATOR_HOST"}
    proc = spawn("scheduler-noenv", [sys.executable, "-m", "local_emulator.scheduler", "--port", str(free_port()),
                                     "--project", "spotleash-test"], log_path=tmp_path / "s.log", port=None, env=env)
    try:
        assert proc.popen is not None
        assert proc.popen.wait(timeout=30) == 2
        assert "PUBSUB_EMULATOR_HOST" in (tmp_path / "s.log").read_text()
    finally:
        proc.stop()
