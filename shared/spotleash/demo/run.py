"""``spotleash demo``: the whole system on the local stack, with demo timings — one command, about 3 minutes.

Set-up: the local stack (with the Cloud Storage emulator and its package bucket), ``spotleash publish``
of ``examples/thumbs`` (sha256, size, bytes uploaded), and a copy of its settings whose local copies listen
on ports shifted off the ones a fake VM's copies bind here. Each agent runs the app's two local copies itself.

Act 1, the work moves: a load generator sends a steady stream of requests to the router's stable
ports while the agent replays a RAM trace → demand → a Compute fake VM pulls the package, its
components pass their health checks, READY → traffic shifts to the VM (a line per target change, with
the share served remotely) → the agent stops each local copy (a ``freed:`` line each) → the VM is
preempted → the trace leaves no room to restart the copies, so requests wait in the router
(``SPOTLEASH_ROUTER_HOLD_S``) → the replacement gets READY → traffic remote again → SIGTERM to the agent →
both VMs gone.
Act 2: a new agent is killed with SIGKILL → the reaper deletes its VM once the lease expires; the local
copies it left running are ended by their marker, as that agent's next start would.
Act 3: a VAST fake GPU box pulls the same package, gets READY with endpoints, answers a real request
through the router, and is destroyed at the agent's SIGTERM; then the VAST smoke run.
It ends with a summary table, fails loudly (exit 3) if any instance is left, and its last line is
``requests: <total> total, <remote> remote, <retried> retried, <failed> failed`` (total and failed as
the load generator saw them, remote and retried from the router's counters), then
``memory: <peak> % peak, <freed> MB freed, <n> OOM kills`` (``demo.memory``: the agents' readings and stop
reports, the kernel's OOM-kill counter); a ``freed:`` line is printed when a local copy is stopped. The peak
is the replayed trace's (a nominal 64 GB machine); the MB freed are real (the stopped copies' RSS).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from spotleash.adapters.firestore import FirestoreStore, Store
from spotleash.agent.local_copies import LOCAL_MARKER_ENV, end_leftovers, marker_of
from spotleash.config import Settings, load_settings
from spotleash.demo.memory import MemoryTally, OomCounter, memory_line, oom_counter
from spotleash.demo.moves import (
    Launch,
    MovesResult,
    describe,
    ended_and_gone,
    failure_notes,
    requests_line,
    run_moves,
    start_agent,
    wait_ready,
)
from spotleash.demo.traffic import demo_config, example_app, png_size, router_totals, wait_routes
from spotleash.errors import ExitCode
from spotleash.model import State
from spotleash.polling import wait_until
from spotleash.providers import PROVIDER_NAMES, build_provider
from spotleash.supervisor.marked import find_marked

# Short timings so the whole demo takes about three minutes; production defaults are in config.py.
# The stack's package bucket stays set: every instance pulls the package published at the start.
DEMO_TIMINGS = {
    "SPOTLEASH_SAMPLE_INTERVAL_S": "0.25",
    "SPOTLEASH_LEASE_RENEW_S": "2",
    "SPOTLEASH_LEASE_TTL_S": "6",
    "SPOTLEASH_HEARTBEAT_INTERVAL_S": "1",
    "SPOTLEASH_HEARTBEAT_TIMEOUT_S": "6",
    "SPOTLEASH_ORPHAN_GRACE_S": "10",
    "SPOTLEASH_DEMAND_COOLDOWN_S": "30",
    "SPOTLEASH_PROVISIONING_TIMEOUT_S": "150",
    "SPOTLEASH_CONFIRM_DELETE_S": "20",
    # act 1: after the preemption the trace leaves no room to restart the stopped local copies, so requests
    # wait for the replacement (READY ~10-40 s after the notice here) instead of a 503 at once
    "SPOTLEASH_ROUTER_HOLD_S": "90",
}
REAP_TIME_SCALE = 12  # the scheduler fake's clock runs 12x: the reaper's minute cron fires every 5 s
TRACE_SPEED = "8"  # the RAM trace crosses the threshold ~5 s after the agent starts
TRACE_LIMIT_GB = "64"
# Wheels an instance installs offline come from PyPI once, then from this cache (shared with the tests).
WHEEL_CACHE_VAR = "SPOTLEASH_TEST_WHEEL_CACHE"
GPU_ENV = {"SPOTLEASH_GPU_COMPONENTS": json.dumps(["thumbnailer", "vectors"])}  # act 3: the demand goes to VAST


def demo_trace() -> Path:
    return Path(str(resources.files("spotleash.agent").joinpath("traces/jump.csv")))


def trace_args(speed: str = TRACE_SPEED) -> list[str]:
    """The agent's arguments to replay the demo trace (``traces/jump.csv``: 60 % until a model load takes the
    machine to 97 % at once — a step, so no sample lands between — 5 s after the agent starts at the demo's speed). Its percentages are of a nominal
    64 GB machine, so the jump misses 7.7 GB of headroom — more than the app's components weigh together —
    and placement moves every one of them (the demo shows all of them served remotely). A gradual climb
    crosses the threshold by a hair and rightly moves only the heaviest component."""
    return ["--trace", str(demo_trace()), "--trace-speed", speed, "--trace-limit-gb", TRACE_LIMIT_GB]


def agent_argv() -> list[str]:
    return [sys.executable, "-m", "spotleash.agent", *trace_args()]


def wheel_cache() -> Path:
    default = Path.home() / ".cache" / "spotleash" / "test-wheels"
    path = Path(os.environ.get(WHEEL_CACHE_VAR) or default)
    path.mkdir(parents=True, exist_ok=True)
    return path


def publish_example(console: Console, app_dir: Path, state_dir: Path, env: dict[str, str]) -> dict[str, object]:
    """``spotleash publish --app examples/thumbs --json``, as a user runs it; its JSON result."""
    (state_dir / "wheels").symlink_to(wheel_cache(), target_is_directory=True)
    t0 = time.monotonic()
    with console.status(f"spotleash publish --app {app_dir} (wheels for the instance cached in {wheel_cache()})..."):
        out = subprocess.run([sys.executable, "-m", "spotleash.cli", "publish", "--app", str(app_dir), "--json"],
                             env=env, capture_output=True, text=True, timeout=900, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"spotleash publish failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
    result: dict[str, object] = json.loads(out.stdout)
    size, sent = int(str(result.get("size_bytes", 0))), int(str(result.get("uploaded_bytes", 0)))
    console.print(f"  published in {time.monotonic() - t0:.1f}s: sha256 [cyan]{result['sha256']}[/]\n"
                  f"  {result['uri']}  size {size / 1e6:.1f} MB, uploaded {sent / 1e6:.1f} MB ({sent} bytes); "
                  f"{result['pointer']} names it")
    return result


def run_act(console: Console, store: Store, settings: Settings, env: dict[str, str], log_dir: Path, *,
            act: str, title: str, lease_id: str, sig: signal.Signals, budget_s: float,
            when_ready: Callable[[], None] | None = None) -> Launch:
    """An agent replays the RAM trace → an instance gets READY (``when_ready`` runs) → ``sig`` → gone."""
    console.rule(f"[bold]Act {act} — {title}")
    t0 = time.monotonic()
    agent = start_agent([*agent_argv(), "--lease-id", lease_id], env, log_dir / f"agent-{lease_id}.log")
    try:
        with console.status(f"agent {lease_id} replays a RAM trace that climbs past {settings.ram_threshold:.0%}; "
                            "an instance pulls the package and starts the components..."):
            rec = wait_ready(store, lease_id)
        launch = Launch(act, rec, time.monotonic() - t0)
        console.print(f"  READY after {launch.launched_s:.1f}s: {describe(rec)}")
        if when_ready is not None:
            when_ready()
        console.print(f"  sending [bold]{sig.name}[/] to the agent (pid {agent.pid})")
        t1 = time.monotonic()
        os.kill(agent.pid, sig)
        with console.status(f"waiting for the instance to be deleted (bound: {budget_s:.0f}s)..."):
            final = wait_until(lambda: ended_and_gone(store, settings, rec.instance_id), timeout_s=budget_s,
                               interval_s=0.2, what=f"{rec.instance_id} to be deleted")
        launch.deleted_s = time.monotonic() - t1
        launch.deleted_by = final.reason or ""
        launch.cost = final.cost_so_far(final.ended_at or final.updated_at)
        console.print(f"  deleted and confirmed gone [green]{launch.deleted_s:.1f}s[/] after {sig.name} "
                      f"(reason: {final.reason})")
        return launch
    finally:
        if agent.poll() is None:
            agent.kill()
        agent.wait(timeout=10)


def real_answers(console: Console, settings: Settings, routes: dict[str, int], instance_id: str) -> None:
    """One request per component through the router, served by ``instance_id``'s copies (the router says so)."""
    wait_routes(settings.router_admin_port, "remote", instance_id=instance_id, timeout_s=60,
                what=f"every component routed to {instance_id}")
    before = (router_totals(settings.router_admin_port) or {}).get("remote", 0)
    with httpx.Client(timeout=30, trust_env=False) as client:
        r = client.get(f"http://127.0.0.1:{routes['vectors']}/similar", params={"id": 7, "k": 3})
        r.raise_for_status()
        t = client.get(f"http://127.0.0.1:{routes['thumbnailer']}/thumbnail", params={"size": 64, "color": "2060c0"})
        t.raise_for_status()
    remote = (router_totals(settings.router_admin_port) or {}).get("remote", 0) - before
    if remote != 2:
        raise RuntimeError(f"{remote} of the 2 requests were served by the GPU box (the router's counters)")
    size = png_size(t.content)
    if size is None or max(size) != 64:
        raise RuntimeError(f"the GPU box's thumbnailer answered {t.headers.get('content-type')} of size {size}")
    console.print(f"  through the router, served by the GPU box: vectors → ids {r.json()['ids']}; "
                  f"thumbnailer → a {size[0]}x{size[1]} {t.headers.get('content-type')}")


