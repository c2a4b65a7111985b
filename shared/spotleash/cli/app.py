"""The ``spotleash`` command line. Thin: it parses options and calls spotleash's modules.

``--json`` means JSON on stdout, on every command that has a result: human text and progress then go to
stderr, so stdout stays parseable. Shell completion: ``spotleash --install-completion`` (or
``--show-completion`` to print the script).

Exit codes (``spotleash.errors.ExitCode``): 0 ok, 1 the operation failed, 2 wrong usage or
configuration, 3 instances left running, 130 interrupted. Errors print as one sentence; ``--debug``
shows the traceback.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.table import Column, Table

import spotleash
from spotleash.cli._common import console, err_console, hms, out, settings, short_duration
from spotleash.cli.check import check_command
from spotleash.cli.init import init_command
from spotleash.cli.publish import publish_command
from spotleash.cli.snapshot import snapshot_app
from spotleash.cli.user_errors import explain
from spotleash.clock import age_s
from spotleash.config import Settings, load_settings, secret_env_vars
from spotleash.errors import ConfigError, ExitCode, SpotleashError
from spotleash.wire import stack_env

if TYPE_CHECKING:
    from spotleash.adapters.firestore import FirestoreStore
    from spotleash.decide.inventory import Checked
    from spotleash.decide.reap import Decision
    from spotleash.model import InstanceRecord
    from spotleash.services.reap import ReapReport

# The help a terminal shows: plain text (no reStructuredText, the module docstring above is for readers of the
# code), one paragraph a line so click wraps it at the terminal's width.
APP_HELP = """Rent cheap cloud compute when RAM runs short, and never leave an instance running by mistake.

Start here: spotleash init (write a spotleash.toml for your app), spotleash check (is every part of the deployment there?), spotleash publish (package the app), spotleash agent (watch RAM, rent, release). Without Google Cloud: spotleash local up starts a local stack of emulators and fakes.

--json prints JSON on stdout on every command that has a result; human text and progress then go to stderr. Shell completion: spotleash --install-completion.

Exit codes: 0 ok, 1 the operation failed, 2 wrong usage or configuration, 3 instances left running, 130 interrupted. Errors print as one sentence with the fix; --debug shows the traceback."""

app = typer.Typer(add_completion=True, no_args_is_help=True, help=APP_HELP, pretty_exceptions_enable=False,
                  rich_markup_mode=None)
local_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                        help="The local stack: Google's emulators, our fakes, the functions.")
vast_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="VAST.ai GPU commands.")
app.add_typer(local_app, name="local")
app.add_typer(vast_app, name="vast")
_debug = False
DOWN_TIMEOUT_S = 300.0  # a GCE delete takes a minute or two; VAST's destroy seconds


def _print_version(asked: bool) -> None:
    if asked:
        print(f"spotleash {spotleash.__version__}")
        raise typer.Exit()


@app.callback()
def main_options(debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
                 _version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                               help="print the version and exit")) -> None:
    global _debug
    _debug = debug


# ------------------------------------------------------------------ local stack
def public_env(env: dict[str, str]) -> dict[str, str]:
    """The stack's settings less its secrets (the signing key, the VAST key): those stay in the env file."""
    hidden = secret_env_vars() | {"VAST_API_KEY"}  # VAST_API_KEY: the vastai SDK's own name for the key
    return {k: v for k, v in env.items() if k not in hidden}


@local_app.command("up")
def local_up(json_out: bool = typer.Option(False, "--json", help="JSON on stdout (secrets left out)")) -> None:
    """Start the local stack and print where everything runs (never its secrets)."""
    from local_emulator import stack

    s = load_settings()
    with out(json_out).status("starting Google's emulators, the fakes and the functions..."):
        info = stack.up(s.state_dir)
    if json_out:
        env = stack.read_env(s.state_dir)
        shown = public_env(env)
        print(json.dumps({"env_file": str(stack_env.env_file(s.state_dir)), "ready_s": round(info.ready_s, 1),
                          "env": shown, "secrets_in_env_file": sorted(env.keys() - shown.keys())}))
    else:
        console.print(f"[green]local stack up[/] in {info.ready_s:.1f}s — env file: {stack_env.env_file(s.state_dir)}")
        local_status(json_out=False)


@local_app.command("down")
def local_down(json_out: bool = typer.Option(False, "--json", help="JSON on stdout")) -> None:
    """Stop exactly the processes the local stack started."""
    from local_emulator import stack

    stopped = stack.down(load_settings().state_dir)
    if json_out:
        print(json.dumps({"stopped": stopped}))
        return
    console.print(f"stopped {len(stopped)} process(es)" + (": " + ", ".join(stopped) if stopped else ""))


