"""The GPU smoke run: search → create → wait running → wait SSH → write a file → read it back → destroy.

Against the local VAST fake by default (started in-process when no ``VAST_URL`` /
``SPOTLEASH_VAST_URL`` is set), against the real service with ``--real``. Each phase's time is split
into the provider's share (HTTP calls to VAST, polling pauses while it boots, SSH round trips) and
spotleash's own overhead (everything else). Destroy runs in ``finally`` whatever happened before it,
Ctrl-C included; the instance is looked up by its label if the create was interrupted mid-flight.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.prompt import Confirm
from rich.table import Table

from spotleash.clock import utcnow
from spotleash.errors import CapacityExhausted, ConfigError, ExitCode, SpotleashError
from spotleash.log import get_logger
from spotleash.polling import WaitTimeout, wait_until
from spotleash.providers.base import GpuRequirements, LaunchSpec
from spotleash.providers.vast import Offer, VastProvider
from spotleash.providers.vast.ssh import run

log = get_logger(__name__)

PHASES = ("search offers", "create instance", "wait running", "wait SSH", "write file", "verify file",
          "destroy instance")
REAL_URL = "https://console.vast.ai"
SMOKE_DEADLINE = timedelta(minutes=30)  # the box's own watchdog destroys it by then, whatever happens here


@dataclass
class PhaseTiming:
    name: str
    seconds: float
    provider_s: float  # waiting on VAST: HTTP, boot polling pauses, SSH round trips
    own_s: float  # spotleash's own overhead


@dataclass
class SmokeReport:
    ok: bool
    target: str
    url: str
    started_at: str
    phases: list[PhaseTiming] = field(default_factory=list)
    total_s: float = 0.0
    provider_s: float = 0.0
    own_s: float = 0.0
    gpu: str | None = None
    offer_id: int | None = None
    provider_id: str | None = None
    dph_total: float = 0.0
    cost_usd: float = 0.0
    destroyed: bool = False
    error: str | None = None
    host_key: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class SmokeFailed(SpotleashError):
    """The smoke run failed; ``report`` says where."""

    def __init__(self, msg: str, report: SmokeReport) -> None:
        super().__init__(msg)
        self.report = report


class _Clock:
    """Splits a phase's wall time into the provider's share (from its CallStats) and ours."""

    def __init__(self, provider: VastProvider, report: SmokeReport) -> None:
        self.provider = provider
        self.report = report
        self.extra_wait = 0.0

    def _waited(self) -> float:
        s = self.provider.stats
        return s.http_s + s.sleep_s + s.ssh_s + self.extra_wait

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0, w0 = time.monotonic(), self._waited()
        try:
            yield
        finally:
            wall = time.monotonic() - t0
            waited = min(wall, self._waited() - w0)
            self.report.phases.append(PhaseTiming(name, round(wall, 3), round(waited, 3), round(wall - waited, 3)))

    @contextmanager
    def remote(self) -> Iterator[None]:
        """Time spent in a remote SSH operation counts as the provider's."""
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.extra_wait += time.monotonic() - t0