def leftovers(settings: Settings, store: Store, leases: list[str]) -> list[str]:
    """Everything of ours still alive: live records, provider instances carrying our labels, and processes of
    the agents' local copies (each carries its lease's marker)."""
    left = [f"record {r.instance_id} is {r.state}" for r in store.live_instances()]
    for name in PROVIDER_NAMES:
        for p in build_provider(name, settings).list_owned(settings.deployment_id):
            left.append(f"{name} instance {p.provider_id} ({p.status})")
    for lease in leases:
        for proc in find_marked(LOCAL_MARKER_ENV, marker_of(lease, settings.state_dir)):
            left.append(f"local copy process {proc.pid} of {lease}")
    return left


def end_killed_agents_copies(console: Console, settings: Settings, lease_id: str) -> None:
    """A SIGKILLed agent's local copies outlive it; its next start ends them by their marker. The demo starts
    no such agent, so it ends them the same way (the next act's copies need their ports)."""
    ended = end_leftovers(marker_of(lease_id, settings.state_dir))
    if ended:
        console.print(f"  the killed agent's local copies ({len(ended)} processes: "
                      f"{', '.join(sorted({e.component or '?' for e in ended}))}) ended by their marker, "
                      "as its next start does")


def _summary(console: Console, launches: list[Launch], smoke_rc: int) -> None:
    table = Table("act", "provider", "start → READY", "signal → gone", "deleted by", "cost $")
    for x in launches:
        table.add_row(x.act, x.record.provider, f"{x.launched_s:.1f}s", f"{x.deleted_s:.1f}s",
                      x.deleted_by.split(":")[0], f"{x.cost:.6f}")
    table.add_row("3: GPU smoke", "vast", "-", "-", "smoke destroy", "ok" if smoke_rc == 0 else "[red]FAILED")
    console.rule("[bold]summary")
    console.print(table)


