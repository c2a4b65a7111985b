"""The instance agent's snapshot thread (``instance_agent.keeper``) against the real control plane
(``handle_heartbeat`` in-process, its reply as the JSON body ``functions/main.py`` sends) and the Cloud
Storage emulator: restore before anything else, periodic snapshots only of changed state, one snapshot at
a time with the preemption notice first and each request once, a corrupt latest snapshot passed over for
the one before, and a restore that cannot happen keeping the components off."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.emulator.emulator_fixtures import gcs_emulator
from tests.support import snapshot_objects
from tests.support.builders import DEP, open_lease, put_record
from tests.support.memory_store import MemoryStore

from spotleash.config import Settings
from spotleash.instance_agent.keeper import SnapshotKeeper
from spotleash.instance_agent.snapshot.channel import parse_reply
from spotleash.model import SnapshotState, State
from spotleash.polling import wait_until
from spotleash.services.context import Context, token_hash
from spotleash.services.heartbeat import handle_heartbeat
from spotleash.wire.events import Heartbeat
from spotleash.wire.snapshot import SnapshotAsk, SnapshotReply, UploadAsk

pytestmark = [pytest.mark.emulator, pytest.mark.slow]

BUCKET = "spotleash-test-keeper"
LEASE = "lease-k"


@pytest.fixture(scope="module")
def gcs_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with gcs_emulator(tmp_path_factory.mktemp("gcs-logs"), BUCKET) as url:
        yield url


@pytest.fixture()
def http() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False, timeout=30) as client:
        yield client


@pytest.fixture()
def ctx(gcs_url: str, monkeypatch: pytest.MonkeyPatch, http: httpx.Client) -> Context:
    from spotleash.adapters.storage import Storage

    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    settings = Settings(deployment_id=DEP, heartbeat_signing_key="k" * 32, package_bucket=BUCKET)  # type: ignore[arg-type]
    c = Context(settings=settings, store=MemoryStore(DEP), storage=Storage(BUCKET, project="p", emulator=gcs_url))
    open_lease(c, LEASE, ttl_s=3600)
    c.test_http = http  # type: ignore[attr-defined]
    return c


class Channel:
    """A box's asks as heartbeats through the real service. Tracks how many snapshots are in flight."""

    def __init__(self, ctx: Context, instance_id: str) -> None:
        self.ctx, self.instance_id = ctx, instance_id
        self.uploads: list[UploadAsk] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.hold = threading.Event()  # cleared: the next UploadAsk waits until it is set
        self.hold.set()
        self.held = threading.Event()
        self._lock = threading.Lock()

    def ask(self, ask: SnapshotAsk, budget_s: float | None = None) -> SnapshotReply:
        with self._lock:
            if isinstance(ask, UploadAsk):
                self.uploads.append(ask)
                self.in_flight += 1
                self.most_in_flight = max(self.most_in_flight, self.in_flight)
            elif ask.op in ("uploaded", "abandoned"):
                self.in_flight -= 1
        if isinstance(ask, UploadAsk) and not self.hold.is_set():
            self.held.set()
            self.hold.wait(30)
        beat = Heartbeat(lease_id=LEASE, instance_id=self.instance_id, snapshot=ask)
        reply = handle_heartbeat(self.ctx, Heartbeat.model_validate_json(beat.model_dump_json()),
                                 self.ctx.heartbeat_token(self.instance_id))
        return parse_reply(json.dumps({"action": reply.action, "snapshot": reply.snapshot}), ask.op)

    @property
    def triggers(self) -> list[tuple[str, str | None]]:
        return [(u.trigger, u.request_id) for u in self.uploads]


def keeper_of(ctx: Context, iid: str, tmp: Path, *, interval_s: float = 0.0,
              state: State = State.READY, **kw: Any) -> tuple[SnapshotKeeper, Channel]:
    put_record(ctx, iid, LEASE, state, provider="vast", token_hash=token_hash(ctx.heartbeat_token(iid)))
    ch = Channel(ctx, iid)
    keeper = SnapshotKeeper(lease_id=LEASE, instance_id=iid, channel=ch, spool=tmp / f"spool-{iid}",
                            interval_s=interval_s, http=ctx.test_http, **kw)  # type: ignore[attr-defined]
    return keeper, ch


def digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def verified(ctx: Context) -> list[str]:
    done = [s for s in ctx.store.snapshots_of_lease(LEASE) if s.state is SnapshotState.VERIFIED]
    return [s.snapshot_id for s in sorted(done, key=lambda s: s.created_at)]


