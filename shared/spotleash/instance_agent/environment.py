"""The environment every component on an instance starts from (the supervisor adds its own ``env`` and ``PORT``)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

MARKER_ENV = "SPOTLEASH_COMPONENT_OF"  # every component process carries the instance id in it
STATE_PATHS_ENV = "SPOTLEASH_STATE_PATHS"  # where a component keeps what must outlive its instance
# Never handed to the app: the agent's config (may hold a signed URL) and its heartbeat token.
SECRET_ENV = ("SPOTLEASH_AGENT_CONFIG", "SPOTLEASH_HEARTBEAT_TOKEN")


def component_env(base: Mapping[str, str], venv: Path, instance_id: str,
                  state_paths: Sequence[Path] = (), artifacts: Mapping[str, str] | None = None) -> dict[str, str]:
    """The agent's environment minus its secrets, venv first on PATH, the instance marker,
    ``SPOTLEASH_STATE_PATHS``: the directories whose content survives the instance (snapshotted, restored on
    the lease's next one), ``os.pathsep``-joined, empty when none is kept, and ``artifacts``: each
    ``SPOTLEASH_ARTIFACT_<NAME>`` → the fetched copy (``Prepared.artifact_env``)."""
    env = {k: v for k, v in base.items() if k not in SECRET_ENV}
    env.update(artifacts or {})
    env[STATE_PATHS_ENV] = os.pathsep.join(str(p) for p in state_paths)
    env.pop("PYTHONHOME", None)
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = os.pathsep.join([str(venv / "bin"), base.get("PATH", os.defpath)])
    env["PYTHONUNBUFFERED"] = "1"
    env[MARKER_ENV] = instance_id or "unknown"
    return env
