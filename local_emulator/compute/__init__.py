"""A faithful local fake of the Compute Engine REST API (instances, zone operations) with a
metadata server per VM and real local processes as VMs. See server.py for what is covered."""

from local_emulator.compute.models import ComputeModel
from local_emulator.compute.server import ComputeFake

__all__ = ["ComputeFake", "ComputeModel"]
