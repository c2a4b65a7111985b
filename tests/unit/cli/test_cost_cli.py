"""``spotleash cost`` in-process on the in-memory store, with a fixed clock: figures by hand, and the budget
guard's month-to-date spend equals the command's total."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from tests.support.memory_store import MemoryStore

from spotleash.cli.cost import cost_command, parse_since
from spotleash.config import Settings
from spotleash.errors import BadInput
from spotleash.model import InstanceRecord, Lease, State
from spotleash.services.context import Context
from spotleash.services.launch import gather_facts

NOW = datetime(2026, 11, 3, 12, 0, tzinfo=UTC)
DEP = "dep-cost"


def t(day: int, hour: int = 0, minute: int = 0, month: int = 11) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


def rec(iid: str, state: State, *, running: datetime, ended: datetime | None = None, price: float,
        provider: str = "gce", dep: str = DEP, **more: Any) -> InstanceRecord:
    return InstanceRecord.model_validate({
        "instance_id": iid, "lease_id": more.pop("lease_id", "lease-a"), "deployment_id": dep, "event_id": f"e-{iid}",
        "provider": provider, "state": state, "created_at": running - timedelta(minutes=1),
        "updated_at": ended or running, "deadline": more.pop("deadline", running + timedelta(hours=3)),
        "running_at": running, "ended_at": ended, "price_per_hour": price, "provider_id": f"p-{iid}",
        "zone": "us-central1-a" if provider == "gce" else "Quebec, CA",
        "machine": "e2-highmem-4" if provider == "gce" else "RTX 4090", **more})


@pytest.fixture
def store() -> MemoryStore:
    s = MemoryStore(DEP)
    # Oct 31 23:00 -> Nov 1 01:00 at 0.06: November's share 1 h = 0.06 (Nov 1)
    s.put(rec("sl-gce-1", State.TERMINATED, running=t(31, 23, month=10), ended=t(1, 1), price=0.06,
              reason="release: agent exit", components=["vision"]))
    # VAST Nov 2 22:00, stopped Nov 3 00:00, deleted Nov 3 01:00; dph 0.30 of which storage 0.02:
    # gpu 2 h x 0.28 = 0.56 (Nov 2); storage 3 h x 0.02 = 0.06 (0.04 Nov 2, 0.02 Nov 3): 0.62
    s.put(rec("sl-vast-1", State.TERMINATED, provider="vast", running=t(2, 22), ended=t(3, 1), price=0.30,
              storage_per_hour=0.02, stopped_at=t(3, 0), reason="stopped_at_provider", lease_id="lease-b",
              components=["ml_models"]))
    # Live since 10:30, deleted mid-hour? no: still READY at 12:00: 1.5 h x 0.10 = 0.15 (Nov 3)
    s.put(rec("sl-gce-2", State.READY, running=t(3, 10, 30), price=0.10, deadline=t(3, 13, 30)))
    # Another deployment's instance: not ours
    s.for_deployment("dep-other").put(rec("sl-theirs", State.READY, running=t(3, 1), price=5.0, dep="dep-other"))
    # Ended in October: outside the window
    s.put(rec("sl-october", State.TERMINATED, running=t(20, 1, month=10), ended=t(20, 2, month=10), price=1.0))
    return s


def run(store: MemoryStore, tmp_path: Path, *args: Any, json_out: bool = True) -> tuple[int, str]:
    out = io.StringIO()
    settings = Settings(deployment_id=DEP, state_dir=tmp_path)
    if json_out:
        import contextlib

        with contextlib.redirect_stdout(out):
            code = cost_command(settings, *args, json_out=True, store=store, now=NOW)
    else:
        code = cost_command(settings, *args, json_out=False, store=store, now=NOW,
                            console=Console(file=out, width=200, color_system=None))
    return code, out.getvalue()


def test_json_month_to_date_by_hand(store: MemoryStore, tmp_path: Path) -> None:
    code, out = run(store, tmp_path, None)
    data = json.loads(out)
    assert code == 0 and data["since"] == "2026-11-01T00:00:00+00:00" and data["now"] == NOW.isoformat()
    assert data["total"] == pytest.approx(0.06 + 0.62 + 0.15)
    assert data["by_day"] == {"2026-11-01": 0.06, "2026-11-02": 0.6, "2026-11-03": 0.17}
    assert data["by_lease"] == {"lease-a": 0.21, "lease-b": 0.62}
    assert data["by_provider"] == {"gce": 0.21, "vast": 0.62}
    assert data["by_reason"] == {"(live)": 0.15, "release": 0.06, "stopped_at_provider": 0.62}
    assert data["by_charge"] == {"compute": 0.21, "gpu": 0.56, "storage": 0.06}
    assert data["by_component"] == {"(none)": 0.15, "ml_models": 0.62, "vision": 0.06}
    rows = {r["instance_id"]: r for r in data["instances"]}
    assert set(rows) == {"sl-gce-1", "sl-vast-1", "sl-gce-2"}
    assert rows["sl-gce-2"]["billing"] is True and rows["sl-gce-2"]["cost"] == 0.15
    assert rows["sl-vast-1"]["hours"] == 3.0


def test_since_narrows_the_window(store: MemoryStore, tmp_path: Path) -> None:
    data = json.loads(run(store, tmp_path, "2026-11-03")[1])
    # Nov 3 only: vast storage 00:00-01:00 = 0.02, sl-gce-2 = 0.15
    assert data["total"] == pytest.approx(0.17) and list(data["by_day"]) == ["2026-11-03"]


def test_the_budget_guard_sees_the_same_month_to_date_total(store: MemoryStore, tmp_path: Path) -> None:
    store.put_lease(Lease(lease_id="lease-a", deployment_id=DEP, expires_at=NOW + timedelta(minutes=1),
                          renewed_at=NOW))
    ctx = Context(settings=Settings(deployment_id=DEP, state_dir=tmp_path), store=store, clock=lambda: NOW)
    facts = gather_facts(ctx, "lease-a", NOW)
    assert facts.month_spend == pytest.approx(json.loads(run(store, tmp_path, None)[1])["total"])
    assert facts.month_committed == pytest.approx(0.15)  # sl-gce-2: 1.5 h left at 0.10


def test_the_table_shows_every_instance_and_the_totals(store: MemoryStore, tmp_path: Path) -> None:
    code, out = run(store, tmp_path, None, json_out=False)
    assert code == 0
    for text in ("sl-gce-1", "sl-vast-1", "sl-gce-2", "stopped_at_provider", "by day", "2026-11-02", "0.6000",
                 "by lease", "by provider", "by reason ended", "0.8300", "0.3000 (0.0200 storage)"):
        assert text in out, text
    assert "sl-theirs" not in out and "sl-october" not in out


def test_an_empty_window_says_so(tmp_path: Path) -> None:
    code, out = run(MemoryStore(DEP), tmp_path, None, json_out=False)
    assert code == 0 and "no instance billed anything" in out


def test_a_bad_since_is_a_usage_error(store: MemoryStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(store, tmp_path, "yesterday")[0] == 2
    assert run(store, tmp_path, "2026-12-01")[0] == 2  # the future


def test_parse_since() -> None:
    assert parse_since(None, NOW) == t(1)
    assert parse_since("2026-10-15", NOW) == datetime(2026, 10, 15, tzinfo=UTC)
    assert parse_since("2026-11-02T06:00:00+02:00", NOW) == t(2, 4)
    with pytest.raises(BadInput, match="time zone"):
        parse_since("2026-11-02T06:00:00", NOW)
    with pytest.raises(BadInput, match="not a date"):
        parse_since("11/02/2026", NOW)
