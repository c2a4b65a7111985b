"""The hand-off's API on real processes: ``LocalCopies.stop(component)`` ends its group and returns what it held,
``LocalCopies.start(component)`` returns once it answers its health path, or fails naming why."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from tests.support.component_processes import COMPONENT, free_port

from spotleash.agent.local_copies import LocalCopies, LocalCopyError, local_plan
from spotleash.polling import wait_until
from spotleash.wire.package import AppSpec


def spec(ports: dict[str, int]) -> AppSpec:
    return AppSpec.model_validate({"name": "t", "components": [
        {"name": "vision", "command": [sys.executable, str(COMPONENT)], "port": 8101, "env": {"MODE": "ok"},
         "local_url": f"http://127.0.0.1:{ports['vision']}"},
        {"name": "sick", "command": [sys.executable, str(COMPONENT)], "port": 8102, "env": {"MODE": "sick"},
         "local_url": f"http://127.0.0.1:{ports['sick']}"}]})


@pytest.fixture
def copies(tmp_path: Path) -> Iterator[LocalCopies]:
    ports = {"vision": free_port(), "sick": free_port()}
    c = LocalCopies(local_plan(spec(ports), ["vision", "sick"]), app_root=tmp_path, lease_id="api-test",
                    state_dir=tmp_path / "state", backoff_base_s=0.2)
    c.start_all()
    yield c
    c.close()


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_stop_frees_the_copy_and_start_waits_until_it_answers(copies: LocalCopies) -> None:
    url = f"http://127.0.0.1:{copies.plan.launches[0].port}/healthz"
    wait_until(lambda: answers(url), timeout_s=15, what="vision answering")
    pid = copies.supervisor.runner("vision").pid
    assert pid is not None
    held = psutil.Process(pid).memory_info().rss
    freed = copies.stop("vision")
    assert 0.8 * held <= freed <= 1.25 * held
    assert not answers(url) and not psutil.pid_exists(pid)
    report = copies.start("vision", timeout_s=15)
    assert report.state == "healthy" and answers(url)
    assert copies.supervisor.runner("vision").pid != pid


def test_start_of_a_copy_that_never_gets_healthy_names_why(copies: LocalCopies) -> None:
    copies.stop("sick")
    with pytest.raises(LocalCopyError, match=r"the local copy of sick is not healthy after 1 s: .*HTTP 503"):
        copies.start("sick", timeout_s=1.0)
