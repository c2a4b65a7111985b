"""The in-process Compute Engine fake for emulator tests: import ``fake`` and ``clean`` into a test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from local_emulator.compute import ComputeFake


@pytest.fixture(scope="module")
def fake() -> Iterator[ComputeFake]:
    f = ComputeFake(boot_delay_s=0.2, wait_timeout_s=10).start()
    try:
        yield f
    finally:
        f.stop()


@pytest.fixture(autouse=True)
def clean(fake: ComputeFake) -> Iterator[None]:
    fake.model.reset()
    fake.model.clock.set_scale(1.0)
    yield
    fake.model.reset()