def run_demo(console: Console, *, keep_stack: bool = False) -> int:
    from local_emulator import stack
    from spotleash.providers.vast.smoke import smoke_command

    state_dir = Path(tempfile.mkdtemp(prefix="spotleash-demo-"))
    ooms = oom_counter()  # before anything of the demo runs: the kills counted are the demo's run's
    console.rule("[bold]spotleash demo")
    started = time.monotonic()
    app_dir = example_app()
    with console.status("starting the local stack: Pub/Sub, Firestore and Cloud Storage emulators, Compute / "
                        "VAST / Scheduler fakes, six functions..."):
        stack.up(state_dir, overrides=DEMO_TIMINGS, fake_args={"scheduler": ["--time-scale", str(REAP_TIME_SCALE)]})
    console.print(f"local stack up in {time.monotonic() - started:.1f}s (state in {state_dir})")
    saved = dict(os.environ)
    moves: MovesResult | None = None
    leases = ["demo-moves", "demo-sigkill", "demo-vast"]
    try:
        os.environ.update(stack.read_env(state_dir))
        os.environ.update(DEMO_TIMINGS)
        os.environ["SPOTLEASH_STATE_DIR"] = str(state_dir)
        settings = load_settings()
        store = FirestoreStore.from_settings(settings)
        publish_example(console, app_dir, state_dir, dict(os.environ))
        app = demo_config(app_dir, state_dir)
        # the agents start the local copies from the app's commands ("python ..."): this interpreter's first
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        env = {**os.environ, "PATH": path, "SPOTLEASH_CONFIG_FILE": str(app.config_file)}
        routes = {c.name: c.route_port for c in app.spec.components if c.route_port is not None}
        console.print(f"  settings for the agents: {app.config_file} (local copies run by the agent)")

        console.rule("[bold]Act 1 — the work moves")
        moves = run_moves(console, store, settings, env, state_dir, agent_argv(), app, lease_id=leases[0])
        launches = list(moves.launches)
        try:
            launches.append(run_act(console, store, settings, env, state_dir, act="2: SIGKILL",
                                    title="the agent is killed, its lease expires", lease_id=leases[1],
                                    sig=signal.SIGKILL, budget_s=settings.lease_ttl_s + 90))
        finally:
            end_killed_agents_copies(console, settings, leases[1])
        gpu_env = {**env, **GPU_ENV}
        launches.append(run_act(console, store, settings, gpu_env, state_dir, act="3: GPU package",
                                title="a VAST GPU box runs the package", lease_id=leases[2], sig=signal.SIGTERM,
                                budget_s=45, when_ready=lambda: real_answers(
                                    console, settings, routes, _live_id(store, leases[2]))))
        console.rule("[bold]Act 3b — VAST GPU smoke run")
        smoke_rc = smoke_command(real=False, output=state_dir / "vast-smoke.json", yes=True)
        _summary(console, launches, smoke_rc)
        for note in failure_notes(moves):
            console.print(f"  [yellow]failed:[/] {note}")
        left = leftovers(settings, store, leases)
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
        if moves is not None:
            console.print(requests_line(moves), highlight=False, markup=False)
        if ooms is not None:
            console.print(f"OOM kills counted in {ooms.what}", highlight=False, markup=False)
        console.print(memory_summary(state_dir, ooms), highlight=False, markup=False)


def memory_summary(log_dir: Path, ooms: OomCounter | None) -> str:
    """The demo's last line, from every agent's log of the run and the kernel's OOM-kill counter."""
    tally = MemoryTally()
    for path in sorted(log_dir.glob("agent-*.log")):
        tally.feed_file(path)
    return memory_line(tally, ooms.kills() if ooms is not None else None)


def _live_id(store: Store, lease_id: str) -> str:
    ready = [r for r in store.instances_of_lease(lease_id) if r.state == State.READY]
    if not ready:
        raise RuntimeError(f"no READY instance of {lease_id}")
    return ready[0].instance_id
