"""The snapshot keeper's listing of the restored state is taken before the restore is announced.

The components start once ``restored`` is set (``instance_agent.agent``). A listing taken after that counted
a change they made in between as saved, and no periodic snapshot ever took it: on a loaded machine,
tests/emulator/test_snapshot_keeper.py waited 30 s for a first periodic snapshot that never came.
"""

from __future__ import annotations

from pathlib import Path

from spotleash.instance_agent.keeper import SnapshotKeeper
from spotleash.polling import wait_until
from spotleash.wire.snapshot import Noted, Refused, RestoreGrant, SnapshotAsk, SnapshotReply, UploadAsk


class _Channel:
    """Nothing to restore; every upload refused (the keeper's attempt is what this test looks for)."""

    def __init__(self) -> None:
        self.asks: list[SnapshotAsk] = []

    def ask(self, ask: SnapshotAsk, budget_s: float | None = None) -> SnapshotReply:  # noqa: ARG002
        self.asks.append(ask)
        if ask.op == "restore":
            return RestoreGrant()
        if ask.op == "upload":
            return Refused(detail="this test only looks at the attempt")
        return Noted()


def test_state_written_the_moment_the_restore_ends_is_snapshotted(tmp_path: Path) -> None:
    ws = tmp_path / "workspace"
    written: list[bool] = []

    def component_writes() -> None:  # announced restored: a component starts and writes its state at once
        if not written:
            ws.mkdir(parents=True, exist_ok=True)
            (ws / "model.bin").write_bytes(b"weights v1" * 100)
            written.append(True)

    channel = _Channel()
    keeper = SnapshotKeeper(lease_id="lease-1", instance_id="sl-1", channel=channel, spool=tmp_path / "spool",
                            interval_s=0.01, on_change=component_writes)
    keeper.begin([ws])
    try:
        assert keeper.wait_restored(30) is None
        wait_until(lambda: keeper.periodic_checks >= 3, timeout_s=30, interval_s=0.01, what="three periods")
    finally:
        keeper.stop()
    assert written  # on_change ran in the keeper's thread, before its periods
    uploads = [a for a in channel.asks if isinstance(a, UploadAsk)]
    assert uploads and uploads[0].trigger == "periodic"


class _BreaksOnce(_Channel):
    """The first upload ask raises what no snapshot code expects (a bug, a client's new exception)."""

    def ask(self, ask: SnapshotAsk, budget_s: float | None = None) -> SnapshotReply:
        if isinstance(ask, UploadAsk) and not any(isinstance(a, UploadAsk) for a in self.asks):
            self.asks.append(ask)
            raise RuntimeError("unforeseen")
        return super().ask(ask, budget_s)


def test_an_unforeseen_error_in_one_snapshot_does_not_end_the_later_ones(tmp_path: Path) -> None:
    ws = tmp_path / "workspace"
    ws.mkdir()
    channel = _BreaksOnce()
    keeper = SnapshotKeeper(lease_id="lease-1", instance_id="sl-1", channel=channel, spool=tmp_path / "spool",
                            interval_s=0.01)
    keeper.begin([ws])
    try:
        assert keeper.wait_restored(30) is None
        (ws / "model.bin").write_bytes(b"weights v1" * 100)  # a change after the restore: snapshots follow
        wait_until(lambda: sum(isinstance(a, UploadAsk) for a in channel.asks) >= 2, timeout_s=30, interval_s=0.01,
                   what="a second snapshot after the first one raised")
    finally:
        keeper.stop()
