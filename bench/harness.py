"""What every measurement needs on the running local stack: settings, store, Pub/Sub, the fakes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from google.cloud import pubsub_v1

from spotleash.adapters.firestore import FirestoreStore
from spotleash.config import Settings, load_settings
from spotleash.demo.run import trace_args
from spotleash.log import get_logger
from spotleash.model import ENDED, InstanceRecord, State
from spotleash.providers import build_provider
from spotleash.providers.base import Provider
from spotleash.services.context import Context
from spotleash.topology import load_topology
from spotleash.wire.events import Event

log = get_logger("bench")


class Harness:
    """Acts only through real interfaces: Pub/Sub publishes, Firestore reads, official clients, control APIs."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.settings: Settings = load_settings()
        self.store = FirestoreStore.from_settings(self.settings)
        self.ctx = Context(settings=self.settings, store=self.store)
        self.publisher = pubsub_v1.PublisherClient()
        self.compute_url = os.environ["SPOTLEASH_COMPUTE_ENDPOINT"]
        self.http = httpx.Client(timeout=30)
        self._gce: Provider | None = None
        self.agents: list[subprocess.Popen[bytes]] = []

    def close(self) -> None:
        for p in self.agents:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
        self.publisher.stop()
        self.http.close()

    @property
    def gce(self) -> Provider:
        if self._gce is None:
            self._gce = build_provider("gce", self.settings)
        return self._gce

    # ---- Pub/Sub
    def publish(self, event: Event) -> None:
        topic = self.publisher.topic_path(self.settings.project, load_topology().topic_of(event.KIND))
        self.publisher.publish(topic, event.to_bytes()).result(timeout=10)

    # ---- the compute fake's call log
    def insert_received_at(self, name: str, since: float) -> float | None:
        """Wall-clock time at which the Compute fake received the insert of ``name`` (None: not yet)."""
        r = self.http.get(f"{self.compute_url}/_control/calls", params={"since": f"{since:.6f}"})
        r.raise_for_status()
        for c in r.json()["calls"]:
            if c["operation"] == "instances.insert" and c["name"] == name:
                return float(c["at"])
        return None

    def call_times(self, name: str, since: float) -> dict[str, float]:
        """Wall-clock time of the first call of each operation on ``name`` since ``since``, from the Compute
        fake's call log (``vm.deleted``: when the fake had ended the VM's processes and forgotten it)."""
        r = self.http.get(f"{self.compute_url}/_control/calls", params={"since": f"{since:.6f}"})
        r.raise_for_status()
        first: dict[str, float] = {}
        for c in r.json()["calls"]:
            if c["name"] == name:
                first.setdefault(str(c["operation"]), float(c["at"]))
        return first

    def vm_names(self) -> set[str]:
        r = self.http.get(f"{self.compute_url}/_control/instances")
        r.raise_for_status()
        return {str(v["name"]) for v in r.json()["instances"]}

    # ---- Firestore
    def latest_of_lease(self, lease_id: str) -> InstanceRecord | None:
        recs = self.store.instances_of_lease(lease_id, live_only=False)
        return max(recs, key=lambda r: r.created_at) if recs else None

    def ready(self, lease_id: str) -> InstanceRecord | None:
        rec = self.latest_of_lease(lease_id)
        return rec if rec is not None and rec.state == State.READY else None

    def ended_and_gone(self, instance_id: str) -> InstanceRecord | None:
        """The record ended *and* the provider's get() confirms the instance no longer exists."""
        rec = self.store.get(instance_id)
        if rec is None or rec.state not in ENDED:
            return None
        if rec.provider_id is not None and self.gce.get(rec.provider_id) is not None:
            return None
        return rec

    # ---- agents
    def start_agent(self, lease_id: str, *, speed: float, extra_env: dict[str, str] | None = None,
                    drop_env: tuple[str, ...] = ()) -> tuple[subprocess.Popen[bytes], Path]:
        env = {k: v for k, v in os.environ.items() if k not in drop_env}
        env.update({"SPOTLEASH_STATE_DIR": str(self.work_dir / "agent-state"), "PYTHONUNBUFFERED": "1"})
        env.update(extra_env or {})
        log_path = self.work_dir / f"agent-{lease_id}.log"
        with log_path.open("ab") as out:
            p = subprocess.Popen(
                [sys.executable, "-m", "spotleash.agent", "--lease-id", lease_id, *trace_args(str(speed))],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.agents.append(p)
        return p, log_path

    def stop_agent(self, p: subprocess.Popen[bytes], timeout_s: float = 20) -> int | None:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                return p.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        return p.wait(timeout=10)


def wall() -> float:
    return time.time()


def as_json(value: Any) -> Any:
    """Round floats for the results file."""
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [as_json(v) for v in value]
    return value
