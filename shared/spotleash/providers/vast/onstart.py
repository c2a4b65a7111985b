"""What a VAST box runs at start, and the environment it gets. Pure, no I/O.

Every box runs, from its ``onstart``, a self-destruct watchdog (``python -m
spotleash.instance_agent.watchdog``, with a pure-bash fallback) that deletes the instance past its
deadline with its own ``CONTAINER_API_KEY``, then the instance bootstrap (its source text embedded,
standard library only) on the image's ``python3``: it fetches the pinned package through the signed
URL in the config, verifies and installs it, and execs the instance agent from the package's venv.
"""

from __future__ import annotations

import shlex
from datetime import UTC

from spotleash.providers.base import LaunchSpec
from spotleash.providers.embed import bootstrap_source, embed_file
from spotleash.wire.agent_config import FRONT_PORT, env_values


def build_onstart(spec: LaunchSpec, *, bootstrap: str | None = None) -> str:
    """The box's start script: the watchdog first (python, or a bash+curl fallback), then the bootstrap,
    which execs the agent. ``bootstrap``: a shell line run before everything (tests, image setup)."""
    deadline = spec.deadline.astimezone(UTC)
    epoch = int(deadline.timestamp())
    iso = deadline.isoformat()
    fallback = (
        f'while [ "$(date +%s)" -lt {epoch} ]; do sleep 5; done; '
        'until curl -fsS -X DELETE -H "Authorization: Bearer $CONTAINER_API_KEY" '
        '"${VAST_URL:-https://console.vast.ai}/api/v0/instances/$CONTAINER_ID/"; do sleep 10; done'
    )
    lines = [
        "#!/bin/bash",
        "# spotleash: self-destruct watchdog and instance agent",
        'LOGDIR="${HOME:-/root}/spotleash-logs"; mkdir -p "$LOGDIR"',
    ]
    if bootstrap:
        lines.append(f'{bootstrap} >>"$LOGDIR/bootstrap.log" 2>&1')
    lines += [
        "if python -c 'import spotleash.instance_agent.watchdog' >/dev/null 2>&1; then",
        f'  nohup python -m spotleash.instance_agent.watchdog --deadline {shlex.quote(iso)} '
        '>>"$LOGDIR/watchdog.log" 2>&1 &',
        "else",
        f"  nohup bash -c {shlex.quote(fallback)} >>\"$LOGDIR/watchdog.log\" 2>&1 &",
        "fi",
        'SPOTLEASH_DIR="${HOME:-/root}/spotleash"; mkdir -p "$SPOTLEASH_DIR/work"',
    ]
    run = ('nohup python3 "$SPOTLEASH_DIR/bootstrap.py" --provider vast --work-dir "$SPOTLEASH_DIR/work" '
           '>>"$LOGDIR/agent.log" 2>&1 &\n')
    return "\n".join(lines) + "\n" + embed_file('"$SPOTLEASH_DIR/bootstrap.py"', bootstrap_source()) + run


def front_port_option(port: int = FRONT_PORT) -> str:
    """The create's ``env`` key that makes VAST expose a container port, as the vastai SDK's ``parse_env``
    writes ``--env "-p 8443:8443"``: VAST maps it to a host port of its choosing, named in the instance's
    ``ports`` (``{"8443/tcp": [{"HostPort": ...}]}``) and, inside the box, in ``VAST_TCP_PORT_8443`` (the
    endpoint the instance agent reports: ``instance_agent.workload.endpoint_for``)."""
    return f"-p {port}:{port}"


def agent_env(spec: LaunchSpec) -> dict[str, str]:
    """The create's ``env``: ``spec.extra_env``, the instance agent's config and token, and, when the box
    runs the router's TLS front (a route credential is set), the option that exposes the front's port."""
    env = env_values(spec)
    if spec.route_credential_sha256:
        env[front_port_option()] = "1"
    return env
