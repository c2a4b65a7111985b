"""Whether the agent under test hands its local copies off (the hand-off of issue 22), for the real-memory tests'
skip. The laptop they run in (cgroup, ballast app, hog) is ``local_emulator.laptop``; their load is
``local_emulator.load.Load``."""

from __future__ import annotations

import importlib.util
import os


def handoff_landed() -> bool:
    """Whether this tree's agent hands its local copies off (stop once remote, start to come home): the hand-off
    module of issue 22 (``spotleash.agent.handoff``) exists. ``SPOTLEASH_EXPECT_HANDOFF=1``/``0`` forces it."""
    forced = os.environ.get("SPOTLEASH_EXPECT_HANDOFF")
    if forced in ("0", "1"):
        return forced == "1"
    return importlib.util.find_spec("spotleash.agent.handoff") is not None