def _table(report: SmokeReport) -> Table:
    t = Table(title=f"VAST smoke run ({report.target}) — {'PASSED' if report.ok else 'FAILED'}")
    for col, just in (("phase", "left"), ("seconds", "right"), ("% of total", "right"),
                      ("waiting on VAST", "right"), ("spotleash overhead", "right")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    total = report.total_s or 1e-9
    for p in report.phases:
        t.add_row(p.name, f"{p.seconds:.2f}", f"{100 * p.seconds / total:.1f} %", f"{p.provider_s:.2f}",
                  f"{p.own_s:.2f}")
    t.add_row("total", f"{report.total_s:.2f}", "100 %", f"{report.provider_s:.2f}", f"{report.own_s:.2f}",
              style="bold")
    return t


def run_smoke(
    provider: VastProvider,
    *,
    console: Console,
    requirements: GpuRequirements | None = None,
    report_path: Path | None = None,
    confirm_price: Callable[[Offer], bool] | None = None,
    target: str = "fake",
    running_timeout_s: float = 600.0,
    ssh_timeout_s: float = 180.0,
) -> SmokeReport:
    """Run the smoke test; returns the report, raises SmokeFailed (carrying it) on any failure."""
    req = requirements or provider.requirements
    report = SmokeReport(ok=False, target=target, url=provider.url, started_at=utcnow().isoformat())
    clock = _Clock(provider, report)
    instance_id = f"smoke-{secrets.token_hex(4)}"
    launch = LaunchSpec(instance_id=instance_id, lease_id="smoke", deployment_id="smoke",
                        deadline=utcnow() + SMOKE_DEADLINE, max_run_s=int(SMOKE_DEADLINE.total_seconds()),
                        gpu=req)
    t_start = time.monotonic()
    t_rented: float | None = None
    create_started = False
    failure: BaseException | None = None
    progress = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                        TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), console=console,
                        transient=False)
    try:
        with progress:
            task = progress.add_task("search offers", total=len(PHASES))

            def step(name: str) -> None:
                progress.update(task, description=name)

            with clock.phase("search offers"):
                offers = provider.search(req)
                if not offers:
                    raise CapacityExhausted(f"no VAST offer matches {req}")
                best = offers[0]
            report.gpu, report.offer_id, report.dph_total = best.gpu_name, best.id, best.dph_total
            progress.advance(task)
            if confirm_price is not None:
                progress.stop()
                if not confirm_price(best):
                    raise SmokeFailed("the user declined the price; nothing was rented", report)
                progress.start()
            step("create instance")
            # never pay more than what was shown (and confirmed)
            launch = replace(launch, gpu=replace(req, max_dph=best.dph_total))
            with clock.phase("create instance"):
                create_started = True
                inst = provider.create(launch)
            t_rented = time.monotonic()
            report.provider_id, report.dph_total = inst.provider_id, inst.price_per_hour or best.dph_total
            progress.advance(task)
            step("wait running")
            with clock.phase("wait running"):
                running = provider.wait_running(
                    inst.provider_id, timeout_s=running_timeout_s,
                    on_poll=lambda i: progress.update(task, description=f"wait running ({i.native_status if i else '?'})"),
                )
            progress.advance(task)
            step("wait SSH")
            with clock.phase("wait SSH"):
                host_key = provider.wait_ssh(running, timeout_s=ssh_timeout_s)
            report.host_key = host_key
            progress.advance(task)
            payload = f"spotleash smoke {instance_id} {secrets.token_hex(16)}\n".encode()
            name = f"spotleash-smoke-{instance_id}.txt"
            step("write file")
            with clock.phase("write file"), provider.ssh(running, host_key) as c, clock.remote():
                code, _, err = run(c, f"cat > {name} && sync", stdin=payload)
                if code != 0:
                    raise SmokeFailed(f"writing the file over SSH failed (exit {code}): {err[:200]}", report)
            progress.advance(task)
            step("verify file")
            with clock.phase("verify file"), provider.ssh(running, host_key) as c, clock.remote():
                sftp = c.open_sftp()
                with sftp.open(name, "rb") as f:
                    back = f.read()
                code, out, _ = run(c, f"sha256sum {name}")
                if back != payload or code != 0 or out.split()[0] != hashlib.sha256(payload).hexdigest():
                    raise SmokeFailed("the file read back over SSH differs from what was written", report)
            progress.advance(task)
            step("destroy instance")
    except BaseException as e:  # noqa: BLE001 - recorded, then re-raised after destroy
        failure = e
        report.error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    finally:
        _destroy(provider, report, clock, instance_id, create_started)
        t_end = time.monotonic()
        if t_rented is not None:
            report.cost_usd = round(report.dph_total * (t_end - t_rented) / 3600.0, 6)
        report.total_s = round(t_end - t_start, 3)
        report.provider_s = round(sum(p.provider_s for p in report.phases), 3)
        report.own_s = round(report.total_s - report.provider_s, 3)
        report.ok = failure is None and report.destroyed
        if report.ok is False and report.error is None:
            report.error = "the instance could not be confirmed destroyed"
        console.print(_table(report))
        console.print(f"GPU {report.gpu} at ${report.dph_total:.4f}/h — cost ${report.cost_usd:.6f}"
                      + (f" — [red]{report.error}[/red]" if report.error else ""))
        if report_path is not None:
            report_path.parent.mkdir(parents=True, exist_ok=True)
            report_path.write_text(json.dumps(report.to_json(), indent=2))
            console.print(f"report: {report_path}")
        log.info("smoke run finished", ok=report.ok, total_s=report.total_s, provider_id=report.provider_id,
                 reason=report.error)
    if failure is not None:
        if isinstance(failure, SmokeFailed):
            raise failure
        if isinstance(failure, Exception):
            raise SmokeFailed(report.error or "smoke run failed", report) from failure
        raise failure  # KeyboardInterrupt / SystemExit, after the destroy above
    if not report.ok:
        raise SmokeFailed(report.error or "smoke run failed", report)
    return report


