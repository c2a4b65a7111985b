"""The startup script of a real GCE VM: make sure a python3 with ``venv`` exists, write the instance
bootstrap (``spotleash.instance_agent.bootstrap``, standard library only, its source text embedded byte
for byte) and run it under systemd (logs to the journal). The bootstrap fetches the package the launch
pinned, verifies it, installs it into its own venv and execs the instance agent from there; nothing is
pip-installed from a public index. It goes into the ``startup-script`` metadata value, never on a
command line.

Every interpolated value is shell-quoted with ``shlex.quote`` and assigned once, at the top, in the
block that ends with ``VALUES_END``; the rest of the script only ever expands those variables inside
double quotes, so a hostile value stays inert. Values that also land in the systemd unit (install
dir, service name, provider) are restricted to a safe alphabet up front.
"""

from __future__ import annotations

import re
import shlex

from spotleash.providers import PROVIDER_NAMES
from spotleash.providers.embed import bootstrap_source, embed_file

VALUES_END = "# --- end of values"
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/-]{1,200}$")
_SAFE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")

# ``SPOTLEASH_VM_ROOT`` is unset on a real VM; the local Compute fake sets it to the fake VM's own
# directory, so every path the script writes (/opt, /etc/systemd) lands there (see local_emulator.vmshim).
_PREPARE = r"""
ROOT="${SPOTLEASH_VM_ROOT:-}"
INSTALL_DIR="$ROOT$INSTALL_DIR"
export DEBIAN_FRONTEND=noninteractive
if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  apt-get update -q
  apt-get install -y -q python3 python3-venv
fi
PYTHON="$(command -v python3)"

mkdir -p "$INSTALL_DIR/work"
"""

_RUN = r"""
mkdir -p "$ROOT/etc/systemd/system"
unit="$ROOT/etc/systemd/system/$SERVICE_NAME.service"
cat >"$unit" <<UNIT
[Unit]
Description=spotleash instance bootstrap and agent
Wants=network-online.target
After=network-online.target

[Service]
Environment=PYTHONUNBUFFERED=1
ExecStart=$PYTHON $INSTALL_DIR/bootstrap.py --provider $AGENT_PROVIDER --work-dir $INSTALL_DIR/work
Restart=on-failure
RestartSec=5
RestartPreventExitStatus=1 2
KillMode=control-group
StandardOutput=journal
StandardError=journal

[Install]
WantedBy=multi-user.target
UNIT

systemctl daemon-reload
systemctl enable --now "$SERVICE_NAME.service"
echo "spotleash: $SERVICE_NAME started"
"""


def assignments(values: dict[str, str]) -> str:
    """``NAME='value'`` lines, each value quoted so the shell reads it back byte for byte."""
    return "".join(f"{name}={shlex.quote(value)}\n" for name, value in values.items())


def render_startup_script(
    *,
    provider: str = "gce",
    install_dir: str = "/opt/spotleash",
    service_name: str = "spotleash-agent",
) -> str:
    """The script. The bootstrap reads the agent's config (with the pinned package) from the metadata."""
    if provider not in PROVIDER_NAMES:
        raise ValueError(f"provider must be one of {', '.join(PROVIDER_NAMES)}, not {provider!r}")
    if not _SAFE_PATH.match(install_dir) or ".." in install_dir.split("/"):
        raise ValueError(f"install_dir must be an absolute plain path, not {install_dir!r}")
    if not _SAFE_NAME.match(service_name):
        raise ValueError(f"service_name must match {_SAFE_NAME.pattern}, not {service_name!r}")
    head = "#!/bin/bash\n# spotleash instance startup (rendered by spotleash.providers.gce.startup_script)\nset -euo pipefail\n"
    values = assignments({"AGENT_PROVIDER": provider, "INSTALL_DIR": install_dir, "SERVICE_NAME": service_name})
    return (head + values + VALUES_END + "\n" + _PREPARE
            + embed_file('"$INSTALL_DIR/bootstrap.py"', bootstrap_source()) + _RUN)
