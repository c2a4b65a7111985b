"""Unit tests read no configuration from the shell or from the session's local stack: a SPOTLEASH_*
variable left in os.environ by the stack fixture (project, VAST key...) must not change a unit test."""

from __future__ import annotations

import os

import pytest

from spotleash.config import ENV_PREFIX


@pytest.fixture(autouse=True)
def _no_spotleash_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(key)
