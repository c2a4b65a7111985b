"""Loads topology.json: the topics, subscriptions, functions and schedules of a deployment.

The local stack and Terraform both read the same file, so the two cannot drift.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any


@dataclass(frozen=True)
class Function:
    name: str
    trigger: str  # "pubsub" | "http"
    topic: str | None
    timeout_s: int
    public: bool
    roles: tuple[str, ...] = ()  # Compute roles (terraform/topology.tf): launcher, deleter, lister
    publishes: tuple[str, ...] = ()  # topics it may publish to, besides the dead-letter topic


@dataclass(frozen=True)
class Subscription:
    name: str
    topic: str
    function: str | None  # None: a pull subscription that holds messages (the dead-letter store)
    ack_deadline_s: int
    max_delivery_attempts: int | None
    min_backoff_s: int | None
    max_backoff_s: int | None


@dataclass(frozen=True)
class Schedule:
    name: str
    cron: str
    time_zone: str
    topic: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class Topology:
    topics: tuple[str, ...]
    dead_letter_topic: str
    functions: dict[str, Function]
    subscriptions: dict[str, Subscription]
    schedules: dict[str, Schedule]
    package_bucket: str  # the local stack's Cloud Storage bucket of app packages

    def topic_of(self, kind: str) -> str:
        """The topic carrying events of a kind: demand, release, lease, reap, budget."""
        name = f"spotleash-{kind}"
        if name not in self.topics:
            raise KeyError(f"no topic for {kind!r}")
        return name


@cache
def load_topology() -> Topology:
    raw = json.loads(resources.files("spotleash").joinpath("topology.json").read_text())
    return Topology(
        topics=tuple(raw["topics"]),
        dead_letter_topic=raw["dead_letter_topic"],
        functions={
            n: Function(n, f["trigger"], f.get("topic"), f["timeout_s"], bool(f.get("public", False)),
                        tuple(f.get("roles", ())), tuple(f.get("publishes", ())))
            for n, f in raw["functions"].items()
        },
        subscriptions={
            n: Subscription(
                n,
                s["topic"],
                s["function"],
                s["ack_deadline_s"],
                s["max_delivery_attempts"],
                s["min_backoff_s"],
                s["max_backoff_s"],
            )
            for n, s in raw["subscriptions"].items()
        },
        schedules={
            n: Schedule(n, s["cron"], s["time_zone"], s["topic"], s["payload"]) for n, s in raw["schedules"].items()
        },
        package_bucket=raw["package_bucket"],
    )
