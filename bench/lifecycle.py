"""Latency benchmarks on the local stack: demand → create, SIGTERM → deleted, SIGKILL → deleted.

Each is compared with a baseline measured in the same run: the same provider verb called directly
(no Pub/Sub, no function, no Firestore), so the ratio is spotleash's control-plane overhead.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from bench.harness import Harness, log
from bench.stats import ratio, summary
from spotleash.model import State, instance_id_for, new_record
from spotleash.polling import WaitTimeout, wait_until
from spotleash.providers.base import LaunchSpec, ProviderStatus
from spotleash.services.launch import build_spec
from spotleash.services.terminate import confirm_gone
from spotleash.wire.events import Component, DemandEvent, LeaseEvent, ReleaseEvent

SETTLED = {State.RUNNING, State.READY, State.FAILED, State.TERMINATED}
BASELINE_DEPLOYMENT = "bench-baseline"  # the stack's reaper (deployment "default") never sees these VMs


def _short() -> str:
    return uuid.uuid4().hex[:8]


# ------------------------------------------------------------------ 1. demand → provider create call
def demand_to_create(h: Harness, n: int, warmup: int = 2) -> dict[str, Any]:
    """Publish a DemandEvent; time until the Compute fake receives the insert for its instance."""
    samples: list[float] = []
    failures: list[str] = []
    releasing: list[str] = []
    phases: list[dict[str, float]] = []
    for i in range(warmup + n):
        lid = f"bench-launch-{_short()}"
        h.publish(LeaseEvent(lease_id=lid, ttl_s=h.settings.lease_ttl_s, holder="bench"))
        event = DemandEvent(lease_id=lid, trigger="threshold", ram_percent=91.0,
                            components=[Component(name="vision", ram_gb=8.0)])
        iid = instance_id_for(event.event_id)
        t0 = time.time()
        h.publish(event)
        try:
            at = wait_until(lambda iid=iid, t0=t0: h.insert_received_at(iid, t0 - 1), timeout_s=60,
                            interval_s=0.005, what=f"the insert of {iid}")
        except WaitTimeout as e:
            failures.append(str(e))
            h.publish(ReleaseEvent(lease_id=lid, reason="bench: measured"))
            continue
        # Release only once the launch has finished: a release racing the launch makes the launcher
        # retry "created but not visible yet" for launch_retry_s, which would stall the next demand.
        try:
            wait_until(lambda iid=iid: (r := h.store.get(iid)) is not None and r.state in SETTLED, timeout_s=60,
                       interval_s=0.05, what=f"the launch of {iid} to finish")
        except WaitTimeout as e:
            failures.append(str(e))
        settled = time.time()
        h.publish(ReleaseEvent(lease_id=lid, reason="bench: measured"))
        phases.append({"insert_ms": round((at - t0) * 1000, 1), "settled_ms": round((settled - t0) * 1000, 1)})
        if i >= warmup:
            samples.append((at - t0) * 1000)
        # The next launch overlaps this one's deletion, but at most one deletion is in flight, so VM
        # processes do not pile up on a 2-core machine.
        releasing.append(iid)
        while len(releasing) > 1:
            old = releasing.pop(0)
            try:
                wait_until(lambda old=old: h.ended_and_gone(old), timeout_s=60, interval_s=0.1, what=f"{old} deleted")
            except WaitTimeout as e:
                failures.append(str(e))
        phases[-1]["cycle_ms"] = round((time.time() - t0) * 1000, 1)
        log.info("bench launch", i=i, ms=round((at - t0) * 1000, 1), warmup=i < warmup)
    for old in releasing:
        try:
            wait_until(lambda old=old: h.ended_and_gone(old), timeout_s=60, interval_s=0.1, what=f"{old} deleted")
        except WaitTimeout as e:
            failures.append(str(e))
    return {"summary": summary(samples), "warmup": warmup, "failures": failures, "per_launch": phases}


def _baseline_spec(h: Harness) -> LaunchSpec:
    now = datetime.now(UTC)
    iid = instance_id_for(f"bench-base-{_short()}")
    rec = new_record(instance_id=iid, lease_id="bench-baseline", deployment_id=BASELINE_DEPLOYMENT,
                     event_id=f"bench-base-{iid}", provider="gce", now=now, max_runtime_s=3600)
    return build_spec(h.ctx, rec, h.settings.machine_type, now)


def direct_create(h: Harness, n: int, warmup: int = 1) -> dict[str, Any]:
    """Baseline: GceProvider.create() called directly; time until the fake receives the insert."""
    samples: list[float] = []
    for i in range(warmup + n):
        spec = _baseline_spec(h)
        t0 = time.time()
        made = h.gce.create(spec)
        at = wait_until(lambda s=spec, t0=t0: h.insert_received_at(s.instance_id, t0 - 1), timeout_s=10,
                        interval_s=0.01, what="the baseline insert")
        if i >= warmup:
            samples.append((at - t0) * 1000)
        h.gce.delete(made.provider_id)
        confirm_gone(h.gce, made.provider_id, 30)
    return {"summary": summary(samples), "warmup": warmup}


# ------------------------------------------------------------------ 2./3. signal → confirmed deleted
def signal_to_deleted(h: Harness, n: int, sig: signal.Signals, timeout_s: float) -> dict[str, Any]:
    """A real agent replays the demo trace until its VM is READY; then ``sig``; time until deleted."""
    samples: list[float] = []
    runs: list[dict[str, Any]] = []
    _ = h.gce  # the Compute client is built before the clock runs (its first build took seconds in a timed run)
    for _ in range(n):
        lid = f"bench-{sig.name.lower()}-{_short()}"
        proc, _log_path = h.start_agent(lid, speed=10.0)
        try:
            rec = wait_until(lambda lid=lid: h.ready(lid), timeout_s=120, interval_s=0.1,
                             what=f"a READY instance of {lid}")
        except WaitTimeout as e:  # no sample, but the others are kept (a loaded machine can boot a VM slowly)
            runs.append({"lease_id": lid, "error": str(e)})
            h.stop_agent(proc)
            continue
        t0, w0 = time.monotonic(), time.time()
        if sig == signal.SIGKILL:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            os.kill(proc.pid, sig)
        try:
            final = wait_until(lambda rec=rec: h.ended_and_gone(rec.instance_id), timeout_s=timeout_s,
                               interval_s=0.05, what=f"{rec.instance_id} deleted")
        except WaitTimeout as e:
            runs.append({"lease_id": lid, "instance_id": rec.instance_id, "error": str(e)})
            h.stop_agent(proc)
            continue
        dt = time.monotonic() - t0
        samples.append(dt)
        rc = h.stop_agent(proc)
        runs.append({"lease_id": lid, "instance_id": rec.instance_id, "seconds": dt, "reason": final.reason,
                     "agent_exit": rc, **_phases(h, rec.provider_id or rec.instance_id, w0)})
        log.info("bench signal → deleted", signal=sig.name, seconds=round(dt, 3), reason=final.reason)
    return {"summary": summary(samples), "runs": runs}


def _phases(h: Harness, name: str, signalled_at: float) -> dict[str, float]:
    """Where a signal → deleted sample went: when the Compute fake got the delete call (release published,
    delivered, handled) and when it had ended the VM's processes (the guest's own way down, SIGKILLed after
    the fake's grace if it lingers), both in seconds after the signal."""
    at = h.call_times(name, signalled_at)
    out = {}
    if "instances.delete" in at:
        out["delete_call_s"] = at["instances.delete"] - signalled_at
    if "vm.deleted" in at:
        out["vm_gone_s"] = at["vm.deleted"] - signalled_at
    return out


