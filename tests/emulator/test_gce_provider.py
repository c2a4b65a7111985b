"""GceProvider against the Compute Engine fake: real client, real wire, real VM processes."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from tests.emulator import compute_fixtures

from local_emulator.compute import ComputeFake
from spotleash.config import Settings
from spotleash.errors import CapacityExhausted, ProviderPermanent, ProviderTransient
from spotleash.providers.base import LaunchSpec, ProviderStatus
from spotleash.providers.gce.provider import GceProvider, map_status, request_id_for

fake = compute_fixtures.fake
clean = compute_fixtures.clean

pytestmark = pytest.mark.emulator

P = "spotleash-test"
ZA, ZB = "us-central1-a", "us-central1-b"
TOKEN = "hb-token-not-for-logs"


def wait_until(pred: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def pid_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class Receiver:
    """A stand-in for on_heartbeat: records each beat, answers ``self.action``."""

    def __init__(self) -> None:
        self.beats: list[tuple[str, dict[str, Any]]] = []
        self.action = "continue"
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                return

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.beats.append((self.headers.get("Authorization", ""), json.loads(body)))
                data = json.dumps({"action": outer.action}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/heartbeat"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def control(fake: ComputeFake) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.url, timeout=10) as c:
        yield c


@pytest.fixture
def provider(fake: ComputeFake) -> GceProvider:
    return GceProvider(P, (ZA, ZB), endpoint=fake.url, retry_base_s=0.01, retry_max_s=0.05, retry_attempts=4, page_size=2)


def spec(instance_id: str, receiver: Receiver | None = None, max_run_s: int = 3600, deployment: str = "dep1", **kw: Any) -> LaunchSpec:
    return LaunchSpec(
        instance_id=instance_id, lease_id="lease-1", deployment_id=deployment,
        deadline=datetime.now(UTC) + timedelta(seconds=max_run_s), max_run_s=max_run_s,
        zones=(ZA, ZB),
        heartbeat_url=receiver.url if receiver else "", heartbeat_token=TOKEN if receiver else "",
        heartbeat_interval_s=0.3, **{"machine_type": "e2-highmem-4", **kw},
    )


def inspect(control: httpx.Client, name: str, zone: str = ZA) -> dict[str, Any]:
    r = control.get(f"/_control/instances/{zone}/{name}")
    r.raise_for_status()
    return dict(r.json())


def test_status_mapping_is_total() -> None:
    assert map_status("RUNNING") is ProviderStatus.RUNNING
    assert map_status("STAGING") is ProviderStatus.PENDING
    assert map_status("TERMINATED") is ProviderStatus.STOPPED
    assert map_status("SOMETHING-NEW") is ProviderStatus.UNKNOWN
    assert map_status(None) is ProviderStatus.UNKNOWN


def test_from_settings_talks_to_the_endpoint(fake: ComputeFake) -> None:
    p = GceProvider.from_settings(Settings(project=P, zones=[ZB], compute_endpoint=fake.url))
    assert p.zones == (ZB,) and p.list_owned("dep1") == []


def test_create_running_heartbeats_then_delete(provider: GceProvider, receiver: Receiver, control: httpx.Client, fake: ComputeFake) -> None:
    got = provider.create(spec("sl-create1", receiver))
    assert got.status is ProviderStatus.RUNNING and got.zone == ZA and got.provider_id == "sl-create1"
    assert got.owned and got.instance_id == "sl-create1" and got.lease_id == "lease-1"
    inst = fake.model.get(P, ZA, "sl-create1")
    assert set(inst.metadata) == {"startup-script", "spotleash-config", "spotleash-token"}
    assert json.loads(inst.metadata["spotleash-config"])["heartbeat_url"] == receiver.url
    assert inst.scheduling["provisioningModel"] == "SPOT" and inst.scheduling["instanceTerminationAction"] == "DELETE"
    assert int(inst.scheduling["maxRunDuration"]["seconds"]) == 3600
    assert TOKEN not in json.dumps(inst.labels)
    info = inspect(control, "sl-create1")
    assert info["startup_script_check"]["bash_n_ok"] is True
    # the VM's process is the real instance agent: it heartbeats with its token
    wait_until(lambda: len(receiver.beats) >= 2, what="two heartbeats")
    auth, beat = receiver.beats[0]
    assert auth == f"Bearer {TOKEN}" and beat["instance_id"] == "sl-create1" and beat["kind"] == "heartbeat"
    assert TOKEN not in open(info["log_path"]).read()
    provider.delete("sl-create1", wait=True)
    assert provider.get("sl-create1") is None
    assert pid_gone(info["pid"])
    provider.delete("sl-create1")  # already gone = success
    provider.delete(f"{ZB}/never-existed")


def test_create_is_idempotent(provider: GceProvider, fake: ComputeFake) -> None:
    a = provider.create(spec("sl-idem"))
    b = provider.create(spec("sl-idem"))
    assert a.provider_id == b.provider_id
    fresh = GceProvider(P, (ZA, ZB), endpoint=fake.url)  # no memory of the first: reconciles by label
    assert fresh.create(spec("sl-idem")).zone == ZA
    assert [i.provider_id for i in provider.list_owned("dep1")] == ["sl-idem"]
    assert len(fake.model.list(P, None)) == 1


def test_repeated_insert_with_same_request_id_makes_one_vm(provider: GceProvider, fake: ComputeFake) -> None:
    s = spec("sl-rid")
    first = provider._create_in_zone(s, ZA)  # the insert a crashed caller already sent
    again = provider._create_in_zone(s, ZA)  # the same request again (same requestId)
    assert first and again and first.provider_id == again.provider_id
    assert len(fake.model.list(P, None)) == 1
    assert request_id_for("sl-rid", ZA) == request_id_for("sl-rid", ZA) != request_id_for("sl-rid", ZB)


def test_zone_fallback_then_capacity_exhausted(provider: GceProvider, control: httpx.Client, fake: ComputeFake) -> None:
    control.post("/_control/capacity", json={"zone": ZA}).raise_for_status()
    got = provider.create(spec("sl-fallback"))
    assert got.zone == ZB
    control.post("/_control/capacity", json={"zone": ZB}).raise_for_status()
    with pytest.raises(CapacityExhausted, match="us-central1-a, us-central1-b"):
        provider.create(spec("sl-nowhere"))
    assert [i.name for i in fake.model.list(P, None)] == ["sl-fallback"]


def test_list_owned_pages_and_filters(provider: GceProvider, control: httpx.Client) -> None:
    for i in range(3):
        provider.create(spec(f"sl-own{i}"))
    control.post("/_control/capacity", json={"zone": ZA}).raise_for_status()
    provider.create(spec("sl-own-b"))
    control.post("/_control/capacity", json={"zone": ZA, "exhausted": False}).raise_for_status()
    provider.create(spec("sl-other", deployment="dep2"))
    owned = provider.list_owned("dep1")  # page_size=2: three pages
    assert sorted(i.provider_id for i in owned) == ["sl-own-b", "sl-own0", "sl-own1", "sl-own2"]
    assert {i.zone for i in owned} == {ZA, ZB}
    assert [i.provider_id for i in provider.list_owned("dep2")] == ["sl-other"]
    fresh = GceProvider(P, (ZA,), endpoint=provider.endpoint)
    found = fresh.get("sl-own-b")  # zone unknown to this instance: found through aggregatedList
    assert found and found.zone == ZB
    assert fresh.find("sl-own1") is not None and fresh.find("sl-nope") is None


def test_transient_errors_are_retried_and_bounded(provider: GceProvider, control: httpx.Client, fake: ComputeFake) -> None:
    control.post("/_control/faults", json={"operation": "instances.insert", "count": 2, "status": 503}).raise_for_status()
    assert provider.create(spec("sl-retry")).status is ProviderStatus.RUNNING
    assert len(fake.model.list(P, None)) == 1
    control.post("/_control/faults", json={"operation": "instances.aggregatedList", "count": 50, "status": 429}).raise_for_status()
    with pytest.raises(ProviderTransient):
        provider.list_owned("dep1")
    calls = control.get("/_control/faults").json()["calls"]["instances.aggregatedList"]
    control.delete("/_control/faults").raise_for_status()
    assert provider.list_owned("dep1")
    assert 4 <= calls <= 40  # bounded: our attempts x the client's own retries


def test_bad_requests_are_permanent(provider: GceProvider) -> None:
    with pytest.raises(ProviderPermanent, match="Machine type"):
        provider.create(spec("sl-badtype", machine_type="e2-imaginary"))
    with pytest.raises(ProviderPermanent, match="minimum"):
        provider.create(spec("sl-short", max_run_s=10))


def test_deadline_deletes_vm_and_process(provider: GceProvider, control: httpx.Client) -> None:
    control.post("/_control/clock", json={"time_scale": 60}).raise_for_status()
    provider.create(spec("sl-deadline", max_run_s=60))
    pid = inspect(control, "sl-deadline")["pid"]
    assert psutil.pid_exists(pid)
    wait_until(lambda: provider.get("sl-deadline") is None, timeout=15, what="VM deleted at maxRunDuration")
    wait_until(lambda: pid_gone(pid), timeout=5, what="VM process gone")


def test_preemption_is_seen_by_the_agent_then_vm_deleted(provider: GceProvider, receiver: Receiver, control: httpx.Client) -> None:
    control.post("/_control/clock", json={"time_scale": 15}).raise_for_status()  # 30 s notice = 2 s
    provider.create(spec("sl-preempt", receiver))
    pid = inspect(control, "sl-preempt")["pid"]
    wait_until(lambda: receiver.beats, what="first heartbeat")
    assert not receiver.beats[-1][1]["preempted"]
    control.post(f"/_control/instances/{ZA}/sl-preempt/preempt").raise_for_status()
    wait_until(lambda: any(b["preempted"] for _, b in receiver.beats), timeout=5, what="preempted heartbeat")
    wait_until(lambda: provider.get("sl-preempt") is None, timeout=10, what="deleted after notice")
    wait_until(lambda: pid_gone(pid), timeout=5, what="process gone")


def test_agent_exits_when_told_to_stop(provider: GceProvider, receiver: Receiver, control: httpx.Client, fake: ComputeFake) -> None:
    receiver.action = "stop"
    provider.create(spec("sl-told", receiver))
    info = inspect(control, "sl-told")
    proc = fake.model.get(P, ZA, "sl-told").proc
    assert proc is not None
    # The VM runs its startup script; the shim's systemctl starts the unit (the bootstrap, which execs the
    # agent: no package pinned) with its output in the VM's journal. The VM itself keeps running.
    journal = Path(info["workdir"]) / "root/var/log/journal/spotleash-agent.service.log"

    def agent_procs() -> list[psutil.Process]:
        out = []
        for p in psutil.process_iter(["cmdline"]):
            try:
                if os.getpgid(p.pid) == proc.pid and "spotleash.instance_agent" in " ".join(p.info["cmdline"] or []):
                    out.append(p)
            except (ProcessLookupError, psutil.Error):
                continue
        return out

    wait_until(lambda: journal.exists() and "told to stop" in journal.read_text(), timeout=20, what="agent told")
    wait_until(lambda: not agent_procs(), timeout=10, what="agent exit")
    assert proc.exited_early() is None, "the VM outlives its agent, as a real one does"
    assert "spotleash-agent.service" in open(info["log_path"]).read()
