"""The thin shim that lets a fake VM or box run its real start script on this machine.

What a fake runs is exactly the script a real instance gets (the GCE ``startup-script`` metadata value,
a VAST ``onstart``). The few steps that cannot run here as written go through this shim:

- ``bin/`` is first on the fake instance's ``PATH``: ``apt-get`` is a logged no-op (this machine
  already has python3 with venv); ``systemctl daemon-reload`` is a no-op and ``systemctl enable --now
  UNIT`` starts the unit's ``ExecStart`` (with its ``Environment=``) in the background, its output in
  ``<root>/var/log/journal/UNIT.log`` — in the VM's own process group, so it dies with the VM;
- ``SPOTLEASH_VM_ROOT`` is the fake VM's own directory: the startup script writes ``/opt/spotleash``
  and ``/etc/systemd/system`` under it (on a real VM the variable is unset and the paths are the real ones);
- ``python3`` on ``PATH`` is the interpreter that runs the fakes (this checkout's venv, Python 3.11),
  standing in for the image's system python3. It has spotleash installed, so an instance launched
  without a package (heartbeats only) runs the agent from it, as an image with spotleash baked in would;
  a packaged instance installs the package's own wheels into a fresh venv and runs the agent from there.

Some processes of an instance leave the VM's process group: the bootstrap runs ``python -m venv`` and pip
in process groups of their own (so it can cancel them), and the supervisor starts each component in one.
A real VM takes them all down when it goes; here every process of a fake VM or box carries
``SPOTLEASH_FAKE_INSTANCE=<provider>:<id>`` (children inherit it) and the fakes end, after its process
group, every process still marked (:func:`sweep_instance`), then every component process
(``SPOTLEASH_COMPONENT_OF=<instance id>``, :func:`sweep_components`), when the VM or box ends (delete,
preemption, deadline).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from local_emulator import procs

BIN = Path(__file__).resolve().parent / "bin"
ROOT_VAR = "SPOTLEASH_VM_ROOT"
MARKER_VAR = "SPOTLEASH_COMPONENT_OF"  # spotleash.instance_agent.environment.MARKER_ENV
INSTANCE_VAR = "SPOTLEASH_FAKE_INSTANCE"  # in every process of one fake VM or box: "<provider>:<id>"


def path_value(base: Mapping[str, str] | None = None) -> str:
    """PATH for a fake instance: the shim, then the fakes' python, then the system's."""
    rest = (base if base is not None else os.environ).get("PATH", "/usr/bin:/bin")
    return os.pathsep.join([str(BIN), str(Path(sys.executable).parent), rest])


def sweep_components(instance_id: str, *, term_grace: float = 3.0) -> int:
    """End every component process of ``instance_id`` (they left the VM's process group); how many."""
    if not instance_id:
        return 0
    return len(procs.kill_marked(MARKER_VAR, instance_id, term_grace=term_grace))


def instance_mark(provider: str, native_id: object) -> str:
    """The ``INSTANCE_VAR`` value of one fake VM (``gce:<numeric id>``) or box (``vast:<id>``)."""
    return f"{provider}:{native_id}"


def sweep_instance(mark: str, *, term_grace: float = 3.0) -> int:
    """End every process of one fake instance that outlived its process group (install steps, their
    children); how many."""
    return len(procs.kill_marked(INSTANCE_VAR, mark, term_grace=term_grace))
