"""Chaos fixtures: a stack of our own (scenarios kill parts of it), an observer of every instance the
fakes ever hold, the end-of-scenario verdict, and the summary in bench/results/tmp/chaos.json.

The verdict of every scenario (``Chaos.verdict``), within its bound:
- the fakes' control APIs hold no instance the scenario made, and neither do the providers'
  ``list_owned`` (Google's official compute client / the vastai SDK's REST paths);
- every instance the fakes ever held during the scenario maps to a Firestore record in a terminal
  state with a non-empty reason (or, when the records were lost with the Firestore emulator, to the
  orphan sweep's audit entry with its reason);
- every record of the scenario's leases ended, with a reason.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.chaos.report import LAST_RUN
from tests.conftest import FAST_FAKE_ARGS, FAST_TIMINGS, REAP_PERIOD_S, TEST_PROJECT
from tests.e2e.flows import Flows

from spotleash.model import ENDED, InstanceRecord
from spotleash.polling import WaitTimeout, wait_until
from spotleash.providers import build_provider
from spotleash.providers.base import LABEL_INSTANCE, LABEL_LEASE

REPO = Path(__file__).resolve().parents[2]
# untracked; `python -m tests.chaos.report --publish` makes it the quoted figures. A lane of `make chaos` writes its own
# (scripts/test_lanes.sh), merged into LAST_RUN after both.
RESULTS_FILE = Path(os.environ.get("SPOTLEASH_CHAOS_RESULTS_FILE") or LAST_RUN)
RUNS = max(1, int(os.environ.get("SPOTLEASH_CHAOS_RUNS", "1")))
SEEDS = list(range(RUNS))
LEASE_TTL = float(FAST_TIMINGS["SPOTLEASH_LEASE_TTL_S"])
# The chaos stack keeps production's ratio of heartbeat timeout to reap period (180 s to 60 s): the reaper
# sees a provider's stop (an outbid) before the silence it causes reaches the timeout, and names it
# ``stopped_at_provider`` rather than ``heartbeat_lost``. Both fail over now, and the reaper ranks the
# provider's verdict above silence; the ratio still keeps the recorded reason the outbid's own.
HB_TIMEOUT = 3 * REAP_PERIOD_S
PROVISIONING_TIMEOUT = float(FAST_TIMINGS["SPOTLEASH_PROVISIONING_TIMEOUT_S"])
SLACK = 30.0  # function cold paths, deletes and their confirmation on a loaded 2-core machine
# A dead lease or an unrecorded VM: expiry (or grace) + one reap period + the delete itself.
REAP_BOUND = LEASE_TTL + REAP_PERIOD_S + SLACK
# A record stuck in PROVISIONING is failed by the reaper after the provisioning timeout.
PENDING_BOUND = PROVISIONING_TIMEOUT + REAP_PERIOD_S + SLACK

# scenario -> {"runs", "orphans_left", "records_lost", "worst_cleanup_s", "failed_runs", "notes"}
RESULTS: dict[str, dict[str, Any]] = {}
_RESULTS_LOCK = threading.Lock()
_PROVIDERS: dict[str, Any] = {}  # one chaos stack per session: its providers are built once


def new_lease(tag: str) -> str:
    return f"c{tag[:8]}-{uuid.uuid4().hex[:8]}"


# ------------------------------------------------------------------ the stack of our own
@dataclass
class ChaosStack:
    state_dir: Path
    env: dict[str, str]
    urls: dict[str, str]

    def restart(self, part: str) -> None:
        from local_emulator import stack

        stack.restart(self.state_dir, part)

    def kill(self, part: str) -> None:
        """SIGKILL the part's whole process group: a crash. (``stack.kill_part`` stops gracefully, SIGTERM
        first, and functions-framework's gunicorn finishes the request in flight within that grace: an
        on_reap "killed" 4.3 s into a slow delete still recorded the instance TERMINATED.)"""
        from local_emulator import stack

        pid = next(p.pid for p in stack.status(self.state_dir).parts if p.name == part)
        with suppress(ProcessLookupError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)


@pytest.fixture(scope="session")
def chaos_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosStack]:
    from local_emulator import stack

    state_dir = tmp_path_factory.mktemp("chaos-stack")
    saved = dict(os.environ)
    try:
        # GPUs as bids (spot), so VAST's outbid and failed-bid paths are reachable.
        info = stack.up(state_dir, overrides={"SPOTLEASH_PROJECT": TEST_PROJECT, "SPOTLEASH_VAST_INTERRUPTIBLE": "true",
                                              **FAST_TIMINGS, "SPOTLEASH_HEARTBEAT_TIMEOUT_S": str(HB_TIMEOUT)},
                        fake_args=FAST_FAKE_ARGS)
        env = stack.read_env(state_dir)
        env["SPOTLEASH_STATE_DIR"] = str(state_dir)
        yield ChaosStack(state_dir, env, {n: info.url_of(n) for n in
                                          ("on_demand", "on_release", "on_lease", "on_reap", "on_budget",
                                           "on_heartbeat")})
    finally:
        for p in _PROVIDERS.values():
            with suppress(Exception):
                p.close()
        _PROVIDERS.clear()
        os.environ.clear()
        os.environ.update(saved)
        stack.down(state_dir)


# ------------------------------------------------------------------ observing the fakes
@dataclass
class Seen:
    provider: str
    provider_id: str
    labels: dict[str, str]
    first_s: float
    last_s: float


class Observer:
    """Polls both fakes' control APIs and remembers every instance they ever hold."""

    def __init__(self, compute_url: str, vast_url: str, period_s: float = 0.15) -> None:
        self.compute_url, self.vast_url, self.period_s = compute_url, vast_url, period_s
        self.seen: dict[tuple[str, str], Seen] = {}
        self.before: set[tuple[str, str]] = set()
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="chaos-observer", daemon=True)
        self._client = httpx.Client(timeout=5)

    def current(self) -> list[tuple[str, str, dict[str, str]]]:
        from spotleash.providers.vast import parse_label

        out: list[tuple[str, str, dict[str, str]]] = []
        for v in self._client.get(f"{self.compute_url}/_control/instances").json()["instances"]:
            out.append(("gce", str(v["name"]), dict(v.get("labels") or {})))
        for v in self._client.get(f"{self.vast_url}/_control/inspect").json()["instances"]:
            out.append(("vast", str(v["id"]), parse_label(v.get("label"))))
        return out

    def poll(self) -> list[tuple[str, str, dict[str, str]]]:
        now = time.monotonic()
        cur = self.current()
        for provider, pid, labels in cur:
            if (provider, pid) in self.before:
                continue
            s = self.seen.get((provider, pid))
            if s is None:
                self.seen[(provider, pid)] = Seen(provider, pid, labels, now, now)
            else:
                s.last_s = now
                s.labels = labels or s.labels
        return cur

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except (httpx.HTTPError, ValueError, KeyError):
                self.errors += 1
            self._stop.wait(self.period_s)

    def __enter__(self) -> Observer:
        self.poll()  # what exists before the scenario is not the scenario's
        self.before = set(self.seen)
        self.seen = {}
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._client.close()


