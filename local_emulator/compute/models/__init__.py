"""The Compute Engine fake's models, split the way moto splits a backend that outgrew one file:

- ``resources``  the fake clock, zone operations and instances, and their JSON;
- ``validation`` what GCE accepts (names, machine types, labels, metadata, scheduling);
- ``backend``    the state and the rules (:class:`ComputeModel`), no HTTP, no processes;
- ``vm``         the VM runtime: each VM's real process group and its metadata server's view.
"""

from local_emulator.compute.models.backend import ComputeModel
from local_emulator.compute.models.resources import ZONES, Clock, Instance, Operation

__all__ = ["ZONES", "Clock", "ComputeModel", "Instance", "Operation"]
