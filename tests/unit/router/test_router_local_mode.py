"""The hand-off's word on a local copy (``LocalMode``): a stopped copy is never a target, a copy coming home is
preferred over a usable remote copy, and leaving STOPPED forgets the old copy's probes."""

from __future__ import annotations

import itertools

import pytest

from spotleash.router.table import Failure, LocalMode, RemoteState, RouteTable, TargetKind

FP = "ab" * 32
READY = RemoteState("sl-1", "READY", "healthy", "10.0.0.1:8443", FP)


def table(mode: LocalMode, *, remote_up: bool, local_up: bool = True) -> RouteTable:
    """One component with a local copy; its remote copy READY (probe passing when ``remote_up``)."""
    t = RouteTable({"thumbs": True})
    t.set_remotes({"thumbs": [READY]}, 0.0)
    t.record_probe("thumbs", "sl-1", remote_up, 1.0, None if remote_up else "refused", Failure.REFUSED)
    if not remote_up:
        t.record_probe("thumbs", "sl-1", False, 1.1, "refused", Failure.REFUSED)
    if not local_up:
        t.record_probe("thumbs", None, False, 1.2, "refused", Failure.REFUSED)
        t.record_probe("thumbs", None, False, 1.3, "refused", Failure.REFUSED)
    t.set_local_mode("thumbs", mode, 2.0)
    return t


EXPECTED = {  # (mode, remote usable, local answering) → target
    (LocalMode.AUTO, True, True): TargetKind.REMOTE,
    (LocalMode.AUTO, True, False): TargetKind.REMOTE,
    (LocalMode.AUTO, False, True): TargetKind.LOCAL,
    (LocalMode.AUTO, False, False): TargetKind.NONE,  # both refused: no panic target
    (LocalMode.STOPPED, True, True): TargetKind.REMOTE,
    (LocalMode.STOPPED, True, False): TargetKind.REMOTE,
    (LocalMode.STOPPED, False, True): TargetKind.NONE,  # the stopped copy is no target, even in panic
    (LocalMode.STOPPED, False, False): TargetKind.NONE,
    (LocalMode.HOME, True, True): TargetKind.LOCAL,  # coming home: local first while it answers
    (LocalMode.HOME, True, False): TargetKind.REMOTE,  # ... and the remote copy while it does not
    (LocalMode.HOME, False, True): TargetKind.LOCAL,
    (LocalMode.HOME, False, False): TargetKind.NONE,
}


@pytest.mark.parametrize(("mode", "remote_up", "local_up"), list(itertools.product(LocalMode, (True, False), (True, False))))
def test_every_mode(mode: LocalMode, remote_up: bool, local_up: bool) -> None:
    t = table(mode, remote_up=remote_up, local_up=local_up)
    assert t.current("thumbs").target == EXPECTED[(mode, remote_up, local_up)]
    assert t.local_mode("thumbs") == mode
    assert t.local_there("thumbs") == (mode != LocalMode.STOPPED)


def test_a_stopped_copy_is_no_panic_target_even_when_it_was_the_best() -> None:
    t = RouteTable({"thumbs": True})
    t.set_remotes({"thumbs": [READY]}, 0.0)
    t.record_probe("thumbs", "sl-1", True, 1.0)
    t.set_local_mode("thumbs", LocalMode.STOPPED, 1.5)
    for at in (2.0, 2.1):  # the remote copy dies
        t.record_probe("thumbs", "sl-1", False, at, "refused", Failure.REFUSED)
    assert t.current("thumbs").target == TargetKind.NONE
    assert not t.unsettled()  # the stopped copy's old probes do not keep the loop probing fast


def test_leaving_stopped_forgets_the_old_copys_probes() -> None:
    t = RouteTable({"thumbs": True})
    t.record_probe("thumbs", None, False, 1.0, "refused", Failure.REFUSED)
    t.record_probe("thumbs", None, False, 1.1, "refused", Failure.REFUSED)
    assert t.current("thumbs").target == TargetKind.NONE
    t.set_local_mode("thumbs", LocalMode.STOPPED, 1.2)
    changes = t.set_local_mode("thumbs", LocalMode.AUTO, 2.0)  # started again and healthy
    assert t.current("thumbs").target == TargetKind.LOCAL
    assert [c.new.target for c in changes] == [TargetKind.LOCAL]


def test_home_moves_traffic_off_a_usable_remote_and_auto_gives_it_back() -> None:
    t = table(LocalMode.AUTO, remote_up=True)
    assert t.current("thumbs").target == TargetKind.REMOTE
    [ch] = t.set_local_mode("thumbs", LocalMode.HOME, 3.0)
    assert (ch.old.target, ch.new.target) == (TargetKind.REMOTE, TargetKind.LOCAL)
    assert "came home" in ch.new.reason
    [back] = t.set_local_mode("thumbs", LocalMode.AUTO, 3.5)
    assert back.new.target == TargetKind.REMOTE


def test_reopen_after_a_release_takes_remote_copies_again() -> None:
    t = table(LocalMode.AUTO, remote_up=True)
    t.release_lease(3.0)
    assert t.current("thumbs").target == TargetKind.LOCAL
    t.reopen_lease(3.1)
    assert t.current("thumbs").target == TargetKind.REMOTE
