"""A deterministic, realistic offers catalog and the search semantics of ``POST /api/v0/bundles/``.

Numbers follow the real API's units: ``gpu_ram`` / ``cpu_ram`` in MB, prices in $/hour,
``reliability`` (alias ``reliability2``) in [0, 1], bandwidth in Mbps.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from local_emulator.vast.errors import invalid

# (gpu_name, gpu_ram MB, on-demand $/h per GPU around which hosts price, compute_cap, TFLOPS)
GPU_MODELS: tuple[tuple[str, int, float, int, float], ...] = (
    ("RTX 4090", 24564, 0.34, 890, 82.6),
    ("RTX 3090", 24576, 0.21, 860, 35.6),
    ("RTX 4080", 16376, 0.22, 890, 48.7),
    ("RTX 3060", 12288, 0.08, 860, 12.7),
    ("RTX A6000", 49140, 0.47, 860, 38.7),
    ("A100 PCIE", 40960, 0.79, 800, 19.5),
    ("A100 SXM4", 81920, 1.05, 800, 19.5),
    ("H100 PCIE", 81559, 1.89, 900, 51.2),
    ("H100 SXM", 81559, 2.35, 900, 66.9),
    ("L40S", 46068, 0.82, 890, 91.6),
    ("Tesla V100", 16384, 0.17, 700, 15.7),
)
GEOS = ("US, California", "US, Texas", "Canada, Quebec", "Germany, Hesse", "Sweden, Stockholm",
        "Japan, Tokyo", "Poland, Mazovia", "Vietnam, Hanoi", "Taiwan, Taipei", "Norway, Oslo")
COUNTS = (1, 1, 1, 2, 2, 4, 8)
OPS = {"eq", "neq", "gt", "gte", "lt", "lte", "in", "notin"}
NON_FIELD_KEYS = {"order", "type", "limit", "allocated_storage", "disable_bundling"}
TYPES = {"on-demand", "bid", "reserved"}
RESERVED_DISCOUNT = 0.65


@dataclass
class Offer:
    fields: dict[str, Any]
    available: bool = True  # False once rented (or vanished)

    @property
    def id(self) -> int:
        return int(self.fields["id"])

    def view(self, offer_type: str) -> dict[str, Any]:
        d = dict(self.fields)
        if offer_type == "bid":
            d["dph_total"] = round(d["min_bid"] + d["storage_cost_h"], 4)
        elif offer_type == "reserved":
            d["dph_total"] = round(d["dph_total"] * RESERVED_DISCOUNT, 4)
        d["rented"] = not self.available
        d["is_bid"] = offer_type == "bid"
        return d


def build_catalog(seed: int = 4, per_model: int = 6) -> list[Offer]:
    """The same catalog every time for one seed: ``per_model`` hosts for each GPU model."""
    rng = random.Random(seed)
    offers: list[Offer] = []
    next_id = 3_100_000
    machine = 10_000
    for name, vram, base, cc, tflops in GPU_MODELS:
        for i in range(per_model):
            n = COUNTS[(i * 3 + len(name)) % len(COUNTS)] if i else 1
            per_gpu = round(base * rng.uniform(0.8, 1.35), 4)
            storage_h = round(rng.uniform(0.002, 0.01), 4)
            dph = round(per_gpu * n + storage_h, 4)
            rel = round(rng.choice((0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998)) + rng.uniform(0, 0.0019), 5)
            verified = rng.random() > 0.2 or i == 0
            machine += rng.randint(1, 40)
            next_id += rng.randint(1, 900)
            offers.append(Offer({
                "id": next_id,
                "ask_contract_id": next_id,
                "bundle_id": next_id + 7,
                "machine_id": machine,
                "host_id": 1000 + machine % 977,
                "gpu_name": name,
                "num_gpus": n,
                "gpu_ram": vram,
                "gpu_total_ram": vram * n,
                "gpu_frac": 1.0,
                "compute_cap": cc,
                "total_flops": round(tflops * n, 1),
                "dlperf": round(tflops * n * rng.uniform(0.9, 1.1), 2),
                "cpu_name": rng.choice(("AMD EPYC 7742 64-Core Processor", "AMD Ryzen 9 7950X",
                                        "Intel Xeon Gold 6248R", "Intel Core i9-13900K")),
                "cpu_cores": 8 * n + rng.choice((0, 8, 16)),
                "cpu_cores_effective": 8.0 * n,
                "cpu_ram": 32768 * n,
                "disk_space": float(rng.choice((200, 500, 1000, 2000))),
                "disk_bw": round(rng.uniform(800, 5000), 1),
                "inet_up": round(rng.uniform(50, 2000), 1),
                "inet_down": round(rng.uniform(100, 5000), 1),
                "inet_up_cost": 0.0, "inet_down_cost": 0.0,
                "dph_base": round(per_gpu * n, 4),
                "dph_total": dph,
                "storage_cost": round(storage_h * 24 * 30, 3),
                "storage_cost_h": storage_h,
                "min_bid": round(per_gpu * n * rng.uniform(0.45, 0.7), 4),
                "reliability": rel,
                "reliability2": rel,
                "geolocation": rng.choice(GEOS),
                "verified": verified,
                "rentable": True,
                "external": False,
                "hosting_type": 1 if rng.random() > 0.7 else 0,
                "static_ip": rng.random() > 0.5,
                "direct_port_count": rng.choice((10, 20, 100, 1000)),
                "cuda_max_good": rng.choice((12.2, 12.4, 12.8)),
                "driver_version": rng.choice(("550.54.14", "560.35.03", "570.86.10")),
                "duration": float(rng.randint(3, 90) * 86400),
                "os_version": "22.04",
            }))
    for o in offers:
        f = o.fields
        f["score"] = round(f["dlperf"] / max(f["dph_total"], 0.01) * f["reliability"], 3)
        f["dlperf_per_dphtotal"] = round(f["dlperf"] / max(f["dph_total"], 0.01), 3)
    return offers


def _coerce(value: Any, want: Any) -> Any:
    """The CLI/SDK query parser sends numbers and booleans as strings; the service coerces them."""
    if isinstance(want, list):
        return [_coerce(value, w) for w in want]
    if not isinstance(want, str):
        return want
    if isinstance(value, bool):
        if want.lower() in ("true", "false"):
            return want.lower() == "true"
        raise invalid(f"expected true or false, got {want!r}")
    if isinstance(value, int | float):
        try:
            return float(want)
        except ValueError as e:
            raise invalid(f"expected a number, got {want!r}") from e
    return want


def _match(value: Any, op: str, want: Any) -> bool:
    want = _coerce(value, want)
    try:
        if op == "eq":
            return bool(value == want)
        if op == "neq":
            return bool(value != want)
        if op in ("in", "notin"):
            if not isinstance(want, list):
                raise invalid(f"operator {op} needs a list, got {want!r}")
            return (value in want) == (op == "in")
        if value is None:
            return False
        if op == "gt":
            return bool(value > want)
        if op == "gte":
            return bool(value >= want)
        if op == "lt":
            return bool(value < want)
        if op == "lte":
            return bool(value <= want)
    except TypeError as e:
        raise invalid(f"cannot compare {value!r} with {want!r} using {op}") from e
    raise invalid(f"unknown operator {op!r}; known: {sorted(OPS)}")


def search(offers: list[Offer], query: dict[str, Any]) -> list[dict[str, Any]]:
    """Filter, order and limit as the real search does. Unknown fields or operators are a 400."""
    if not isinstance(query, dict):
        raise invalid("search body must be a JSON object")
    offer_type = query.get("type", "on-demand")
    if offer_type not in TYPES:
        raise invalid(f"type must be one of {sorted(TYPES)}, got {offer_type!r}")
    known = set(offers[0].view("on-demand")) if offers else set()
    filters: list[tuple[str, str, Any]] = []
    for key, cond in query.items():
        if key in NON_FIELD_KEYS:
            continue
        if key not in known:
            raise invalid(f"unknown search field {key!r}")
        if not isinstance(cond, dict):
            cond = {"eq": cond}
        for op, want in cond.items():
            if op not in OPS:
                raise invalid(f"unknown operator {op!r} for {key}; known: {sorted(OPS)}")
            filters.append((key, op, want))
    rows = [o.view(offer_type) for o in offers if o.available]  # rented offers never show
    rows = [r for r in rows if all(_match(r.get(k), op, w) for k, op, w in filters)]
    order = query.get("order") or [["score", "desc"]]
    if not isinstance(order, list):
        raise invalid("order must be a list of [field, 'asc'|'desc']")
    for item in reversed(order):
        if not (isinstance(item, list) and len(item) in (1, 2) and item[0] in known):
            raise invalid(f"bad order item {item!r}")
        desc = len(item) == 2 and str(item[1]).lower() == "desc"
        rows.sort(key=lambda r, f=item[0]: (r.get(f) is None, r.get(f)), reverse=desc)
    limit = query.get("limit")
    if limit is not None:
        if not isinstance(limit, int) or limit < 0:
            raise invalid(f"limit must be a non-negative integer, got {limit!r}")
        rows = rows[:limit]
    return rows