# ------------------------------------------------------------------ the verdict
@dataclass
class Verdict:
    orphans: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    open_records: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.orphans and not self.lost and not self.open_records

    def __str__(self) -> str:
        return f"orphans={self.orphans} records_lost={self.lost} open_records={self.open_records}"


class Chaos(Flows):
    """Flows plus the chaos tools: the stack's parts, both fakes, the observer and the verdict."""

    def __init__(self, cs: ChaosStack) -> None:
        super().__init__()
        self.cs = cs
        self.vast_url = os.environ["SPOTLEASH_VAST_URL"]

    def provider(self, name: str) -> Any:
        """The provider through its official client, built once (building GCE's is slow on a loaded box)."""
        if name not in _PROVIDERS:
            _PROVIDERS[name] = build_provider(name, self.settings)
        return _PROVIDERS[name]

    # ---- the VAST fake
    def vast(self, verb: str, route: str, /, **body: Any) -> Any:
        r = httpx.request(verb, f"{self.vast_url}/_control/{route}", json=body or None, timeout=30)
        r.raise_for_status()
        return r.json()

    def vast_instances(self) -> list[dict[str, Any]]:
        return list(self.vast("GET", "inspect")["instances"])

    def pending_faults(self) -> list[dict[str, Any]]:
        """Injected faults not yet triggered, in both fakes (a scenario whose fault never fired proves nothing)."""
        return [{"fake": fake, **rule} for fake, control in (("compute", self.compute), ("vast", self.vast))
                for rule in control("GET", "faults")["rules"] if rule["left"] > 0]

    def faults_left(self) -> int:
        return sum(int(f["left"]) for f in self.pending_faults())

    def wait_faults_fired(self, what: str, timeout_s: float = 30) -> None:
        """Every injected fault has fired (the reaper's listings take the "*" ones within a reap or two).
        On a timeout the message names the faults that never fired."""
        try:
            wait_until(lambda: self.faults_left() == 0, timeout_s=timeout_s, interval_s=0.25, what=what)
        except WaitTimeout as e:
            raise WaitTimeout(f"{e}; never fired: {self.pending_faults()}") from e

    def clear_faults(self) -> None:
        self.compute("DELETE", "faults")
        self.vast("DELETE", "faults")

    # ---- pushing straight to a function (what the Pub/Sub emulator's push does)
    def push(self, function: str, kind: str, data: bytes, *, timeout: float = 30) -> int:
        """POST a Pub/Sub push body to a function, as the emulator's push subscription does."""
        import base64

        from spotleash.topology import load_topology

        mid = uuid.uuid4().hex
        body = {"message": {"data": base64.b64encode(data).decode(), "messageId": mid,
                            "publishTime": datetime.now(UTC).isoformat().replace("+00:00", "Z")},
                "subscription": f"projects/{self.project}/subscriptions/chaos"}
        url = f"{self.cs.urls[function]}projects/{self.project}/topics/{load_topology().topic_of(kind)}"
        return httpx.post(url, json=body, timeout=timeout).status_code

    # ---- the verdict
    def _record_for(self, s: Seen) -> InstanceRecord | None:
        iid = s.labels.get(LABEL_INSTANCE)
        rec = self.store.get(iid) if iid else (self.store.get(s.provider_id) if s.provider == "gce" else None)
        if rec is None and s.labels.get(LABEL_LEASE):
            rec = next((r for r in self.records_of(s.labels[LABEL_LEASE]) if r.provider_id == s.provider_id), None)
        return rec

    def _orphan_audit(self, s: Seen) -> bool:
        iid = s.labels.get(LABEL_INSTANCE) or s.provider_id
        return any(e.get("action") == "reap" and e.get("reason") for e in self.store.audit_entries(iid))

    def judge(self, obs: Observer, leases: list[str], *, lost_records_ok: bool = False) -> Verdict:
        v = Verdict()
        current = obs.poll()
        mine = set(leases)
        for provider, pid, labels in current:
            if (provider, pid) in obs.seen or labels.get(LABEL_LEASE) in mine:
                v.orphans.append(f"{provider}:{pid}")
        for provider in ("gce", "vast"):
            owned = self.provider(provider).list_owned(self.settings.deployment_id)
            for p in owned:
                if p.labels.get(LABEL_LEASE) in mine or (provider, p.provider_id) in obs.seen:
                    tag = f"{provider}:{p.provider_id}"
                    if tag not in v.orphans:
                        v.orphans.append(tag)
        for s in obs.seen.values():
            rec = self._record_for(s)
            if rec is not None and rec.state in ENDED and rec.reason:
                continue
            if rec is None and lost_records_ok and self._orphan_audit(s):
                continue
            if rec is None:
                v.lost.append(f"{s.provider}:{s.provider_id}")
            else:
                v.open_records.append(f"{rec.instance_id}:{rec.state}")
        for lid in leases:
            for r in self.records_of(lid):
                if r.state not in ENDED or not r.reason:
                    tag = f"{r.instance_id}:{r.state}"
                    if tag not in v.open_records:
                        v.open_records.append(tag)
        return v

    def verdict(self, scenario: str, obs: Observer, leases: list[str], *, t_fault: float, bound_s: float,
                lost_records_ok: bool = False, min_seen: int = 0, note: str = "") -> Verdict:
        """Wait (up to ``bound_s`` after ``t_fault``) for a clean verdict; record the run; fail if unclean."""
        last: list[Verdict] = []

        def clean() -> Verdict | None:
            v = self.judge(obs, leases, lost_records_ok=lost_records_ok)
            last[:] = [v]
            return v if v.clean else None

        remaining = max(1.0, bound_s - (time.monotonic() - t_fault))
        try:
            v = wait_until(clean, timeout_s=remaining, interval_s=0.5, what=f"{scenario}: nothing left, all recorded")
        except Exception:  # noqa: BLE001 - the verdict is recorded either way, then the test fails below
            v = last[0] if last else Verdict(orphans=["<no verdict>"])
        took = time.monotonic() - t_fault
        lost = len(v.lost)
        if lost_records_ok:  # records lost with the emulator but covered by the sweep's audit
            lost += sum(1 for s in obs.seen.values() if self._record_for(s) is None)
        _record(scenario, orphans=len(v.orphans), lost=len(v.lost), took=took, ok=v.clean, note=note,
                instance_records_lost=lost if lost_records_ok else None, seen=len(obs.seen))
        assert v.clean, f"{scenario}: not clean {took:.1f}s after the fault (bound {bound_s:.0f}s): {v}"
        assert len(obs.seen) >= min_seen, f"{scenario}: expected >= {min_seen} instance(s), saw {len(obs.seen)}"
        return v