def test_periodic_snapshots_of_changed_state_then_a_new_box_restores_the_latest(ctx: Context, tmp_path: Path) -> None:
    ws1 = tmp_path / "box1" / "workspace"
    keeper, ch = keeper_of(ctx, "sl-k1", tmp_path, interval_s=0.2)
    keeper.begin([ws1])
    assert keeper.wait_restored(30) is None
    assert keeper.restore_outcome is not None and keeper.restore_outcome.snapshot_id is None  # first box: nothing
    ws1.mkdir(parents=True, exist_ok=True)
    (ws1 / "model.bin").write_bytes(b"weights v1" * 5000)
    wait_until(lambda: len(verified(ctx)) == 1, timeout_s=30, interval_s=0.1, what="the first periodic snapshot")
    (ws1 / "model.bin").write_bytes(b"weights v2" * 5000)
    (ws1 / "notes.txt").write_text("epoch 2\n")
    wait_until(lambda: len(verified(ctx)) == 2, timeout_s=30, interval_s=0.1, what="a snapshot of the change")
    want = digest(ws1)
    # Unchanged state: the periodic trigger keeps firing and uploads nothing.
    checks = keeper.periodic_checks
    wait_until(lambda: keeper.periodic_checks >= checks + 3, timeout_s=30, interval_s=0.05,
               what="three more periods")
    keeper.stop()
    assert len(ch.uploads) == 2 and ch.triggers == [("periodic", None), ("periodic", None)]

    ws2 = tmp_path / "box2" / "workspace"
    keeper2, _ = keeper_of(ctx, "sl-k2", tmp_path, state=State.READY)
    keeper2.begin([ws2])
    assert keeper2.wait_restored(60) is None
    assert keeper2.restore_outcome is not None and keeper2.restore_outcome.snapshot_id == verified(ctx)[-1]
    assert digest(ws2) == want
    keeper2.stop()


def test_one_snapshot_at_a_time_preemption_first_each_request_once(ctx: Context, tmp_path: Path) -> None:
    ws = tmp_path / "box" / "workspace"
    ws.mkdir(parents=True)
    (ws / "a.txt").write_text("a")
    keeper, ch = keeper_of(ctx, "sl-k3", tmp_path)
    keeper.begin([ws])
    assert keeper.wait_restored(30) is None
    ch.hold.clear()
    assert keeper.ask("requested", "req-1", "pre-destroy")
    assert ch.held.wait(30)  # the first snapshot is uploading; everything below arrives meanwhile
    assert not keeper.ask("requested", "req-1", "repeated in the next reply")
    assert keeper.ask("requested", "req-2", "hibernate")
    assert keeper.ask("preempted")
    assert not keeper.ask("preempted")  # one preemption snapshot is enough
    ch.hold.set()
    wait_until(lambda: len(verified(ctx)) == 3, timeout_s=60, interval_s=0.1, what="three snapshots")
    keeper.stop()
    assert ch.triggers == [("requested", "req-1"), ("preempted", None), ("requested", "req-2")]
    assert ch.most_in_flight == 1
    by_request = {s.snapshot_id: s for s in ctx.store.snapshots_of_lease(LEASE)}
    assert len(by_request) == 3


def test_a_corrupt_latest_snapshot_is_passed_over_for_the_one_before(ctx: Context, tmp_path: Path) -> None:
    ws = tmp_path / "box" / "workspace"
    ws.mkdir(parents=True)
    (ws / "state.txt").write_text("one")
    keeper, _ = keeper_of(ctx, "sl-k4", tmp_path)
    keeper.begin([ws])
    assert keeper.wait_restored(30) is None
    keeper.ask("requested", "r-one")
    wait_until(lambda: len(verified(ctx)) == 1, timeout_s=30, interval_s=0.1, what="snapshot one")
    first = digest(ws)
    (ws / "state.txt").write_text("two, longer")
    keeper.ask("requested", "r-two")
    wait_until(lambda: len(verified(ctx)) == 2, timeout_s=30, interval_s=0.1, what="snapshot two")
    keeper.stop()
    one, two = verified(ctx)
    snapshot_objects.corrupt(ctx.bucket(), snapshot_objects.part_name(LEASE, two))

    ws2 = tmp_path / "box2" / "workspace"
    keeper2, _ = keeper_of(ctx, "sl-k5", tmp_path, state=State.READY)
    keeper2.begin([ws2])
    assert keeper2.wait_restored(60) is None
    keeper2.stop()
    got = keeper2.restore_outcome
    assert got is not None and got.snapshot_id == one and list(got.fell_back) == [two]
    assert digest(ws2) == first
    snap = ctx.store.get_snapshot(two)
    assert snap is not None and snap.state is SnapshotState.CORRUPT


def test_a_restore_that_cannot_happen_keeps_the_components_off(ctx: Context, tmp_path: Path) -> None:
    # The control plane answers "stop" and no snapshot ask to an instance it considers gone (TERMINATED).
    keeper, _ = keeper_of(ctx, "sl-k6", tmp_path, state=State.TERMINATED, restore_budget_s=1.5)
    keeper.begin([tmp_path / "ws"])
    failure = keeper.wait_restored(60)
    assert failure is not None and failure.reason == "restore_failed" and "no snapshot answer" in failure.detail
    keeper.ask("requested", "after-failure")
    keeper.stop()
    assert keeper.outcomes == [] and ctx.store.snapshots_of_lease(LEASE) == []  # empty state is never saved
