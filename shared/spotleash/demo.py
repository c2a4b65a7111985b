"""``spotleash demo``: the whole system on the local stack, with demo timings.

Act 1: a recorded RAM trace climbs past the threshold → demand → a Spot VM launches in the Compute
fake and heartbeats → the agent gets SIGTERM → the VM is deleted. Act 2: a new agent is killed with
SIGKILL → the reaper deletes its VM once the lease expires. Act 3: the VAST GPU smoke run.
It ends with a summary and fails loudly (exit 3) if any instance is left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.table import Table

from spotleash.config import Settings, load_settings
from spotleash.errors import ExitCode
from spotleash.model import ENDED, InstanceRecord, State
from spotleash.polling import wait_until
from spotleash.providers import PROVIDER_NAMES, build_provider
from spotleash.store import FirestoreStore, Store

# Short timings so the whole demo takes about two minutes; production defaults are in config.py.
DEMO_TIMINGS = {
    # Heartbeat-only instances: the demo publishes no package yet, and with a bucket configured a launch
    # without a published package is refused (package_missing).
    "SPOTLEASH_PACKAGE_BUCKET": "",
    "SPOTLEASH_SAMPLE_INTERVAL_S": "0.25",
    "SPOTLEASH_LEASE_RENEW_S": "2",
    "SPOTLEASH_LEASE_TTL_S": "6",
    "SPOTLEASH_HEARTBEAT_INTERVAL_S": "1",
    "SPOTLEASH_HEARTBEAT_TIMEOUT_S": "6",
    "SPOTLEASH_ORPHAN_GRACE_S": "10",
    "SPOTLEASH_DEMAND_COOLDOWN_S": "30",
    "SPOTLEASH_PROVISIONING_TIMEOUT_S": "60",
    "SPOTLEASH_CONFIRM_DELETE_S": "20",
}
REAP_TIME_SCALE = 12  # the scheduler fake's clock runs 12x: the reaper's minute cron fires every 5 s


@dataclass
class ActResult:
    act: str
    instance_id: str
    provider: str
    launched_s: float  # agent start → instance READY
    deleted_s: float  # signal → confirmed deleted
    deleted_by: str
    cost: float


def demo_trace() -> Path:
    return Path(str(resources.files("spotleash.agent").joinpath("traces/climb.csv")))


def start_agent(lease_id: str, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "spotleash.agent", "--lease-id", lease_id, "--trace", str(demo_trace()),
            "--trace-speed", "2"]
    log = log_path.open("ab")
    return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _record_of_lease(store: Store, lease_id: str) -> InstanceRecord | None:
    recs = store.instances_of_lease(lease_id, live_only=False)
    return max(recs, key=lambda r: r.created_at) if recs else None


def _ready(store: Store, lease_id: str) -> InstanceRecord | None:
    rec = _record_of_lease(store, lease_id)
    return rec if rec is not None and rec.state == State.READY else None


def _ended_and_gone(store: Store, settings: Settings, instance_id: str) -> InstanceRecord | None:
    """The record ended *and* the provider confirms the instance no longer exists."""
    rec = store.get(instance_id)
    if rec is None or rec.state not in ENDED:
        return None
    gone = rec.provider_id is None or build_provider(rec.provider, settings).get(rec.provider_id) is None
    return rec if gone else None


def run_act(console: Console, store: Store, settings: Settings, env: dict[str, str], log_dir: Path, *,
            act: str, lease_id: str, sig: signal.Signals, budget_s: float) -> ActResult:
    console.rule(f"[bold]Act {act} — " + ("clean shutdown" if sig == signal.SIGTERM else "the agent is killed, its lease expires"))
    t0 = time.monotonic()
    agent = start_agent(lease_id, env, log_dir / f"agent-{lease_id}.log")
    try:
        with console.status(f"agent {lease_id} replays a RAM trace that climbs past "
                            f"{settings.ram_threshold:.0%}; waiting for a VM to heartbeat..."):
            rec = wait_until(lambda: _ready(store, lease_id), timeout_s=90, interval_s=0.25,
                             what=f"an instance of lease {lease_id} to be READY")
        launched = time.monotonic() - t0
        console.print(f"  VM [cyan]{rec.provider_id}[/] ({rec.machine}, {rec.zone}) READY after {launched:.1f}s")
        console.print(f"  sending [bold]{sig.name}[/] to the agent (pid {agent.pid})")
        t1 = time.monotonic()
        os.kill(agent.pid, sig)
        with console.status(f"waiting for the VM to be deleted (bound: {budget_s:.0f}s)..."):
            final = wait_until(lambda: _ended_and_gone(store, settings, rec.instance_id), timeout_s=budget_s,
                               interval_s=0.2, what=f"{rec.instance_id} to be deleted")
        deleted = time.monotonic() - t1
        console.print(f"  VM deleted and confirmed gone [green]{deleted:.1f}s[/] after {sig.name} "
                      f"(reason: {final.reason})")
        return ActResult(act, rec.instance_id, rec.provider, launched, deleted, final.reason or "",
                         final.cost_so_far(final.ended_at or final.updated_at))
    finally:
        if agent.poll() is None:
            agent.kill()
        agent.wait(timeout=10)


def leftovers(settings: Settings, store: Store) -> list[str]:
    """Everything of ours still alive: live records, and provider instances carrying our labels."""
    left = [f"record {r.instance_id} is {r.state}" for r in store.live_instances()]
    for name in PROVIDER_NAMES:
        for p in build_provider(name, settings).list_owned(settings.deployment_id):
            left.append(f"{name} instance {p.provider_id} ({p.status})")
    return left


def run_demo(console: Console, *, keep_stack: bool = False) -> int:
    from local_emulator import stack
    from spotleash.smoke import smoke_command

    state_dir = Path(tempfile.mkdtemp(prefix="spotleash-demo-"))
    console.rule("[bold]spotleash demo")
    started = time.monotonic()
    with console.status("starting the local stack: Pub/Sub + Firestore emulators, Compute / VAST / Scheduler "
                        "fakes, six functions..."):
        stack.up(state_dir, overrides=DEMO_TIMINGS, fake_args={"scheduler": ["--time-scale", str(REAP_TIME_SCALE)]})
    console.print(f"local stack up in {time.monotonic() - started:.1f}s (state in {state_dir})")
    saved = dict(os.environ)
    try:
        os.environ.update(stack.read_env(state_dir))
        os.environ.update(DEMO_TIMINGS)
        os.environ["SPOTLEASH_STATE_DIR"] = str(state_dir)
        settings = load_settings()
        store = FirestoreStore.from_settings(settings)
        env = dict(os.environ)
        results = [
            run_act(console, store, settings, env, state_dir, act="1: SIGTERM",
                    lease_id="demo-sigterm", sig=signal.SIGTERM, budget_s=30),
            run_act(console, store, settings, env, state_dir, act="2: SIGKILL",
                    lease_id="demo-sigkill", sig=signal.SIGKILL, budget_s=settings.lease_ttl_s + 90),
        ]
        console.rule("[bold]Act 3 — VAST GPU smoke run")
        smoke_rc = smoke_command(real=False, json_out=state_dir / "vast-smoke.json", yes=True)
        table = Table("act", "provider", "start → READY", "signal → gone", "deleted by", "cost $")
        for r in results:
            table.add_row(r.act, r.provider, f"{r.launched_s:.1f}s", f"{r.deleted_s:.1f}s",
                          r.deleted_by.split(":")[0], f"{r.cost:.6f}")
        table.add_row("3: GPU smoke", "vast", "-", "-", "smoke destroy",
                      "ok" if smoke_rc == 0 else "[red]FAILED")
        console.rule("[bold]summary")
        console.print(table)
        left = leftovers(settings, store)
        if left:
            console.print("[bold red]INSTANCES LEFT RUNNING:[/]\n  " + "\n  ".join(left))
            return ExitCode.LEFT_RUNNING
        console.print(f"[bold green]0 instances left[/] — demo finished in {time.monotonic() - started:.0f}s")
        return ExitCode.OK if smoke_rc == ExitCode.OK else ExitCode.FAILED
    finally:
        os.environ.clear()
        os.environ.update(saved)
        if not keep_stack:
            stack.down(state_dir)
