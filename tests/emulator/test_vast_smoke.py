"""The smoke run against the fake: passes, reports, leaves no instance and no process; fails loudly."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import psutil
import pytest
from rich.console import Console
from tests.emulator import vast_fixtures as fx
from tests.emulator.vast_fixtures import API_KEY, REQ

from local_emulator.vast import VastFake
from spotleash.providers.vast import VastProvider
from spotleash.providers.vast.smoke import PHASES, SmokeFailed, run_smoke, smoke_against_fake, smoke_command

pytestmark = pytest.mark.emulator
vast_fake = fx.vast_fake
control = fx.control


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE}


def test_smoke_against_in_process_fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VAST_URL", raising=False)
    monkeypatch.delenv("SPOTLEASH_VAST_URL", raising=False)
    before = _children()
    out = io.StringIO()
    report = smoke_against_fake(console=Console(file=out, width=120), report_path=tmp_path / "r.json",
                                boot_delay_s=1.0)
    assert report.ok and report.destroyed and report.error is None
    assert [p.name for p in report.phases] == list(PHASES)
    assert report.phases[2].seconds >= 0.9  # the boot delay is the provider's wait ...
    assert report.phases[2].provider_s >= 0.8 * report.phases[2].seconds
    assert report.own_s >= 0 and abs(report.own_s + report.provider_s - report.total_s) < 0.01
    assert report.cost_usd > 0 and report.gpu in ("RTX 4090", "RTX 3090")
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["ok"] is True and len(saved["phases"]) == len(PHASES)
    text = out.getvalue()
    assert "wait running" in text and "spotleash overhead" in text and "% of total" in text
    fx.wait_for(lambda: _children() <= before, timeout=10, what="no process left")


def test_smoke_failure_still_destroys(vast_fake: VastFake, control: httpx.Client, tmp_path: Path) -> None:
    p = VastProvider(url=vast_fake.url, api_key=API_KEY, ssh_key_path=tmp_path / "k", requirements=REQ)
    # every SSH exec fails: sabotage by removing the account key right after the instance starts running
    real_wait = p.wait_running

    def wait_then_break(*a: object, **kw: object) -> object:
        inst = real_wait(*a, **kw)  # type: ignore[arg-type]
        vast_fake.model.ssh_keys.clear()
        for i in vast_fake.model.instances.values():
            i.ssh_keys.clear()
        return inst

    p.wait_running = wait_then_break  # type: ignore[method-assign]
    with pytest.raises(SmokeFailed) as ei:
        run_smoke(p, console=Console(file=io.StringIO()), report_path=tmp_path / "f.json", ssh_timeout_s=2)
    rep = ei.value.report
    assert not rep.ok and rep.destroyed and "SSH" in (rep.error or "")
    assert vast_fake.model.instances == {}
    assert json.loads((tmp_path / "f.json").read_text())["ok"] is False
    p.close()


def test_ctrl_c_during_wait_running_destroys(vast_fake: VastFake, control: httpx.Client, tmp_path: Path) -> None:
    control.post("/config", json={"boot_delay_s": 60}).raise_for_status()
    p = VastProvider(url=vast_fake.url, api_key=API_KEY, ssh_key_path=tmp_path / "k", requirements=REQ)
    calls = {"n": 0}
    real_get = p.get

    def get_then_interrupt(pid: str) -> object:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_get(pid)

    p.get = get_then_interrupt  # type: ignore[method-assign,assignment]
    with pytest.raises(KeyboardInterrupt):
        run_smoke(p, console=Console(file=io.StringIO()), report_path=tmp_path / "i.json")
    assert vast_fake.model.instances == {}
    rep = json.loads((tmp_path / "i.json").read_text())
    assert rep["ok"] is False and rep["destroyed"] is True and rep["error"] == "KeyboardInterrupt"
    p.close()


def test_declined_price_rents_nothing(vast_fake: VastFake, tmp_path: Path) -> None:
    p = VastProvider(url=vast_fake.url, api_key=API_KEY, ssh_key_path=tmp_path / "k", requirements=REQ)
    with pytest.raises(SmokeFailed, match="declined"):
        run_smoke(p, console=Console(file=io.StringIO()), confirm_price=lambda o: False)
    assert not any(m == "PUT" for m, _, _ in vast_fake.model.calls)
    p.close()


def test_smoke_command_exit_codes_and_json_on_stdout(vast_fake: VastFake, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    for var in ("SPOTLEASH_VAST_URL", "SPOTLEASH_VAST_API_KEY"):  # a running local stack's must not leak in
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("VAST_URL", vast_fake.url)
    monkeypatch.setenv("VAST_API_KEY", API_KEY)
    assert smoke_command(False, yes=True, output=tmp_path / "ok.json") == 0
    assert json.loads((tmp_path / "ok.json").read_text())["ok"] is True
    capsys.readouterr()
    # --json: the report is the whole of stdout; the table and the progress go to stderr
    assert smoke_command(False, yes=True, json_out=True) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["ok"] is True and report["destroyed"] is True and len(report["phases"]) == len(PHASES)
    assert "destroy instance" in err
    monkeypatch.setenv("VAST_API_KEY", "wrong-key")
    assert smoke_command(False, yes=True, output=tmp_path / "bad.json") != 0
    assert json.loads((tmp_path / "bad.json").read_text())["ok"] is False
    monkeypatch.delenv("VAST_API_KEY")
    monkeypatch.delenv("SPOTLEASH_VAST_API_KEY", raising=False)
    capsys.readouterr()
    assert smoke_command(True, yes=True, json_out=True) == 2  # --real without a key: refused
    out, err = capsys.readouterr()
    assert json.loads(out) == {"ok": False, "error": "--real needs VAST_API_KEY (your VAST.ai API key) in the environment"}
