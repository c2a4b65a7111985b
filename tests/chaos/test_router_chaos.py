"""The router under a steady request stream while its remote instance is preempted, killed or frozen.

A real agent with the example app's spotleash.toml (its router on two route ports, the local copies
running here) demands an instance; the Compute fake VM runs the published package and its TLS front;
traffic shifts to it. Then, with GETs flowing through the router from a thread, the instance is
preempted (the Compute fake's control API), SIGKILLed (every process of the VM and its components),
frozen (SIGSTOP of all of them) or slowed (all of them stopped and continued in turns, ``Slowdown``:
mostly pauses the router waits out — a probe may time out, never two in a row — and two long enough for
its probes to give up on the remote). Verdict: not one GET failed (each was answered by one copy or the
other); a killed, frozen or preempted remote leaves traffic on the local copies, a slowed one took
traffic back after each long pause and has it once it runs at full speed again; after the agent's SIGTERM nothing is left at the provider and every record
ended with a reason (``Chaos.verdict``).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import psutil
import pytest
from tests.chaos.conftest import REAP_BOUND, SEEDS, Chaos, ChaosStack, new_lease, observed
from tests.e2e.packaged import MARKER, packages_on

from local_emulator import procs
from local_emulator.routed_app import RoutedApp
from spotleash.model import ENDED, InstanceRecord, State
from spotleash.polling import wait_until

pytestmark = [pytest.mark.chaos]

FAULTS = ("preempted", "killed", "frozen", "slowed")
SHORT_PAUSES, LONG_PAUSES = 10, 2
READY_TIMEOUT_S = 240.0


@pytest.fixture(scope="module")
def packages(chaos_stack: ChaosStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The example app published on the chaos stack and its launchers told the bucket (undone after)."""
    saved = dict(os.environ)
    os.environ.update(chaos_stack.env)
    try:
        with packages_on(chaos_stack.state_dir, tmp_path_factory.mktemp("chaos-publish")):
            yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _instance_processes(chaos: Chaos, rec: InstanceRecord) -> list[psutil.Process]:
    vm = chaos.vm(rec.provider_id or "")
    assert vm is not None and vm["pid"]
    group = os.getpgid(int(vm["pid"]))
    members = [p for p in psutil.process_iter() if _pgid(p) == group]
    return members + procs.find_marked(MARKER, rec.instance_id)


def _pgid(p: psutil.Process) -> int | None:
    try:
        return os.getpgid(p.pid)
    except OSError:
        return None


def _signal_all(ps: list[psutil.Process], sig: int) -> None:
    for p in ps:
        with suppress(psutil.Error):
            p.send_signal(sig)


class Slowdown:
    """Every process of the instance stopped and continued in turns, running 0.3–0.6 s between pauses: ten
    of 0.3–2.5 s (the router probes every 1 s with a 2 s timeout, again 0.2 s after a failure, and drops a
    target after two failures in a row — 4.2 s of silence at the least — so it waits these out) and two of 7 s (two probes fail: the router drops the remote, then takes
    it back), in a seeded order. Ends with every process continued."""

    def __init__(self, ps: list[psutil.Process], rng: random.Random) -> None:
        self.ps, self.rng = ps, rng
        self.paused_s = 0.0
        self.done = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slowdown", daemon=True)

    def _run(self) -> None:
        try:
            pauses = [self.rng.uniform(0.3, 2.5) for _ in range(SHORT_PAUSES)] + [7.0] * LONG_PAUSES
            self.rng.shuffle(pauses)
            for pause in pauses:
                if self._stop.is_set():
                    return
                _signal_all(self.ps, signal.SIGSTOP)
                self._stop.wait(pause)
                _signal_all(self.ps, signal.SIGCONT)
                self.paused_s += pause
                self._stop.wait(self.rng.uniform(0.3, 0.6))
        finally:
            _signal_all(self.ps, signal.SIGCONT)
            self.done.set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("seed", SEEDS)
def test_requests_through_the_router_survive_the_remote_instance_going_away(
        chaos: Chaos, packages: None, tmp_path: Path, fault: str, seed: int) -> None:
    scenario = f"router: remote instance {fault} under traffic"
    lid = new_lease(f"rt{fault[:3]}")
    app = RoutedApp(lease_id=lid, work=tmp_path)
    frozen: list[psutil.Process] = []  # stopped at some point: continued whatever happens
    slow: Slowdown | None = None
    try:
        with observed(chaos) as obs:
            app.start(budget_s=5.0)
            rec = wait_until(lambda: next((r for r in chaos.records_of(lid) if r.state == State.READY), None),
                             timeout_s=READY_TIMEOUT_S, interval_s=0.5, what=f"a READY instance of {lid}")
            app.wait_served_by(rec.instance_id)
            with app.load() as traffic:
                traffic.wait_requests(20)
                time.sleep(random.Random(seed).uniform(0, 1))
                t_fault = time.monotonic()
                if fault == "preempted":
                    chaos.compute("POST", f"instances/{rec.zone}/{rec.provider_id}/preempt")
                elif fault == "killed":
                    _signal_all(_instance_processes(chaos, rec), signal.SIGKILL)
                elif fault == "frozen":
                    frozen = _instance_processes(chaos, rec)
                    _signal_all(frozen, signal.SIGSTOP)
                else:
                    frozen = _instance_processes(chaos, rec)
                    slow = Slowdown(frozen, random.Random(seed))
                    remote_before = traffic.served[rec.instance_id]
                    slow.start()
                if slow is None:
                    app.wait_served_by("local", timeout_s=60)
                else:  # once it runs at full speed again, the remote serves again
                    assert slow.done.wait(SHORT_PAUSES * 3.1 + LONG_PAUSES * 7.6 + 10), "the slowdown ended"
                    slowed_remote = traffic.served[rec.instance_id] - remote_before
                    app.wait_served_by(rec.instance_id, timeout_s=60)
                traffic.wait_requests(20)
            assert traffic.failures == [], f"{scenario}: {traffic.failures[:5]}"
            assert traffic.served[rec.instance_id] and traffic.served["local"]
            totals = app.routes()["totals"]  # the router's own count, every request it took
            assert totals["failed"] == 0, totals
            if fault == "frozen":  # a GET was waiting on the frozen copy: retried when the probes gave up on it
                assert app.logged("target stopped answering; closing its connections without a drain"), fault
                assert totals["retried"] >= 1, totals
            note = (f"{totals['total']} requests through the router, {totals['retried']} retried, "
                    f"{totals['failed']} failed")
            if slow is not None:
                note += (f"; {SHORT_PAUSES + LONG_PAUSES} pauses ({slow.paused_s:.1f} s in all), {slowed_remote} "
                         f"requests served remotely meanwhile, {traffic.served['local']} locally")
            assert app.agent is not None
            app.agent.send_signal(signal.SIGTERM)
            assert app.agent.wait(timeout=30) == 0, "the release was confirmed"
            _signal_all(frozen, signal.SIGCONT)
            chaos.verdict(scenario, obs, [lid], t_fault=t_fault, bound_s=REAP_BOUND + 30, min_seen=1, note=note)
        ended: dict[str, Any] = {r.instance_id: (r.state, r.reason) for r in chaos.records_of(lid)}
        assert all(state in ENDED for state, _ in ended.values()), ended
        print(scenario, note, ended)
    finally:
        if slow is not None:
            slow.stop()
        _signal_all(frozen, signal.SIGCONT)
        app.stop()
