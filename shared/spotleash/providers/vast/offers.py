"""VAST offers: the search query we send and the ranking we trust. Pure, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from spotleash.providers.base import GpuRequirements

MB_PER_GB = 1000  # the SDK's query parser multiplies GB by 1000 for gpu_ram (which the API holds in MB)
RELIABILITY_PENALTY = 10.0  # 1 % less reliability weighs like 10 % more price


@dataclass(frozen=True)
class Offer:
    id: int
    gpu_name: str
    num_gpus: int
    gpu_ram_gb: float
    dph_total: float
    min_bid: float
    reliability: float
    geolocation: str
    verified: bool
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Offer:
        return cls(
            id=int(d["id"]), gpu_name=str(d.get("gpu_name", "")), num_gpus=int(d.get("num_gpus") or 0),
            gpu_ram_gb=float(d.get("gpu_ram") or 0) / MB_PER_GB, dph_total=float(d.get("dph_total") or 0),
            min_bid=float(d.get("min_bid") or 0),
            reliability=float(d.get("reliability2", d.get("reliability")) or 0),
            geolocation=str(d.get("geolocation") or ""), verified=bool(d.get("verified")), raw=d,
        )


def offer_cost(o: Offer) -> float:
    """Price weighed by reliability: an unreliable host costs a relaunch."""
    return o.dph_total * (1.0 + RELIABILITY_PENALTY * max(0.0, 1.0 - o.reliability))


def rank_offers(offers: list[Offer], req: GpuRequirements) -> list[Offer]:
    """Offers meeting ``req`` (checked again here: never trust the filter alone), best first."""
    ok = [
        o for o in offers
        if (not req.gpu_names or o.gpu_name in req.gpu_names)
        and o.gpu_ram_gb >= req.min_vram_gb and o.dph_total <= req.max_dph
        and o.reliability >= req.min_reliability and (o.verified or not req.verified)
        and o.num_gpus == req.num_gpus
    ]
    return sorted(ok, key=lambda o: (offer_cost(o), -o.reliability, o.id))


def search_query(req: GpuRequirements, *, interruptible: bool, limit: int) -> dict[str, Any]:
    q: dict[str, Any] = {
        "num_gpus": {"eq": req.num_gpus},
        "gpu_ram": {"gte": req.min_vram_gb * MB_PER_GB},
        "dph_total": {"lte": req.max_dph},
        "reliability": {"gte": req.min_reliability},
        "rentable": {"eq": True},
        "rented": {"eq": False},
        "external": {"eq": False},
        "order": [["dph_total", "asc"]],
        "type": "bid" if interruptible else "on-demand",
        "limit": limit,
    }
    if req.gpu_names:
        q["gpu_name"] = {"in": list(req.gpu_names)}
    if req.verified:
        q["verified"] = {"eq": True}
    return q
