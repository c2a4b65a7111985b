"""A memory source that cannot read this machine stops the agent at start, saying what to change."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from spotleash.agent import agent_main
from spotleash.config import Settings
from spotleash.errors import ExitCode


@pytest.mark.skipif(sys.platform == "darwin", reason="the macOS source is the right one there")
def test_the_macos_source_on_linux_fails_at_start_with_exit_2(tmp_path: Path, capfd: pytest.CaptureFixture[str]
                                                               ) -> None:
    settings = Settings(memory_source="macos", state_dir=tmp_path, router_admin_port=None)
    assert agent_main(settings, "lease-mem", None) == ExitCode.USAGE
    err = capfd.readouterr()
    text = err.out + err.err
    assert "SPOTLEASH_MEMORY_SOURCE=macos" in text and "choose another of auto, host" in text, text
    assert not list(tmp_path.glob("*.lock")), "no lease lock taken before the check"