def _record(scenario: str, *, orphans: int, lost: int, took: float, ok: bool, note: str,
            instance_records_lost: int | None, seen: int) -> None:
    with _RESULTS_LOCK:
        r = RESULTS.setdefault(scenario, {"runs": 0, "orphans_left": 0, "records_lost": 0, "worst_cleanup_s": 0.0,
                                          "failed_runs": 0, "instances_seen": 0})
        r["runs"] += 1
        r["orphans_left"] += orphans
        r["records_lost"] += lost
        r["instances_seen"] += seen
        r["worst_cleanup_s"] = round(max(r["worst_cleanup_s"], took), 2)
        r["failed_runs"] += 0 if ok else 1
        if instance_records_lost is not None:
            r["instance_records_lost_with_emulator"] = r.get("instance_records_lost_with_emulator", 0) + \
                instance_records_lost
        if note:
            r["note"] = note


@pytest.fixture
def chaos(chaos_stack: ChaosStack, monkeypatch: pytest.MonkeyPatch) -> Iterator[Chaos]:
    """Clients pointed at the chaos stack for this test; faults cleared before and after."""
    for k in [k for k in os.environ if k.startswith("SPOTLEASH_")]:
        monkeypatch.delenv(k)
    for k, val in chaos_stack.env.items():
        monkeypatch.setenv(k, val)
    c = Chaos(chaos_stack)
    c.provider("gce"), c.provider("vast")  # warm: not part of any clean-up time
    c.clear_faults()
    c.compute("POST", "config", boot_delay_s=0.5)
    try:
        yield c
    finally:
        with suppress(httpx.HTTPError):
            c.clear_faults()
            c.compute("POST", "config", boot_delay_s=0.5)
        with suppress(Exception):
            c.publisher.stop()