def direct_delete(h: Harness, n: int) -> dict[str, Any]:
    """Baseline: a RUNNING VM deleted with GceProvider.delete() + confirm_gone(), nothing else."""
    samples: list[float] = []
    for _ in range(n):
        made = h.gce.create(_baseline_spec(h))
        wait_until(lambda m=made: (g := h.gce.get(m.provider_id)) is not None and g.status == ProviderStatus.RUNNING,
                   timeout_s=30, interval_s=0.05, what="the baseline VM to run")
        t0 = time.monotonic()
        h.gce.delete(made.provider_id)
        gone = confirm_gone(h.gce, made.provider_id, 30)
        if gone:
            samples.append(time.monotonic() - t0)
    return {"summary": summary(samples)}


def lifecycle_rows(res: dict[str, Any], settings_bound_s: float, lease_ttl_s: float, reap_period_s: float) -> list[
        dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    d, b = res["demand"]["summary"], res["direct_create"]["summary"]
    if d.get("n"):
        rows.append({
            "key": "demand_to_create", "metric": "demand published → Compute insert received", "unit": "ms",
            "n": d["n"], "median": d["median"], "p99": d["p99"], "max": d["max"],
            "baseline_name": "provider.create() direct", "baseline": b.get("median"),
            "ratio": ratio(d["median"], b.get("median")), "target": "< 300 ms median",
            "within_target": d["median"] < 300,
        })
    t, bd = res["sigterm"]["summary"], res["direct_delete"]["summary"]
    if t.get("n"):
        rows.append({
            "key": "sigterm_to_deleted", "metric": "agent SIGTERM → VM confirmed deleted", "unit": "s",
            "n": t["n"], "median": t["median"], "p99": t["p99"], "max": t["max"],
            "baseline_name": "delete + confirm direct", "baseline": bd.get("median"),
            "ratio": ratio(t["median"], bd.get("median")), "target": "< 3 s", "within_target": t["max"] < 3,
        })
    k = res["sigkill"]["summary"]
    if k.get("n"):
        rows.append({
            "key": "lease_loss_to_deleted", "metric": "agent SIGKILL (lease loss) → VM confirmed deleted",
            "unit": "s", "n": k["n"], "median": k["median"], "p99": k["p99"], "max": k["max"],
            "baseline_name": "lease TTL + reap period", "baseline": settings_bound_s,
            "ratio": ratio(k["median"], settings_bound_s),
            "target": f"≤ {lease_ttl_s:g} s TTL + {reap_period_s:g} s reap period",
            "within_target": k["max"] <= settings_bound_s,
        })
    return rows
