"""One agent per lease: the lock file, live holders, stale locks of dead or recycled pids."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from spotleash.agent.lock import Holder, LeaseLock, LockHeld, holder_alive, lock_path
from spotleash.supervisor.started import started


def _dead_pid() -> int:
    pid = 4_000_000
    while psutil.pid_exists(pid):
        pid -= 1
    return pid


def test_lock_records_pid_and_start_time_and_is_removed_on_release(tmp_path: Path) -> None:
    with LeaseLock(tmp_path, "lease-a") as lock:
        data = json.loads(lock_path(tmp_path, "lease-a").read_text())
        assert data["pid"] == os.getpid()
        assert data["started"] == started(os.getpid())
        assert lock.held
    assert not lock_path(tmp_path, "lease-a").exists()
    assert not lock.held


def test_a_live_holder_is_a_clear_error(tmp_path: Path) -> None:
    with LeaseLock(tmp_path, "lease-a"), pytest.raises(LockHeld, match=f"pid {os.getpid()}.*lease-a"):
        LeaseLock(tmp_path, "lease-a").acquire()


def test_other_leases_do_not_conflict(tmp_path: Path) -> None:
    with LeaseLock(tmp_path, "lease-a"), LeaseLock(tmp_path, "lease-b") as b:
        assert b.held


def test_stale_lock_of_a_dead_pid_is_recovered_with_a_log_line(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    dead = _dead_pid()
    lock_path(tmp_path, "lease-a").write_text(json.dumps({"pid": dead, "started": 12345.0}))
    with caplog.at_level(logging.WARNING, logger="spotleash.agent.lock"), LeaseLock(tmp_path, "lease-a") as lock:
        assert lock.held
        assert json.loads(lock_path(tmp_path, "lease-a").read_text())["pid"] == os.getpid()
    rec = next(r for r in caplog.records if "stale" in r.getMessage())
    assert rec.fields["stale_pid"] == dead and "gone" in rec.fields["reason"]  # type: ignore[attr-defined]


def test_stale_lock_of_a_reused_pid_is_recovered(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # The file names a pid that exists (ours) but that started at another time: the pid was recycled.
    me = os.getpid()
    lock_path(tmp_path, "lease-a").write_text(json.dumps({"pid": me, "started": started(me) - 500}))
    assert holder_alive(Holder(me, started(me) - 500)) == (False, f"pid {me} was reused by another process")
    with caplog.at_level(logging.WARNING, logger="spotleash.agent.lock"), LeaseLock(tmp_path, "lease-a"):
        pass
    assert any("reused" in r.fields.get("reason", "") for r in caplog.records)  # type: ignore[attr-defined]


def test_recorded_live_holder_is_refused_even_when_flock_is_free(tmp_path: Path) -> None:
    # flock not honoured (e.g. a network filesystem): the pid + start time still guard.
    me = os.getpid()
    lock_path(tmp_path, "lease-a").write_text(json.dumps({"pid": me, "started": started(me)}))
    with pytest.raises(LockHeld, match="live pid"):
        LeaseLock(tmp_path, "lease-a").acquire()


def test_the_start_time_is_the_same_read_from_another_process() -> None:
    # seconds after boot from /proc: what another process reads of us is what we recorded (a wall-clock figure
    # would move by any clock step between the two reads)
    code = "import sys; from spotleash.supervisor.started import started; print(repr(started(int(sys.argv[1]))))"
    out = subprocess.run([sys.executable, "-c", code, str(os.getpid())], capture_output=True, text=True, check=True)
    assert float(out.stdout) == started(os.getpid())


def test_garbage_in_the_lock_file_is_ignored(tmp_path: Path) -> None:
    lock_path(tmp_path, "lease-a").write_text("not json")
    with LeaseLock(tmp_path, "lease-a") as lock:
        assert lock.held


def test_release_is_idempotent_and_state_dir_is_created(tmp_path: Path) -> None:
    lock = LeaseLock(tmp_path / "deep" / "dir", "lease-a").acquire()
    lock.release()
    lock.release()
    assert LeaseLock(tmp_path / "deep" / "dir", "lease-a").acquire().held