@local_app.command("status")
def local_status(json_out: bool = typer.Option(False, "--json", help="JSON on stdout")) -> None:
    """What runs where."""
    from local_emulator import stack

    st = stack.status(load_settings().state_dir)
    rows: list[dict[str, Any]] = [dict(r) for r in st.as_rows()]
    if json_out:
        print(json.dumps(rows))
        return
    if not rows:
        console.print("the local stack is not running")
        return
    table = Table("part", "pid", "address", "alive")
    for r in rows:
        table.add_row(str(r["name"]), str(r["pid"]), str(r.get("address", "")), "yes" if r["alive"] else "[red]no[/]")
    console.print(table)


# ------------------------------------------------------------------ agent
@app.command()
def agent(
    lease_id: str | None = typer.Option(None, help="lease id (default: from host and user)"),
    trace: Path | None = typer.Option(None, help="replay a recorded RAM trace (CSV t_seconds,percent)"),
    trace_speed: float = typer.Option(1.0, help="trace playback speed"),
    trace_limit_gb: float | None = typer.Option(
        None, help="the memory a trace's percentages are of (default 16): placement weighs components against it"),
) -> None:
    """Watch RAM; rent compute when it runs short; release it on any exit."""
    from spotleash.agent.__main__ import exec_agent

    s = settings()  # a configuration error stops here, the CLI's way; a running local stack's env is loaded
    exec_agent(lease_id, trace, trace_speed, trace_limit_gb)  # POSIX: does not return
    from spotleash.agent import agent_main

    raise typer.Exit(agent_main(s, lease_id, trace, trace_speed, trace_limit_gb=trace_limit_gb))


# ------------------------------------------------------------------ status / down / reap
@app.command()
def status(
    json_out: bool = typer.Option(False, "--json", help="JSON on stdout"),
    all_: bool = typer.Option(False, "--all", help="include ended instances"),
    refresh: bool = typer.Option(False, "--refresh", help="ask the providers too, and flag where they disagree "
                                 "with Firestore"),
) -> None:
    """A table of the deployment's instances, and where the agent's router sends each component's requests."""
    from spotleash.adapters.firestore import FirestoreStore
    from spotleash.dashboard import status as status_view
    from spotleash.router.status import read_components, read_routes

    s = settings()
    store = FirestoreStore.from_settings(s)
    now = datetime.now(UTC)
    records = store.all_instances() if all_ else store.live_instances()
    records.sort(key=lambda r: r.created_at)
    routes = read_routes(s.router_admin_port) or {}
    placed = read_components(s.router_admin_port) or {}
    sleeping = store.hibernations()
    checked = _refresh(s, store, records) if refresh else None
    if json_out:
        rows = [status_view.as_json(r, now) for r in records]
        out: dict[str, Any] = {"instances": rows,
                               "hibernated": [status_view.hibernated_json(h, now) for h in sleeping],
                               "routes": {n: {"target": v.get("target"), "remote_share": v.get("remote_share", 0.0),
                                              **v} for n, v in routes.items()},
                               "components": placed}
        if checked is not None:
            for as_json, r in zip(rows, records, strict=True):
                as_json["provider_says"] = checked.says[r.instance_id].as_json()
            out["unrecorded"] = [u.as_json() for u in checked.unrecorded]
            out["providers"] = checked.providers_json()
        print(json.dumps(out))
        return
    table = Table("lease", "provider", "state", "components", "age", "last beat", "deadline", "cost $", "reason")
    table.columns.insert(0, Column("instance", no_wrap=True))
    if checked is not None:
        table.add_column("provider says")
    for r in records:
        cells = [r.instance_id, r.lease_id, r.provider, status_view.shown_state(r), status_view.compact(r),
                 short_duration(age_s(r.created_at, now)), hms(r.last_heartbeat), hms(r.deadline), f"{r.cost_so_far(now):.4f}",
                 r.reason or status_view.postponed(r)]
        table.add_row(*cells, *([checked.says[r.instance_id].cell()] if checked is not None else []))
    console.print(table if records else "no instances" + ("" if all_ else " running"))
    if sleeping:
        hib = Table(*status_view.HIBERNATED_COLUMNS)
        for row in status_view.hibernated_rows(sleeping, now):
            hib.add_row(*row)
        console.print(hib)
    if checked is not None:
        _print_refresh(checked)
    if routes:
        rt = Table("component", "traffic to", "instance", "served remotely", "requests", "why")
        for n, v in routes.items():
            rt.add_row(n, str(v.get("target")), str(v.get("instance_id") or "-"),
                       f"{float(v.get('remote_share', 0.0)):.0%}", str(v.get("requests", 0)), str(v.get("reason", "")))
        console.print(rt)
    if placed:
        ct = Table("component", "runs", "local copy", "local footprint", "memory freed", "why")
        for n, v in placed.items():
            ct.add_row(*status_view.component_cells(n, v))
        console.print(ct)


