"""Spot prices as plain data (pure): the rates the Cloud Billing Catalog publishes, and machine types priced with them.

A GCE machine costs ``vCPUs × core rate + GiB × RAM rate`` of its family (E2, N2) in its region. The
catalog's Spot SKUs are read by their exact descriptions (``Spot Preemptible E2 Instance Core running
in Americas``), their ``Preemptible`` usage type and their service regions; everything else (on-demand,
committed, custom, sole-tenant, GPU) is left alone. The built-in table in ``spotleash.decide.policy`` is the
labelled fallback: it holds us-central1's published prices, so elsewhere it is a guess and says so.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict

from spotleash.decide.policy import DEFAULT_SPOT_PRICE, SPOT_PRICE

FAMILIES = ("e2", "n2")
BUILTIN_REGION = "us-central1"
_SPOT_SKU = re.compile(r"^Spot Preemptible (E2|N2) Instance (Core|Ram) running in .+$")
_UNITS = {"Core": "h", "Ram": "GiBy.h"}
# vCPUs and GiB per vCPU of the predefined shapes; shared-core E2s have their own fractions.
_RATIO = {"standard": 4.0, "highmem": 8.0, "highcpu": 1.0}
_SHARED = {"e2-micro": (0.25, 1.0), "e2-small": (0.5, 2.0), "e2-medium": (1.0, 4.0)}


@dataclass(frozen=True)
class Shape:
    family: str  # "e2" | "n2"
    vcpus: float
    gib: float


def machine_shape(machine: str) -> Shape | None:
    """``e2-highmem-4`` -> Shape("e2", 4, 32); ``n2-custom-6-24576`` -> Shape("n2", 6, 24). None if unknown."""
    if machine in _SHARED:
        cpu, gib = _SHARED[machine]
        return Shape("e2", cpu, gib)
    m = re.fullmatch(r"(e2|n2)-(standard|highmem|highcpu)-(\d+)", machine)
    if m:
        n = int(m.group(3))
        return Shape(m.group(1), n, n * _RATIO[m.group(2)]) if n > 0 else None
    m = re.fullmatch(r"(e2|n2)-custom-(\d+)-(\d+)", machine)
    if m and int(m.group(2)) > 0:
        return Shape(m.group(1), int(m.group(2)), int(m.group(3)) / 1024)
    return None


class FamilyRate(BaseModel):
    model_config = ConfigDict(frozen=True)

    core: float  # USD per vCPU hour
    ram: float  # USD per GiB hour


class PriceSheet(BaseModel):
    """Spot rates by region and family, with the date they were read (cached as JSON)."""

    model_config = ConfigDict(frozen=True)

    source: Literal["catalog"]
    fetched_at: AwareDatetime
    currency: str = "USD"
    rates: dict[str, dict[str, FamilyRate]]  # region -> family -> rates

    @property
    def label(self) -> str:
        return f"catalog {self.fetched_at.date().isoformat()}"


class CachedPrice(BaseModel):
    """One machine type's Spot price in one region, as read from the catalog on ``fetched_at`` (cached as is)."""

    model_config = ConfigDict(frozen=True)

    machine: str
    region: str
    usd_per_hour: float
    fetched_at: AwareDatetime
    source: Literal["catalog"] = "catalog"

    @property
    def label(self) -> str:
        return f"catalog {self.fetched_at.date().isoformat()}"

    def quote(self) -> Quote:
        return Quote(self.usd_per_hour, self.label)


@dataclass(frozen=True)
class Quote:
    usd_per_hour: float
    source: str  # "catalog 2026-11-01", or "builtin ..." for the fallback table

    @property
    def from_catalog(self) -> bool:
        return self.source.startswith("catalog")


@dataclass(frozen=True)
class SkuRow:
    """What a SKU says, as plain data (the adapter builds these from the client's messages)."""

    description: str
    usage_type: str
    regions: tuple[str, ...]
    usage_unit: str
    usd: float  # the first tier's unit price (units + nanos / 1e9)


def rates_from_skus(rows: Iterable[SkuRow]) -> dict[str, dict[str, FamilyRate]]:
    """Region -> family -> (core, ram) from the Spot E2/N2 SKUs; a region needs both rates of a family."""
    found: dict[tuple[str, str], dict[str, float]] = {}
    for row in rows:
        m = _SPOT_SKU.match(row.description)
        if m is None or row.usage_type != "Preemptible" or row.usage_unit != _UNITS[m.group(2)]:
            continue
        for region in row.regions:
            found.setdefault((region, m.group(1).lower()), {})[m.group(2).lower()] = row.usd
    out: dict[str, dict[str, FamilyRate]] = {}
    for (region, family), r in sorted(found.items()):
        if "core" in r and "ram" in r:
            out.setdefault(region, {})[family] = FamilyRate(core=r["core"], ram=r["ram"])
    return out


def quote(sheet: PriceSheet, machine: str, region: str) -> Quote | None:
    shape = machine_shape(machine)
    rate = sheet.rates.get(region, {}).get(shape.family) if shape else None
    if shape is None or rate is None:
        return None
    return Quote(round(shape.vcpus * rate.core + shape.gib * rate.ram, 6), sheet.label)


def builtin_quote(machine: str, region: str) -> Quote:
    """The fallback table: us-central1's published Spot prices, labelled as such wherever it is used."""
    price = SPOT_PRICE.get(machine)
    if price is None:
        return Quote(DEFAULT_SPOT_PRICE, f"builtin default (no table entry for {machine})")
    where = "" if region == BUILTIN_REGION else f", used for {region}"
    return Quote(price, f"builtin table ({BUILTIN_REGION}{where})")
