"""Request, error, retry, panic and latency counters per component and target, for Prometheus.

``prometheus_client`` keeps the values and writes the exposition (text, or OpenMetrics when the scraper
asks for it); each ``Metrics`` has its own ``CollectorRegistry``, so two routers in one process (the
tests) never share a series. ``target`` is ``local`` or ``remote`` (instance ids would make unbounded
labels). Latency is the time until the response starts (headers), which is what a streamed response can
be measured by. The hot path (``served``) reuses each label set's child: a label lookup per request is
the bulk of what a metric costs.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from spotleash.decide.handoff import WHERE

BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
PREFIX = "spotleash_router"
COMPONENT_PREFIX = "spotleash_component"  # the agent's hand-off state (``agent.handoff``), read at each scrape
ComponentSource = Callable[[], Mapping[str, Mapping[str, Any]]]


class ComponentCollector(Collector):
    """Per component, from the agent's hand-off state: where it runs (1 for the one ``where``), its local copy's
    footprint, the memory its last stop freed and the total freed since the agent started."""

    def __init__(self, source: ComponentSource) -> None:
        self.source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        location = GaugeMetricFamily(f"{COMPONENT_PREFIX}_location", "1 where the component runs now "
                                     "(local, remote, both, starting, stopping, none).", labels=["component", "where"])
        footprint = GaugeMetricFamily(f"{COMPONENT_PREFIX}_footprint_bytes", "The local copy's last measured "
                                      "footprint (its process tree).", labels=["component"])
        freed = GaugeMetricFamily(f"{COMPONENT_PREFIX}_freed_bytes", "Memory the last stop of the local copy "
                                  "freed (its process tree's RSS just before).", labels=["component"])
        freed_total = GaugeMetricFamily(f"{COMPONENT_PREFIX}_freed_since_start_bytes", "Memory freed by every stop "
                                        "of the local copy since the agent started.", labels=["component"])
        for name, st in sorted(self.source().items()):
            for where in WHERE:
                location.add_metric([name, where], 1.0 if st.get("where") == where else 0.0)
            if st.get("footprint_bytes") is not None:
                footprint.add_metric([name], float(st["footprint_bytes"]))
            freed.add_metric([name], float(st.get("freed_bytes") or 0))
            freed_total.add_metric([name], float(st.get("freed_total_bytes") or 0))
        yield from (location, footprint, freed, freed_total)

TARGET_KINDS = ("local", "remote", "none")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry

        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(f"{PREFIX}_{name}", doc, labels, registry=r)

        self._requests = counter("requests", "Requests whose response started, by target and status class.",
                                 "component", "target", "code")
        self._errors = counter("errors", "Failed attempts on a target, by kind.", "component", "target", "kind")
        self._retries = counter("retries", "Requests retried on the other target.", "component", "source", "target")
        self._failed = counter("failed", "Requests the router could not serve (its own 502/503, or cut mid-stream).",
                               "component")
        self._held = counter("held", "Requests that arrived with no target and waited for one.", "component")
        self._panic = counter("panic", "Requests sent to the least bad copy while every copy was failing its "
                                       "probes (panic routing).", "component")
        self._changes = counter("target_changes", "Target changes.", "component")
        self._target = Gauge(f"{PREFIX}_target", "1 for the target new requests go to.", ("component", "target"),
                             registry=r)
        self._latency = Histogram(f"{PREFIX}_response_start_seconds", "Time until the response started, by target.",
                                  ("component", "target"), buckets=BUCKETS_S, registry=r)
        self._served: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._by_target: Tally[tuple[str, str]] = Tally()  # (component, target) → responses started

    def component_source(self, source: ComponentSource) -> None:
        """Expose the agent's hand-off state (``spotleash_component_*``), read from ``source`` at each scrape."""
        self.registry.register(ComponentCollector(source))

    def served(self, component: str, target: str, status: int, seconds: float) -> None:
        key = (component, target, status // 100)
        children = self._served.get(key)
        if children is None:
            children = self._served[key] = (self._requests.labels(component, target, f"{key[2]}xx"),
                                            self._latency.labels(component, target))
        children[0].inc()
        children[1].observe(seconds)
        self._by_target[(component, target)] += 1

    def error(self, component: str, target: str, kind: str) -> None:
        self._errors.labels(component, target, kind).inc()

    def retry(self, component: str, src: str, dst: str) -> None:
        self._retries.labels(component, src, dst).inc()

    def hold(self, component: str) -> None:
        self._held.labels(component).inc()

    def fail(self, component: str) -> None:
        self._failed.labels(component).inc()

    def panic(self, component: str) -> None:
        self._panic.labels(component).inc()

    def changed(self, component: str, target: str) -> None:
        """A target change of ``component``; new requests now go to ``target`` (local / remote / none)."""
        self._changes.labels(component).inc()
        self.current(component, target)

    def current(self, component: str, target: str) -> None:
        for kind in TARGET_KINDS:
            self._target.labels(component, kind).set(int(kind == target))

    def value(self, name: str, **labels: str) -> float:
        """One series' value (``name`` without the prefix, e.g. ``retries_total``); 0 when never counted."""
        return self.registry.get_sample_value(f"{PREFIX}_{name}", labels) or 0.0

    def _sum(self, name: str) -> int:
        return int(sum(s.value for m in self.registry.collect() for s in m.samples if s.name == f"{PREFIX}_{name}"))

    def served_by(self, component: str | None = None) -> dict[str, int]:
        """Requests whose response started, per target kind (for one component or all)."""
        out: Tally[str] = Tally()
        for (c, t), n in self._by_target.items():
            if component is None or c == component:
                out[t] += n
        return dict(out)

    def totals(self) -> dict[str, int]:
        """``total``, ``remote``, ``retried``, ``failed`` over all components (the demo's last line)."""
        by = self.served_by()
        failed = self._sum("failed_total")
        return {"total": sum(by.values()) + failed, "remote": by.get("remote", 0),
                "retried": self._sum("retries_total"), "failed": failed}

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition and its content type, in the format ``accept`` (a scraper's Accept header) asks for."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type
