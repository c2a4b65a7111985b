"""Providers: one module each behind ``spotleash.providers.base.Provider``.

Vendor SDKs are imported inside each module, so importing this package stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from spotleash.config import Settings
    from spotleash.providers.base import Provider

PROVIDER_NAMES = ("gce", "vast")


def build_provider(name: str, settings: Settings) -> Provider:
    if name == "gce":
        from spotleash.providers.gce import GceProvider

        return GceProvider.from_settings(settings)
    if name == "vast":
        from spotleash.providers.vast import VastProvider

        return VastProvider.from_settings(settings)
    raise ValueError(f"unknown provider {name!r}; known: {', '.join(PROVIDER_NAMES)}")