def _refresh(s: Settings, store: FirestoreStore, records: list[InstanceRecord]) -> Checked:
    """Ask every configured provider, and Firestore for the records of what they list beyond ``records``."""
    from spotleash.decide.inventory import Listings, check

    with Listings(s) as listings:
        inventories = listings()
    named = {p.instance_id for inv in inventories.values() for p in inv.instances if p.instance_id}
    return check(records, store.get_many(named - {r.instance_id for r in records}), inventories)


def _print_refresh(checked: Checked) -> None:
    for name, inv in checked.inventories.items():
        if not inv.ok:
            console.print(f"[yellow]{name}: listing failed, its instances are unknown:[/] {escape(str(inv.error))}",
                          soft_wrap=True)
    if checked.unrecorded:
        t = Table("provider", "provider id", "instance", "lease", "provider says", "why flagged",
                  title="[red]at the provider, not accounted for in Firestore[/]", title_justify="left")
        for u in checked.unrecorded:
            t.add_row(u.provider, u.provider_id, u.instance_id or "-", u.lease_id or "-", u.status, u.flag)
        console.print(t)


@app.command()
def cost(since: str | None = typer.Option(None, help="first day counted, YYYY-MM-DD (default: this month's 1st, UTC)"),
         json_out: bool = typer.Option(False, "--json", help="JSON on stdout")) -> None:
    """What the instances cost (the ledger): by instance, with totals by day, lease, provider and reason."""
    from spotleash.cli.cost import cost_command

    raise typer.Exit(cost_command(settings(), since, json_out))


@app.command()
def dashboard(port: int = typer.Option(0, help="port on 127.0.0.1 (default: a free one)"),
              json_out: bool = typer.Option(False, "--json", help='print {"url": ...} on stdout')) -> None:
    """Serve the read-only dashboard on 127.0.0.1; prints its URL, with a one-time token, once."""
    from spotleash.dashboard.command import dashboard_command

    s = settings()
    out(json_out).print("[dim]the dashboard answers on 127.0.0.1 only; the token in this URL is its only key "
                         "(Ctrl-C stops it):[/]")

    def show(url: str) -> None:
        print(json.dumps({"url": url}) if json_out else url, flush=True)

    raise typer.Exit(dashboard_command(s, port, print_url=show))


@app.command()
def down(
    all_: bool = typer.Option(False, "--all", help="release every lease of the deployment"),
    lease_id: str | None = typer.Option(None, help="lease to release (default: this machine's)"),
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask for confirmation"),
    timeout: float = typer.Option(DOWN_TIMEOUT_S, "--timeout", min=0,
                                  help="seconds to wait for the providers to confirm the deletions; "
                                       "exit 3 if anything is left then"),
    json_out: bool = typer.Option(False, "--json", help="JSON on stdout (progress on stderr)"),
) -> None:
    """Release this lease's instances (or, with --all, every lease's) and wait until the providers confirm them gone."""
    from spotleash.adapters.firestore import FirestoreStore
    from spotleash.adapters.pubsub import Publisher
    from spotleash.agent import default_lease_id
    from spotleash.cli.down import down_command
    from spotleash.wire.events import ReleaseEvent

    s = settings()
    store = FirestoreStore.from_settings(s)
    if all_:
        leases = sorted({r.lease_id for r in store.live_instances()})
        if leases and not yes and not typer.confirm(f"release {len(leases)} lease(s): {', '.join(leases)}?",
                                                    err=json_out):
            raise typer.Exit(ExitCode.FAILED)
    else:
        leases = [lease_id or default_lease_id()]
    pub = Publisher(s)

    def publish(lid: str) -> None:
        pub.publish_and_wait(ReleaseEvent(lease_id=lid, reason="spotleash down"), s.shutdown_budget_s)

    raise typer.Exit(down_command(s, store, leases, timeout_s=timeout, json_out=json_out, publish=publish))


def _decision_row(d: Decision) -> dict[str, Any]:
    return {"reason": d.reason, "provider": d.provider, "instance_id": d.instance_id,
            "provider_id": d.provider_id, "detail": d.detail}


