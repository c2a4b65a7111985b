"""Fixtures shared by the VAST tests: an in-process fake, a provider on it, and process checks."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psutil
import pytest

from local_emulator.vast import VastFake
from spotleash.providers.base import GpuRequirements, LaunchSpec
from spotleash.providers.vast import VastProvider

API_KEY = "test-vast-key-0123456789"
REQ = GpuRequirements(gpu_names=("RTX 4090", "RTX 3090"), min_vram_gb=16, max_dph=1.0, min_reliability=0.9,
                      verified=True)


def wait_for(cond: Callable[[], object], *, timeout: float = 20.0, every: float = 0.1, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def instance_pids(fake: VastFake) -> list[int]:
    return [pid for i in fake.model.inspect()["instances"] for pid in i["pids"]]


def assert_no_instance_processes(pids: list[int]) -> None:
    alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"instance processes still running: {alive}"


@pytest.fixture
def vast_fake() -> Iterator[VastFake]:
    fake = VastFake(api_key=API_KEY, boot_delay_s=0.6).start()
    try:
        yield fake
    finally:
        pids = instance_pids(fake)
        fake.stop()
        assert_no_instance_processes(pids)


@pytest.fixture
def control(vast_fake: VastFake) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=vast_fake.url + "/_control", timeout=10) as c:
        yield c


@pytest.fixture
def provider(vast_fake: VastFake, tmp_path: Path) -> Iterator[VastProvider]:
    p = VastProvider(url=vast_fake.url, api_key=API_KEY, ssh_key_path=tmp_path / "ssh" / "key",
                     requirements=REQ, attempts=4, timeout_s=5.0)
    try:
        yield p
    finally:
        p.close()


def spec(instance_id: str = "inst-1", *, lease: str = "lease-1", deployment: str = "dep-test",
         deadline_s: float = 3600, **kw: object) -> LaunchSpec:
    return LaunchSpec(instance_id=instance_id, lease_id=lease, deployment_id=deployment,
                      deadline=datetime.now(UTC) + timedelta(seconds=deadline_s), max_run_s=int(deadline_s),
                      gpu=REQ, image="pytorch/pytorch:latest", **kw)  # type: ignore[arg-type]