@contextmanager
def observed(chaos: Chaos) -> Iterator[Observer]:
    with Observer(chaos.compute_url, chaos.vast_url) as obs:
        yield obs


# ------------------------------------------------------------------ the summary
def _machine() -> dict[str, Any]:
    return {"arch": platform.machine(), "cores": os.cpu_count(), "python": platform.python_version(),
            "system": platform.system(), "uname_m": subprocess.run(["uname", "-m"], capture_output=True,
                                                                    text=True, check=False).stdout.strip()}


FAILED_TESTS: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.failed and "tests/chaos/" in report.nodeid:
        FAILED_TESTS.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:  # noqa: ARG001
    if not RESULTS:
        return
    out = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
        "runs_per_scenario": RUNS,
        "bounds_s": {"reap": REAP_BOUND, "pending": PENDING_BOUND, "reap_period": REAP_PERIOD_S,
                     "heartbeat_timeout": HB_TIMEOUT},
        "command": " ".join(sys.argv[-3:]),
        "scenarios": dict(sorted(RESULTS.items())),
        # a test that failed before its verdict has no row above: it is listed here
        "failed_tests": FAILED_TESTS,
        "totals": {"runs": sum(r["runs"] for r in RESULTS.values()),
                   "orphans_left": sum(r["orphans_left"] for r in RESULTS.values()),
                   "records_lost": sum(r["records_lost"] for r in RESULTS.values())},
    }
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(out, indent=2) + "\n")