def reap_json(report: ReapReport) -> dict[str, Any]:
    """``spotleash reap --json``: every decision, and which ``lease_expired`` ones were ``saved`` (the lease was
    renewed between the reap's read and the deletion: nothing deleted)."""
    return {"decisions": [_decision_row(d) for d in report.plan.decisions], "blocked": report.plan.blocked,
            "dry_run": report.dry_run, "failed": [str(f[1]) for f in report.failed],
            "saved": [_decision_row(d) for d in report.saved], "notes": list(report.plan.notes)}


@app.command()
def reap(
    dry_run: bool = typer.Option(False, "--dry-run", help="decide and print, delete nothing"),
    force: bool = typer.Option(False, "--force", help="pass the mass-deletion guard"),
    json_out: bool = typer.Option(False, "--json", help="JSON on stdout"),
) -> None:
    """Run a reap now and print its decisions."""
    from spotleash.services.context import Context
    from spotleash.services.reap import run_reap
    from spotleash.wire.events import ReapTick

    report = run_reap(Context.from_settings(settings()), ReapTick(dry_run=dry_run, force=force))
    if json_out:
        print(json.dumps(reap_json(report)))
    else:
        rows = [_decision_row(d) for d in report.plan.decisions]
        table = Table("reason", "provider", "instance", "provider id", "detail")
        for r in rows:
            table.add_row(*(str(r[k] or "") for k in ("reason", "provider", "instance_id", "provider_id", "detail")))
        console.print(table if rows else "nothing to reap")
        for note in report.plan.notes:
            err_console.print(f"[yellow]{note}[/]")
    if report.plan.blocked or report.failed:
        raise typer.Exit(ExitCode.FAILED)


# ------------------------------------------------------------------ demo, vast
@app.command()
def demo(keep_stack: bool = typer.Option(False, help="leave the local stack running afterwards")) -> None:
    """The whole system on the local stack: launch, SIGTERM, SIGKILL, GPU smoke; fails if anything is left."""
    from spotleash.demo.run import run_demo

    raise typer.Exit(run_demo(console, keep_stack=keep_stack))


@vast_app.command("smoke")
def vast_smoke(
    real: bool = typer.Option(False, "--real", help="rent a real GPU (needs VAST_API_KEY)"),
    json_out: bool = typer.Option(False, "--json", help="the report as JSON on stdout (the table on stderr)"),
    output: Path | None = typer.Option(None, "--output", "-o", help="also write the JSON report to this file"),
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask to confirm the price"),
) -> None:
    """search → create → wait → SSH write/read → destroy, with a timing breakdown."""
    from spotleash.providers.vast.smoke import smoke_command

    raise typer.Exit(smoke_command(real=real, json_out=json_out, output=output, yes=yes))


@app.command()
def logs(
    component: str = typer.Argument(..., help="the component (a name of spotleash.toml's [app])"),
    remote: bool = typer.Option(False, "--remote", help="the remote copy's log (through the running agent)"),
    follow: bool = typer.Option(False, "--follow", "-f", help="keep printing what is written (Ctrl-C stops)"),
    lease_id: str | None = typer.Option(None, help="the agent's lease (default: this machine's)"),
    tail: int = typer.Option(16 * 1024, min=0, help="bytes of the end of the log shown first"),
) -> None:
    """A component's output: its local copy's (run by the agent), or with --remote its remote copy's."""
    from spotleash.cli.logs import logs_command

    raise typer.Exit(logs_command(settings(), component, remote=remote, follow=follow, lease_id=lease_id, tail=tail))


app.command("publish")(publish_command)
app.command("init")(init_command)
app.command("check")(check_command)
app.add_typer(snapshot_app, name="snapshot")


def _fail(prefix: str, e: BaseException, code: ExitCode, hint: str = "", text: str | None = None) -> None:
    if _debug:
        raise e
    # soft_wrap: one sentence stays one line whatever the width; escape: a path or a JSON example in
    # the message is text, not rich markup
    err_console.print(f"[red]{prefix}:[/] {escape(str(e) if text is None else text)}{hint}", soft_wrap=True)
    sys.exit(code)


def main() -> None:
    try:
        app(prog_name="spotleash")  # click's standalone mode handles usage errors (exit 2) and typer.Exit
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(ExitCode.INTERRUPTED)
    except ConfigError as e:
        _fail("configuration error", e, ExitCode.USAGE)
    except (SpotleashError, OSError) as e:
        _fail("error", e, ExitCode.FAILED)
    except Exception as e:  # noqa: BLE001 - the last line of defence: one sentence, not a traceback
        known = explain(e)  # a library's error the user can fix (credentials, a stack gone, an extra missing)
        if known is not None:
            _fail("error", e, ExitCode.FAILED, text=known)
        _fail(f"unexpected error ({type(e).__name__})", e, ExitCode.FAILED,
              " — a bug in spotleash: please report it with the output of --debug")
