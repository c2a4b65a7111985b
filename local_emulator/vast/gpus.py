"""The GPUs of a VAST fake box: what its ``nvidia-smi`` reports (``gpu_bin/nvidia-smi``) and how a test sets
their load.

A box gets its offer's GPUs: ``num_gpus`` of ``gpu_name`` with ``gpu_ram`` MiB each, named as the driver
names them (``RTX 4090`` → ``NVIDIA GeForce RTX 4090``). Their state is one JSON file in the box's folder,
``SPOTLEASH_FAKE_GPUS`` in the box's environment; ``nvidia-smi`` reads it at every call and
``POST /_control/gpu/{id}`` writes it (utilisation and used memory per GPU: the fake has no CUDA, so nothing
else moves them). The box's environment also has ``CUDA_VISIBLE_DEVICES`` (``0,1,…``) and
``NVIDIA_VISIBLE_DEVICES=all``, as a GPU container's has.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from local_emulator.vast import errors

BIN = Path(__file__).resolve().parent / "gpu_bin"
STATE_VAR = "SPOTLEASH_FAKE_GPUS"
STATE_FILE = "gpus.json"
# VAST's offer names → the names the driver reports (nvidia-smi's "name"); others get "NVIDIA " in front.
DRIVER_NAMES = {
    "RTX 4090": "NVIDIA GeForce RTX 4090", "RTX 3090": "NVIDIA GeForce RTX 3090",
    "RTX 4080": "NVIDIA GeForce RTX 4080", "RTX 3060": "NVIDIA GeForce RTX 3060",
    "A100 PCIE": "NVIDIA A100-PCIE-40GB", "A100 SXM4": "NVIDIA A100-SXM4-80GB",
    "H100 PCIE": "NVIDIA H100 PCIe", "H100 SXM": "NVIDIA H100 80GB HBM3", "Tesla V100": "Tesla V100-PCIE-16GB",
}


def driver_name(offer_name: str) -> str:
    return DRIVER_NAMES.get(offer_name, f"NVIDIA {offer_name}")


def initial_state(offer: dict[str, Any], instance_id: int) -> dict[str, Any]:
    """The GPUs of a fresh box of ``offer``: idle, nothing in memory."""
    count = max(int(offer.get("num_gpus") or 1), 1)
    return {"gpus": [{"index": i, "name": driver_name(str(offer["gpu_name"])), "memory_total_mib": int(offer["gpu_ram"]),
                      "memory_used_mib": 0, "utilization_percent": 0,
                      "uuid": f"GPU-{instance_id:08x}-{i:04x}-4000-8000-{offer['machine_id']:012x}"}
                     for i in range(count)]}


def write_state(folder: Path, state: dict[str, Any]) -> Path:
    path = folder / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)  # nvidia-smi never reads half a file
    return path


def box_env(folder: Path, state: dict[str, Any]) -> dict[str, str]:
    """What a box's processes see of its GPUs (its PATH gets ``BIN`` in front, ``nvidia-smi``)."""
    return {STATE_VAR: str(folder / STATE_FILE),
            "CUDA_VISIBLE_DEVICES": ",".join(str(g["index"]) for g in state["gpus"]),
            "NVIDIA_VISIBLE_DEVICES": "all"}


def _per_gpu(value: Any, count: int, what: str) -> list[float] | None:
    if value is None:
        return None
    values = value if isinstance(value, list) else [value] * count
    if len(values) != count or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise errors.invalid(f"{what} must be a number or a list of {count} numbers")
    return [float(v) for v in values]


def set_load(folder: Path, body: Any) -> dict[str, Any]:
    """``POST /_control/gpu/{id}`` {"utilization_percent": n | [n…], "memory_used_mib": n | [n…]} → the state."""
    if not isinstance(body, dict) or not body.keys() <= {"utilization_percent", "memory_used_mib"} or not body:
        raise errors.invalid("body must be {\"utilization_percent\": ..., \"memory_used_mib\": ...} (either or both)")
    state = json.loads((folder / STATE_FILE).read_text())
    gpus = state["gpus"]
    util = _per_gpu(body.get("utilization_percent"), len(gpus), "utilization_percent")
    used = _per_gpu(body.get("memory_used_mib"), len(gpus), "memory_used_mib")
    for i, g in enumerate(gpus):
        if util is not None:
            if not 0 <= util[i] <= 100:
                raise errors.invalid("utilization_percent must be 0..100")
            g["utilization_percent"] = round(util[i])
        if used is not None:
            if not 0 <= used[i] <= g["memory_total_mib"]:
                raise errors.invalid(f"memory_used_mib must be 0..{g['memory_total_mib']}")
            g["memory_used_mib"] = int(used[i])
    write_state(folder, state)
    return state
