"""What the providers say, beside what Firestore says: for ``status --refresh`` and ``down``'s wait.

``take_inventory`` lists one provider's instances carrying our labels; a failed listing is "unknown",
never "nothing is running". Everything else here is pure: it compares records with listings.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from spotleash.errors import SpotleashError
from spotleash.log import get_logger
from spotleash.model import InstanceRecord, State
from spotleash.providers import build_provider, enabled_providers
from spotleash.providers.base import Inventory, Provider, ProviderInstance

if TYPE_CHECKING:
    from spotleash.config import Settings

log = get_logger(__name__)


def take_inventory(provider: Provider, name: str, deployment_id: str) -> Inventory:
    """One provider's listing of our instances; a failure is recorded as unknown, never as empty."""
    try:
        return Inventory(name, True, tuple(provider.list_owned(deployment_id)))
    except (SpotleashError, OSError) as e:
        log.warning("provider listing failed; treating as unknown", provider=name, detail=str(e))
        return Inventory(name, False, (), str(e))


class Listings:
    """Every configured provider, built once and listed on each call (``down`` lists them every poll).

    A provider that cannot even be built is listed as unknown, with the reason."""

    def __init__(self, settings: Settings, names: Iterable[str] | None = None) -> None:
        self.deployment_id = settings.deployment_id
        self.providers: dict[str, Provider] = {}
        self.unbuilt: dict[str, str] = {}
        for name in names if names is not None else enabled_providers(settings):
            try:
                self.providers[name] = build_provider(name, settings)
            except (SpotleashError, OSError, ValueError) as e:
                self.unbuilt[name] = f"cannot reach {name}: {e}"

    def __call__(self) -> dict[str, Inventory]:
        out = {name: Inventory(name, False, (), why) for name, why in self.unbuilt.items()}
        out.update((name, take_inventory(p, name, self.deployment_id)) for name, p in self.providers.items())
        return out

    def close(self) -> None:
        for p in self.providers.values():
            close = getattr(p, "close", None)  # the VAST provider holds an HTTP client
            if callable(close):
                close()

    def __enter__(self) -> Listings:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _match(rec: InstanceRecord, inv: Inventory) -> ProviderInstance | None:
    for p in inv.instances:
        if p.instance_id == rec.instance_id or (rec.provider_id and p.provider_id == rec.provider_id):
            return p
    return None


@dataclass(frozen=True)
class ProviderSays:
    """What the provider says of one record: ``listed``, ``gone``, ``not_created`` or ``unknown``."""

    listing: str
    status: str | None = None
    native_status: str | None = None
    flag: str | None = None  # set when the provider and Firestore disagree

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def cell(self) -> str:
        native = f" ({self.native_status})" if self.native_status not in (None, self.status) else ""
        text = {"listed": f"{self.status}{native}",
                "gone": "gone", "not_created": "-", "unknown": "unknown"}[self.listing]
        return f"[red]{text}: {self.flag}[/]" if self.flag else text


def provider_says(rec: InstanceRecord, inventories: Mapping[str, Inventory]) -> ProviderSays:
    inv = inventories.get(rec.provider)
    if inv is None or not inv.ok:
        why = inv.error if inv is not None else f"{rec.provider} is not configured here"
        return ProviderSays("unknown", flag=None if not rec.live else f"listing failed: {why}")
    found = _match(rec, inv)
    if found is not None:
        flag = None if rec.live else f"Firestore says {rec.state}, the provider still has it"
        return ProviderSays("listed", str(found.status), found.native_status, flag)
    if rec.provider_id is None and rec.state in (State.REQUESTED, State.PROVISIONING, State.FAILED):
        return ProviderSays("not_created")
    return ProviderSays("gone", flag="the provider no longer has it" if rec.live else None)


@dataclass(frozen=True)
class Unrecorded:
    """A provider instance carrying our labels that no shown record accounts for."""

    provider: str
    provider_id: str
    instance_id: str | None
    lease_id: str | None
    status: str
    flag: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def unrecorded(shown: Iterable[InstanceRecord], others: Mapping[str, InstanceRecord],
               inventories: Mapping[str, Inventory]) -> list[Unrecorded]:
    """Provider instances no shown record matches. ``others`` are the records Firestore has of the rest
    (by instance id): one there that has ended is flagged as such, none at all as "not in Firestore"."""
    seen_ids = {r.instance_id for r in shown}
    seen_pids = {(r.provider, r.provider_id) for r in shown if r.provider_id}
    out = []
    for name, inv in inventories.items():
        for p in inv.instances:
            if p.instance_id in seen_ids or (name, p.provider_id) in seen_pids:
                continue
            rec = others.get(p.instance_id) if p.instance_id else None
            flag = ("not in Firestore" if rec is None else
                    f"Firestore says {rec.state}, the provider still has it" if not rec.live else
                    f"Firestore says {rec.state}")
            out.append(Unrecorded(name, p.provider_id, p.instance_id, p.lease_id, str(p.status), flag))
    return out


@dataclass(frozen=True)
class Left:
    """Something of a released lease that is not confirmed gone yet."""

    instance_id: str | None
    provider: str
    provider_id: str | None
    why: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def left_of_leases(live: Iterable[InstanceRecord], inventories: Mapping[str, Inventory],
                   lease_ids: Iterable[str]) -> list[Left]:
    """What of ``lease_ids`` still exists: live records, provider instances carrying one of those leases'
    label, and every provider whose listing failed (gone cannot be confirmed there)."""
    leases = set(lease_ids)
    out: dict[tuple[str, str], Left] = {}
    for r in live:
        if r.lease_id in leases and r.live:
            out[(r.provider, r.instance_id)] = Left(r.instance_id, r.provider, r.provider_id,
                                                    f"Firestore says {r.state}")
    for name, inv in inventories.items():
        if not inv.ok:
            out[(name, "")] = Left(None, name, None, f"listing failed, deletion unconfirmed: {inv.error}")
            continue
        for p in inv.instances:
            if p.lease_id in leases:
                key = (name, p.instance_id or p.provider_id)
                earlier = out.get(key)
                why = f"the provider lists it ({p.status})"
                out[key] = Left(p.instance_id, name, p.provider_id,
                                f"{earlier.why}; {why}" if earlier else why)
    return list(out.values())


@dataclass(frozen=True)
class Checked:
    """``status --refresh``: per shown record what its provider says, and what no shown record accounts for."""

    says: dict[str, ProviderSays]
    unrecorded: list[Unrecorded]
    inventories: Mapping[str, Inventory]

    def providers_json(self) -> dict[str, dict[str, Any]]:
        return {n: {"ok": inv.ok, "listed": len(inv.instances), "error": inv.error}
                for n, inv in self.inventories.items()}


def check(shown: list[InstanceRecord], others: Mapping[str, InstanceRecord],
          inventories: Mapping[str, Inventory]) -> Checked:
    return Checked({r.instance_id: provider_says(r, inventories) for r in shown},
                   unrecorded(shown, others, inventories), inventories)