def _destroy(provider: VastProvider, report: SmokeReport, clock: _Clock, instance_id: str, create_started: bool) -> None:
    with clock.phase("destroy instance"):
        try:
            pid = report.provider_id
            if pid is None and create_started:  # interrupted mid-create: find it by its label
                found = provider.find(instance_id)
                pid = found.provider_id if found else None
                report.provider_id = pid
            if pid is None:
                report.destroyed = True  # nothing was rented
                return
            provider.delete(pid)
            try:
                wait_until(lambda: provider.get(pid) is None, timeout_s=30, interval_s=0.5,
                           what=f"VAST to confirm instance {pid} is gone")
            except WaitTimeout:
                return  # not confirmed: the report says so
            report.destroyed = True
        except SpotleashError as e:
            log.error("smoke destroy failed; destroy it by hand", provider_id=report.provider_id, reason=str(e))
            report.error = report.error or f"destroy failed: {e}"


def smoke_against_fake(
    *, console: Console, report_path: Path | None = None, boot_delay_s: float = 2.0,
    requirements: GpuRequirements | None = None,
) -> SmokeReport:
    """Against ``VAST_URL`` / ``SPOTLEASH_VAST_URL`` if one is set (a running fake), else an in-process fake."""
    url = os.environ.get("SPOTLEASH_VAST_URL") or os.environ.get("VAST_URL")
    with tempfile.TemporaryDirectory(prefix="spotleash-smoke-") as tmp:
        key_path = Path(tmp) / "ssh_key"
        if url:
            key = os.environ.get("SPOTLEASH_VAST_API_KEY") or os.environ.get("VAST_API_KEY") or ""
            provider = VastProvider(url=url, api_key=key, ssh_key_path=key_path,
                                    requirements=requirements or GpuRequirements(gpu_names=("RTX 4090", "RTX 3090")))
            try:
                return run_smoke(provider, console=console, report_path=report_path, target="fake")
            finally:
                provider.close()
        from local_emulator.vast import VastFake  # the fake ships with the local stack, not the functions

        fake = VastFake(api_key=secrets.token_hex(16), boot_delay_s=boot_delay_s, data_dir=Path(tmp) / "fake").start()
        provider = VastProvider(url=fake.url, api_key=fake.api_key, ssh_key_path=key_path,
                                requirements=requirements or GpuRequirements(gpu_names=("RTX 4090", "RTX 3090")))
        try:
            return run_smoke(provider, console=console, report_path=report_path, target="fake (in-process)")
        finally:
            provider.close()
            fake.stop()


def smoke_command(real: bool, yes: bool, *, json_out: bool = False, output: Path | None = None) -> int:
    """``spotleash vast smoke [--real] [--json] [--output PATH] [--yes]``; returns the exit code.

    ``json_out``: the report as one JSON object on stdout, every human line on stderr. The report is also
    written to ``output`` (default, without ``json_out``: a file in the temporary directory)."""
    console = Console(stderr=json_out)
    report_path = output or (None if json_out else
                             Path(tempfile.gettempdir()) / f"spotleash-vast-smoke-{int(time.time())}.json")
    report: SmokeReport | None = None
    error = ""
    try:
        report = _smoke(real, yes, console, report_path)
        code = ExitCode.OK
    except SmokeFailed as e:
        report, code, error = e.report, ExitCode.FAILED, str(e)
        console.print(f"[red]smoke run failed:[/red] {e}")
    except SpotleashError as e:
        code, error = ExitCode.USAGE, str(e)
        console.print(f"[red]smoke run could not start:[/red] {e}")
    except KeyboardInterrupt:
        code, error = ExitCode.INTERRUPTED, "interrupted"
        console.print("[yellow]interrupted; the instance (if any) was destroyed[/yellow]")
    if json_out:
        print(json.dumps(report.to_json() if report is not None else {"ok": False, "error": error}))
    return code


def _smoke(real: bool, yes: bool, console: Console, report_path: Path | None) -> SmokeReport:
    if not real:
        return smoke_against_fake(console=console, report_path=report_path)
    key = os.environ.get("VAST_API_KEY") or os.environ.get("SPOTLEASH_VAST_API_KEY")
    if not key:
        raise ConfigError("--real needs VAST_API_KEY (your VAST.ai API key) in the environment")
    from spotleash.config import load_settings

    settings = load_settings()
    url = os.environ.get("SPOTLEASH_VAST_URL") or REAL_URL
    provider = VastProvider(url=url, api_key=key, ssh_key_path=settings.state_dir / "vast_ssh_key",
                            image=settings.gpu_image)
    req = GpuRequirements.from_settings(settings)

    def confirm(o: Offer) -> bool:
        text = (f"Rent a {o.gpu_name} ({o.gpu_ram_gb:.0f} GB, {o.geolocation}, reliability {o.reliability:.3f}) "
                f"at ${o.dph_total:.4f}/h for a run of about 2 minutes (≈ ${o.dph_total * 2 / 60:.4f})?")
        return yes or Confirm.ask(text, console=console, default=False)

    try:
        return run_smoke(provider, console=console, requirements=req, report_path=report_path,
                         confirm_price=confirm, target="real")
    finally:
        provider.close()
