"""VAST.ai: REST with httpx on the paths the ``vastai`` SDK 1.9.1 uses, SSH with paramiko.

One module per concern, the way moto splits a backend that outgrew one file:

* ``mapping`` — our ownership label in VAST's one free-text label; VAST's states in ours (pure);
* ``offers`` — the search query and the offer ranking (pure);
* ``onstart`` — the box's start script (watchdog, instance agent) and its environment (pure);
* ``client`` — the REST calls: retries, error translation, timings;
* ``ssh`` — paramiko: our key, host key pinning, commands (imported only where SSH is used, so
  the control plane's import path never loads paramiko);
* ``provider`` — ``VastProvider``, the ``Provider`` verbs over all of these.
"""

from __future__ import annotations

from spotleash.providers.vast.client import CallStats, VastClient, VastCreateFailed, translate
from spotleash.providers.vast.mapping import LABEL_PREFIX, make_label, map_status, parse_label
from spotleash.providers.vast.offers import Offer, offer_cost, rank_offers, search_query
from spotleash.providers.vast.onstart import agent_env, build_onstart
from spotleash.providers.vast.provider import VastProvider

__all__ = [
    "LABEL_PREFIX",
    "CallStats",
    "Offer",
    "VastClient",
    "VastCreateFailed",
    "VastProvider",
    "agent_env",
    "build_onstart",
    "make_label",
    "map_status",
    "offer_cost",
    "parse_label",
    "rank_offers",
    "search_query",
    "translate",
]
