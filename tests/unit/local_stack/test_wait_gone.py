"""``wait_gone``: a process that exited is gone, reaped or not (init reaps an orphan when it gets to it)."""

from __future__ import annotations

import subprocess
import sys

import psutil
import pytest

from spotleash.supervisor.marked import wait_gone


def _orphan(code: str) -> psutil.Process:
    """A python child of a shell that exits at once: the child is init's, as a VM's background service is."""
    out = subprocess.run(["bash", "-c", f'{sys.executable} -c "{code}" </dev/null >/dev/null 2>&1 & echo $!'],
                         capture_output=True, text=True, check=True).stdout
    return psutil.Process(int(out))


def test_an_orphan_that_exited_is_gone_before_init_reaps_it() -> None:
    orphan = _orphan("import time; time.sleep(0.3)")
    assert orphan.ppid() != psutil.Process().pid
    assert wait_gone([orphan], 30) == []
    try:  # returned as soon as it exited: still a zombie here, unless init was quick
        assert orphan.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        pass


def test_a_process_still_running_at_the_timeout_is_returned() -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert [p.pid for p in wait_gone([psutil.Process(sleeper.pid)], 0.1)] == [sleeper.pid]
    finally:
        sleeper.kill()
        sleeper.wait(timeout=10)
    assert wait_gone([psutil.Process()], 0) != []  # this very process: running


def test_a_process_start_is_read_after_boot_so_a_clock_step_does_not_move_it() -> None:
    # psutil's create_time = boot time (from the wall clock) + start: this machine's clock stepped 18 s under a
    # running stack and every part looked like a recycled pid. started() is the start alone, in ticks after boot.
    from local_emulator.procs import started

    me = psutil.Process()
    assert abs(started(me.pid) - (me.create_time() - psutil.boot_time())) <= 1.0  # boot time is whole seconds
    assert started(me.pid) == started(me.pid)
    with pytest.raises(psutil.NoSuchProcess):
        started(2**22 + 7)  # above pid_max: no such process
