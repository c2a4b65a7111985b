"""The shared supervisor, one component at a time, with real processes: a command that does not exist is an
error naming its component while the others run; one component stops (its whole group, its RSS measured) and
starts again; a local copy's taken port is a failed start retried with backoff, never another port."""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from tests.support.component_processes import COMPONENT, free_port, wait_until

from spotleash.supervisor import Launch, Supervisor


def launch(name: str, mode: str = "ok", *, argv: tuple[str, ...] | None = None, port: int | None = None,
           **env: str) -> Launch:
    return Launch(name=name, argv=argv or (sys.executable, str(COMPONENT)), port=port or free_port(),
                  health_path="/healthz", timeout_s=30.0, env={"MODE": mode, **env})


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[Supervisor]]:
    sups: list[Supervisor] = []
    yield sups
    for sup in sups:
        sup.stop()


def supervise(sups: list[Supervisor], tmp_path: Path, *launches: Launch, port_fallback: bool = True) -> Supervisor:
    sup = Supervisor(list(launches), cwd=tmp_path, env=dict(os.environ), log_dir=tmp_path / "logs",
                     backoff_base_s=0.2, port_fallback=port_fallback)
    sups.append(sup)
    sup.start()
    return sup


def gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_missing_command_is_an_error_naming_the_component_and_the_others_run(
        started: list[Supervisor], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="spotleash.supervisor"):
        sup = supervise(started, tmp_path, launch("vision", argv=("no-such-command-xyz", "--serve")), launch("chat"))
        wait_until(lambda: sup.reports()["chat"].state == "healthy", 15, "chat healthy")
        wait_until(lambda: sup.runner("vision").restarts >= 2, 10, "vision retried")
    vision = sup.reports()["vision"]
    assert vision.state == "failing" and vision.error is not None
    assert "command 'no-such-command-xyz' cannot run: No such file or directory" in vision.error
    errors = [r for r in caplog.records if r.getMessage() == "component cannot start"]
    assert errors and {getattr(r, "fields", {}).get("component") for r in errors} == {"vision"}
    assert all(r.levelno == logging.ERROR for r in errors)
    assert sup.reports()["chat"].state == "healthy"


def test_a_command_exiting_at_once_is_an_error_naming_it(
        started: list[Supervisor], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="spotleash.supervisor"):
        sup = supervise(started, tmp_path, launch("vision", "crash"), launch("chat"))
        wait_until(lambda: sup.runner("vision").restarts >= 1 and sup.reports()["chat"].state == "healthy", 15,
                   "a crash and chat healthy")
    (line, *_) = [r for r in caplog.records if r.getMessage() == "component exited at once; restarting"]
    fields = getattr(line, "fields", {})
    assert line.levelno == logging.ERROR and fields["component"] == "vision" and fields["returncode"] == 3
    assert "boom: the model file is missing" in fields["reason"]


def test_one_component_stops_with_its_group_and_its_footprint_then_starts_again(
        started: list[Supervisor], tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    sup = supervise(started, tmp_path, launch("vision", "child", CHILD_PID_FILE=str(pid_file)), launch("chat"))
    wait_until(lambda: all(r.state == "healthy" for r in sup.reports().values()) and pid_file.exists(), 15,
               "both healthy, vision with a grandchild")
    vision, chat = sup.runner("vision"), sup.runner("chat")
    leader, grandchild, chat_pid = vision.pid, int(pid_file.read_text()), chat.pid
    assert leader is not None and chat_pid is not None
    expected = sum(psutil.Process(p).memory_info().rss for p in (leader, grandchild))

    freed = sup.stop_component("vision")
    assert 0.8 * expected <= freed <= 1.25 * expected, (freed, expected)  # the tree: the leader and its grandchild
    assert gone(leader) and gone(grandchild)
    log_text = vision.log_path.read_text()
    time.sleep(1.0)  # longer than the first restart pause (0.2 s): a stopped component is not restarted
    assert vision.log_path.read_text() == log_text and not vision.active
    assert chat.pid == chat_pid and sup.reports()["chat"].state == "healthy"

    pid_file.unlink()
    sup.start_component("vision")
    wait_until(lambda: sup.reports()["vision"].state == "healthy", 15, "vision healthy again")
    assert vision.pid not in (None, leader) and vision.restarts == 0


def test_a_local_copy_never_moves_port_a_taken_one_is_retried_until_free(
        started: list[Supervisor], tmp_path: Path) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    sup = supervise(started, tmp_path, launch("vision", port=port), port_fallback=False)
    wait_until(lambda: sup.runner("vision").restarts >= 2, 10, "two failed starts")
    report = sup.reports()["vision"]
    assert report.state == "failing" and f"port {port} is in use by another process" in (report.error or "")
    blocker.close()
    wait_until(lambda: sup.reports()["vision"].state == "healthy", 20, "healthy once the port is free")
    assert sup.reports()["vision"].endpoint == f"127.0.0.1:{port}"
