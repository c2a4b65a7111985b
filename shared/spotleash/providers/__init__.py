"""Providers: one module each behind ``spotleash.providers.base.Provider``, and the one registry of them.

``PROVIDERS`` maps each provider's name to a small descriptor: where its implementation lives
(imported only when a provider is built, so importing this package stays cheap and a cold start
pays only for the SDKs it uses) and the facts the rest of spotleash needs about it without
importing it — whether it takes GPU demands, how its instance agent receives its configuration,
whether it is configured. Adding a provider is one module plus one line in ``_REGISTERED``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal, Protocol

from pydantic import AfterValidator

if TYPE_CHECKING:
    from spotleash.config import Settings
    from spotleash.providers.base import Provider

AgentTransport = Literal["metadata", "env"]  # instance metadata (GCE) or the box's environment (VAST)


class ProviderFactory(Protocol):
    @classmethod
    def from_settings(cls, settings: Settings) -> Provider: ...


def _always(settings: Settings) -> bool:  # noqa: ARG001 - the signature of ProviderInfo.enabled
    return True


def _vast_configured(settings: Settings) -> bool:
    return settings.vast_api_key is not None


@dataclass(frozen=True)
class ProviderInfo:
    """What spotleash knows about one provider without importing its SDK."""

    name: str
    implementation: str  # "module:Class", the class having ``from_settings(settings) -> Provider``
    gpu: bool  # takes GPU demands: its launch spec carries GpuRequirements, priced at the GPU cap
    agent_transport: AgentTransport  # how the instance agent on its boxes reads its configuration
    google_identity: bool  # its instances read Cloud Storage as themselves (GCE's VM account); else a signed URL
    enabled: Callable[[Settings], bool] = _always  # configured in these settings (listed, reaped, warmed)

    def factory(self) -> ProviderFactory:
        module, _, cls = self.implementation.partition(":")
        factory: ProviderFactory = getattr(importlib.import_module(module), cls)
        return factory


_REGISTERED = (
    ProviderInfo("gce", "spotleash.providers.gce.provider:GceProvider", gpu=False, agent_transport="metadata",
                 google_identity=True),
    ProviderInfo("vast", "spotleash.providers.vast.provider:VastProvider", gpu=True, agent_transport="env",
                 google_identity=False, enabled=_vast_configured),
)
PROVIDERS: dict[str, ProviderInfo] = {p.name: p for p in _REGISTERED}
PROVIDER_NAMES = tuple(PROVIDERS)


def provider_info(name: str) -> ProviderInfo:
    try:
        return PROVIDERS[name]
    except KeyError:
        raise ValueError(f"unknown provider {name!r}; known: {', '.join(PROVIDER_NAMES)}") from None


def _known(name: str) -> str:
    provider_info(name)
    return name


# The provider name type, derived from the registry: pydantic refuses a name that is not registered.
ProviderName = Annotated[str, AfterValidator(_known)]


def build_provider(name: str, settings: Settings) -> Provider:
    return provider_info(name).factory().from_settings(settings)


def provider_for(*, gpu: bool) -> str:
    """The provider a demand goes to when it names none: the first registered that takes (or not) GPUs."""
    return next(p.name for p in _REGISTERED if p.gpu is gpu)


def enabled_providers(settings: Settings) -> list[str]:
    """The providers these settings configure, in registry order."""
    return [p.name for p in _REGISTERED if p.enabled(settings)]
