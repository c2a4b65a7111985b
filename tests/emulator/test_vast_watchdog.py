"""The on-box watchdog destroys its instance past the deadline with nothing else of spotleash running."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psutil
import pytest
from tests.emulator import vast_fixtures as fx
from tests.emulator.vast_fixtures import API_KEY, spec
from vastai import VastAI

from local_emulator.vast import VastFake
from spotleash.providers.vast import agent_env, build_onstart

pytestmark = pytest.mark.emulator
vast_fake = fx.vast_fake


def test_watchdog_destroys_instance_past_deadline(vast_fake: VastFake) -> None:
    # Only the fake runs: the instance is created with the plain SDK, and no spotleash service exists.
    deadline = datetime.now(UTC) + timedelta(seconds=4)
    s = spec("wd", deadline_s=4)
    s = type(s)(**{**s.__dict__, "deadline": deadline})
    v = VastAI(api_key=API_KEY, server_url=vast_fake.url, raw=True)
    offer = v.search_offers("num_gpus=1", order="dph_total", limit=1)[0]
    iid = v.create_instance(offer["id"], image="img", label="spotleash:dep:lease:wd", env=agent_env(s),
                            onstart_cmd=build_onstart(s))["new_contract"]
    fx.wait_for(lambda: v.show_instance(iid)["actual_status"] == "running", timeout=10, what="running")
    folder = vast_fake.model.get(iid).folder
    def watchdogs() -> list[int]:
        found = []
        for pid in fx.instance_pids(vast_fake):  # read afresh: onstart's short-lived steps come and go
            try:
                if "watchdog" in " ".join(psutil.Process(pid).cmdline()):
                    found.append(pid)
            except psutil.Error:
                continue
        return found

    watchdog = fx.wait_for(watchdogs, timeout=10, what="watchdog process")
    assert watchdog
    pids = fx.instance_pids(vast_fake)
    assert v.show_instance(iid) is not None  # alive before the deadline
    fx.wait_for(lambda: v.show_instance(iid) is None, timeout=30, every=0.2, what="self-destroy")
    assert datetime.now(UTC) >= deadline
    fx.wait_for(lambda: not folder.exists(), timeout=15, what="instance folder removed after its processes")
    fx.assert_no_instance_processes(pids)
    destroys = [c for c in vast_fake.model.calls if c[0] == "DELETE"]
    assert destroys and destroys[-1][2] == 200  # made by the box itself with its CONTAINER_API_KEY


def test_watchdog_cli_gives_up_cleanly_without_env() -> None:
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "spotleash.instance_agent.watchdog", "--deadline",
                        datetime.now(UTC).isoformat()], env={"PATH": "/usr/bin:/bin"}, capture_output=True,
                       timeout=30, text=True)
    assert r.returncode == 2 and "CONTAINER_ID" in r.stderr
