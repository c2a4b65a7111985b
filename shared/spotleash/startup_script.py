"""The startup script of a real GCE VM: install Python, install spotleash, run the instance agent
under systemd (logs to the journal). It goes into the ``startup-script`` metadata value, never on a
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

VALUES_END = "# --- end of values"
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/-]{1,200}$")
_SAFE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
DEFAULT_PACKAGE_SOURCE = "spotleash"

_BODY = r"""
export DEBIAN_FRONTEND=noninteractive
if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  apt-get update -q
  apt-get install -y -q python3 python3-venv python3-pip
fi

mkdir -p "$INSTALL_DIR"
if [ ! -x "$INSTALL_DIR/venv/bin/python" ]; then
  python3 -m venv "$INSTALL_DIR/venv"
fi

case "$PACKAGE_SOURCE" in
  gs://*)
    package="$INSTALL_DIR/$(basename -- "$PACKAGE_SOURCE")"
    gcloud storage cp -- "$PACKAGE_SOURCE" "$package"
    ;;
  *)
    package="$PACKAGE_SOURCE"
    ;;
esac
"$INSTALL_DIR/venv/bin/pip" install --quiet --upgrade -- "$package"

unit="/etc/systemd/system/$SERVICE_NAME.service"
cat >"$unit" <<UNIT
[Unit]
Description=spotleash instance agent
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=$INSTALL_DIR/venv/bin/python -m spotleash.instance_agent --provider $AGENT_PROVIDER
Restart=on-failure
RestartSec=5
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
    package_source: str = DEFAULT_PACKAGE_SOURCE,
    provider: str = "gce",
    install_dir: str = "/opt/spotleash",
    service_name: str = "spotleash-agent",
) -> str:
    """The script. ``package_source``: a pip requirement, a wheel URL, or a ``gs://`` path to a wheel."""
    if provider not in PROVIDER_NAMES:
        raise ValueError(f"provider must be one of {', '.join(PROVIDER_NAMES)}, not {provider!r}")
    if not _SAFE_PATH.match(install_dir) or ".." in install_dir.split("/"):
        raise ValueError(f"install_dir must be an absolute plain path, not {install_dir!r}")
    if not _SAFE_NAME.match(service_name):
        raise ValueError(f"service_name must match {_SAFE_NAME.pattern}, not {service_name!r}")
    if not package_source.strip():
        raise ValueError("package_source must not be empty")
    head = "#!/bin/bash\n# spotleash instance bootstrap (rendered by spotleash.startup_script)\nset -euo pipefail\n"
    values = assignments(
        {
            "PACKAGE_SOURCE": package_source,
            "AGENT_PROVIDER": provider,
            "INSTALL_DIR": install_dir,
            "SERVICE_NAME": service_name,
        }
    )
    return head + values + VALUES_END + "\n" + _BODY
