"""The demo's act 1, "the work moves": the example app under load while its components move to a VM and back.

The agent starts the app's local copies and routes them on the app's stable ports, and replays a RAM trace
→ demand → a Compute fake VM pulls the package, its components pass their health checks, READY → the router
shifts each component to the VM → the agent's hand-off stops each local copy (a ``freed:`` line: the RSS its
process tree gave back) → the VM is preempted (the Compute fake's control API) → the trace still says 97 %, so
a stopped copy does not fit and is not restarted: requests wait in the router (``SPOTLEASH_ROUTER_HOLD_S``) →
the replacement VM gets READY → the held requests and the new ones go to it → SIGTERM to the agent → both VMs
gone. The load generator stops issuing requests at the SIGTERM; the ones in flight finish (the router drains
them before it stops).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import httpx
from rich.console import Console

from spotleash.adapters.firestore import Store
from spotleash.config import Settings
from spotleash.demo.traffic import (
    LoadCounts,
    LoadGenerator,
    RouteLog,
    router_totals,
    sample_image,
    wait_local_copies,
    wait_routes,
)
from spotleash.model import ENDED, InstanceRecord, State
from spotleash.packaging.appspec import LoadedApp
from spotleash.polling import wait_until
from spotleash.providers import build_provider

READY_TIMEOUT_S = 150.0  # boot + offline install (~15 s here) + components healthy, on a busy 2-core machine
REMOTE_HOLD_S = 6.0  # traffic stays on a VM this long before the next step: the shift is seen, not just announced
REMOTE_SERVED = 20  # and at least this many requests were served by it


@dataclass
class Launch:
    """One instance of an act, for the summary table."""

    act: str
    record: InstanceRecord
    launched_s: float  # from the agent's start (or the preemption) to READY
    deleted_s: float = 0.0  # from the signal (or the preemption) to confirmed gone
    deleted_by: str = ""
    cost: float = 0.0


@dataclass
class MovesResult:
    launches: list[Launch]
    load: LoadCounts
    router: dict[str, int]  # the router's totals: total, remote, retried, failed


def start_agent(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    log = log_path.open("ab")
    return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_ready(store: Store, lease_id: str, *, where: Callable[[InstanceRecord], bool] | None = None,
               timeout_s: float = READY_TIMEOUT_S) -> InstanceRecord:
    """A READY record of the lease matching ``where``; an ended one matching it fails at once, with its reason."""
    def check() -> InstanceRecord | None:
        for r in store.instances_of_lease(lease_id, live_only=False):
            if where is not None and not where(r):
                continue
            if r.state == State.READY:
                return r
            if r.state in ENDED and not r.preempted:
                raise RuntimeError(f"{r.instance_id} ended {r.state} before READY: {r.reason}")
        return None

    got: InstanceRecord = wait_until(check, timeout_s=timeout_s, interval_s=0.25,
                                     what=f"a READY instance of lease {lease_id}")
    return got


def ended_and_gone(store: Store, settings: Settings, instance_id: str) -> InstanceRecord | None:
    """The record ended *and* the provider confirms the instance no longer exists."""
    rec = store.get(instance_id)
    if rec is None or rec.state not in ENDED:
        return None
    gone = rec.provider_id is None or build_provider(rec.provider, settings).get(rec.provider_id) is None
    return rec if gone else None


def describe(rec: InstanceRecord) -> str:
    comps = ", ".join(f"{n} {c.state} at {c.endpoint}" for n, c in sorted(rec.component_states.items()))
    return f"[cyan]{rec.provider_id}[/] ({rec.provider}, {rec.machine}, package {(rec.package_sha256 or '')[:12]}): {comps}"


def wait_remote_served(admin_port: int | None, instance_id: str, timeout_s: float = 60.0) -> None:
    """Every component routed to ``instance_id``, then ``REMOTE_HOLD_S`` and ``REMOTE_SERVED`` requests
    served remotely since (the routes must stay on ``instance_id`` all along)."""
    wait_routes(admin_port, "remote", instance_id=instance_id, timeout_s=timeout_s,
                what=f"every component routed to {instance_id}")
    start, t0 = (router_totals(admin_port) or {}).get("remote", 0), time.monotonic()

    def held() -> bool:
        wait_routes(admin_port, "remote", instance_id=instance_id, timeout_s=2.0,
                    what=f"every component to stay routed to {instance_id}")
        served = (router_totals(admin_port) or {}).get("remote", 0) - start
        return time.monotonic() - t0 >= REMOTE_HOLD_S and served >= REMOTE_SERVED

    wait_until(held, timeout_s=timeout_s, interval_s=0.5, what=f"{REMOTE_SERVED} requests served by {instance_id}")


def preempt(compute_url: str, rec: InstanceRecord) -> None:
    r = httpx.post(f"{compute_url}/_control/instances/{rec.zone}/{rec.provider_id}/preempt", timeout=30,
                   trust_env=False)
    r.raise_for_status()


def run_moves(console: Console, store: Store, settings: Settings, env: dict[str, str], log_dir: Path,
              agent_argv: list[str], app: LoadedApp, *, lease_id: str) -> MovesResult:
    admin = settings.router_admin_port
    routes = {c.name: c.route_port for c in app.spec.components if c.route_port is not None}
    t0 = time.monotonic()
    log_path = log_dir / f"agent-{lease_id}.log"
    agent = start_agent([*agent_argv, "--lease-id", lease_id], env, log_path)
    route_log = RouteLog(console, log_path, admin, t0)
    launches: list[Launch] = []
    load: LoadGenerator | None = None
    try:
        with console.status("the agent starts the components' local copies..."):
            urls = wait_local_copies(app, f"{log_dir}/local/{lease_id}/<component>.log")
        console.print("  the agent runs the local copies: " + ", ".join(f"[cyan]{n}[/] {u}" for n, u in urls.items()) +
                      " (the VMs' copies bind the package's ports on this one machine)")
        wait_routes(admin, "local", timeout_s=30, what="the agent's router to route to the local copies")
        # the client waits longer than the router holds a request no copy can serve (act 1's preemption)
        load = LoadGenerator(routes, sample_image(urls["thumbnailer"]), timeout_s=settings.router_hold_s + 30)
        route_log.start()
        load.start()
        console.print(f"  agent {lease_id} (pid {agent.pid}) routes " + ", ".join(
            f"[cyan]{n}[/] 127.0.0.1:{p}" for n, p in routes.items()) + f"; load: {load.workers} clients, "
            "GET thumbnail / GET similar / POST similar with Idempotency-Key / plain POST thumbnail")
        with console.status(f"RAM trace climbs past {settings.ram_threshold:.0%} → demand → a VM pulls the "
                            "package, installs it, starts the components..."):
            first = wait_ready(store, lease_id)
        launches.append(Launch("1: work moves", first, time.monotonic() - t0))
        console.print(f"  [dim]{time.monotonic() - t0:6.1f}s[/] READY {describe(first)}")
        with console.status("waiting for the router's probes to pass and traffic to shift..."):
            wait_remote_served(admin, first.instance_id)

        console.print(f"  [dim]{time.monotonic() - t0:6.1f}s[/] [bold yellow]preempting[/] {first.provider_id} "
                      "(Compute fake control API: its metadata says instance/preempted TRUE)")
        t_pre, preempted_at = time.monotonic(), datetime.now(UTC)
        preempt(env["SPOTLEASH_COMPUTE_ENDPOINT"], first)
        with console.status("the instance reports the notice → its copies take no new request..."):
            left = wait_routes(admin, ("local", "none"), timeout_s=30,
                               what=f"no component routed to {first.provider_id} any more")
        held = sorted(n for n, r in left.items() if r.get("target") == "none")
        if held:
            console.print(f"  [dim]{time.monotonic() - t0:6.1f}s[/] {', '.join(held)}: local copy stopped and the "
                          f"RAM trace still past {settings.ram_threshold:.0%} (no room to restart it) → requests "
                          f"wait in the router (up to {settings.router_hold_s:.0f}s) for the replacement")
        with console.status("the control plane launches a replacement; it pulls the package..."):
            second = wait_ready(store, lease_id, where=lambda r: r.replaces == first.instance_id)
        launches.append(Launch("1: replacement", second, time.monotonic() - t_pre))
        console.print(f"  [dim]{time.monotonic() - t0:6.1f}s[/] READY (replacement) {describe(second)}")
        with console.status("traffic shifts to the replacement..."):
            wait_remote_served(admin, second.instance_id)

        console.print(f"  [dim]{time.monotonic() - t0:6.1f}s[/] sending [bold]SIGTERM[/] to the agent "
                      f"(pid {agent.pid}); the load stops issuing requests, those in flight finish")
        t_sig = time.monotonic()
        os.kill(agent.pid, signal.SIGTERM)
        load.stop()
        agent.wait(timeout=settings.shutdown_budget_s + 20)
        for launch in launches:
            iid = launch.record.instance_id
            with console.status(f"waiting for {launch.record.provider_id} to be confirmed gone..."):
                final = wait_until(partial(ended_and_gone, store, settings, iid), timeout_s=90, interval_s=0.2,
                                   what=f"{iid} to be deleted")
            if launch.record.instance_id == first.instance_id:  # gone long ago: its record says when
                launch.deleted_s = ((final.ended_at or final.updated_at) - preempted_at).total_seconds()
            else:
                launch.deleted_s = time.monotonic() - t_sig
            launch.deleted_by = final.reason or ""
            launch.cost = final.cost_so_far(final.ended_at or final.updated_at)
            console.print(f"  {final.provider_id} gone (reason: {final.reason})")
        route_log.stop()
        if route_log.router_totals is None:
            raise RuntimeError(f"the agent's router logged no totals when it stopped (log: {log_path})")
        return MovesResult(launches, load.snapshot(), route_log.router_totals)
    finally:
        if load is not None:
            load.stop()
        route_log.stop()
        if agent.poll() is None:
            agent.kill()
        agent.wait(timeout=10)


def requests_line(result: MovesResult) -> str:
    """The demo's last line. total and failed as the load generator saw them; remote and retried from
    the router's counters."""
    return (f"requests: {result.load.total} total, {result.router.get('remote', 0)} remote, "
            f"{result.router.get('retried', 0)} retried, {result.load.failed} failed")


def failure_notes(result: MovesResult) -> list[str]:
    """What failed, in plain words (the non-idempotent POSTs in flight when a VM died get the router's 502)."""
    notes = [f"{n} × {what}" for what, n in result.load.failures.most_common(6)]
    if result.router.get("total", 0) != result.load.total:
        notes.append(f"the router counted {result.router.get('total', 0)} requests, the load generator "
                     f"{result.load.total} (a request the router never saw failed before reaching it)")
    return notes
