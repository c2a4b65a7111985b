"""The one supervisor of an app's components, used on both sides: the instance agent runs the remote copies
with it, the laptop agent the local copies. ``health``: the pure state rules and the probe; ``components``:
the processes; ``footprint``: the memory a process tree holds; ``marked``: processes found by an env marker;
``started``: when a process started, comparable across processes and clock steps.

Importable on an instance: it needs only the core dependencies (pydantic) and psutil (the
``instance`` extra).
"""

from spotleash.supervisor.components import ComponentRunner, Launch, Supervisor

__all__ = ["ComponentRunner", "Launch", "Supervisor"]
