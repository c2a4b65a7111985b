"""Request, error, retry and latency counters per component and target, as Prometheus text.

Hand-written exposition format (text 0.0.4): a handful of counters and one histogram do not need a
client library. ``target`` is ``local`` or ``remote`` (instance ids would make unbounded labels).
Latency is the time until the response starts (headers), which is what a streamed response can be
measured by.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field

BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
PREFIX = "spotleash_router"


@dataclass
class _Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS_S) + 1))
    total: float = 0.0
    n: int = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS_S, seconds)] += 1
        self.total += seconds
        self.n += 1


def _labels(**kv: str) -> str:
    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in kv.items()) + "}"


class Metrics:
    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str, str]] = Counter()  # component, target, status class
        self.errors: Counter[tuple[str, str, str]] = Counter()  # component, target, kind
        self.retries: Counter[tuple[str, str, str]] = Counter()  # component, from, to
        self.failed: Counter[str] = Counter()  # component: answered by the router itself with 5xx, or cut
        self.changes: Counter[str] = Counter()  # component
        self.held: Counter[str] = Counter()  # component: requests that waited for a target (``Limits.hold_s``)
        self.current: dict[str, str] = {}  # component → local / remote / none
        self._latency: dict[tuple[str, str], _Histogram] = {}

    def served(self, component: str, target: str, status: int, seconds: float) -> None:
        self.requests[(component, target, f"{status // 100}xx")] += 1
        self._latency.setdefault((component, target), _Histogram()).observe(seconds)

    def error(self, component: str, target: str, kind: str) -> None:
        self.errors[(component, target, kind)] += 1

    def retry(self, component: str, src: str, dst: str) -> None:
        self.retries[(component, src, dst)] += 1

    def hold(self, component: str) -> None:
        self.held[component] += 1

    def fail(self, component: str) -> None:
        self.failed[component] += 1

    def served_by(self, component: str | None = None) -> dict[str, int]:
        """Requests whose response started, per target kind (for one component or all)."""
        out: Counter[str] = Counter()
        for (c, t, _), n in self.requests.items():
            if component is None or c == component:
                out[t] += n
        return dict(out)

    def totals(self) -> dict[str, int]:
        """``total``, ``remote``, ``retried``, ``failed`` over all components (the demo's last line)."""
        by = self.served_by()
        failed = sum(self.failed.values())
        return {"total": sum(by.values()) + failed, "remote": by.get("remote", 0),
                "retried": sum(self.retries.values()), "failed": failed}

    def render(self) -> str:
        lines: list[str] = []

        def family(name: str, kind: str, doc: str) -> None:
            lines.append(f"# HELP {PREFIX}_{name} {doc}")
            lines.append(f"# TYPE {PREFIX}_{name} {kind}")

        family("requests_total", "counter", "Requests whose response started, by target and status class.")
        for (c, t, s), n in sorted(self.requests.items()):
            lines.append(f"{PREFIX}_requests_total{_labels(component=c, target=t, code=s)} {n}")
        family("errors_total", "counter", "Failed attempts on a target, by kind.")
        for (c, t, k), n in sorted(self.errors.items()):
            lines.append(f"{PREFIX}_errors_total{_labels(component=c, target=t, kind=k)} {n}")
        family("retries_total", "counter", "Requests retried on the other target.")
        for (c, s, d), n in sorted(self.retries.items()):
            lines.append(f"{PREFIX}_retries_total{_labels(component=c, source=s, target=d)} {n}")
        family("failed_total", "counter", "Requests the router could not serve (its own 502/503, or cut mid-stream).")
        for c, n in sorted(self.failed.items()):
            lines.append(f"{PREFIX}_failed_total{_labels(component=c)} {n}")
        family("held_total", "counter", "Requests that arrived with no target and waited for one.")
        for c, n in sorted(self.held.items()):
            lines.append(f"{PREFIX}_held_total{_labels(component=c)} {n}")
        family("target_changes_total", "counter", "Target changes.")
        for c, n in sorted(self.changes.items()):
            lines.append(f"{PREFIX}_target_changes_total{_labels(component=c)} {n}")
        family("target", "gauge", "1 for the target new requests go to.")
        for c, t in sorted(self.current.items()):
            for kind in ("local", "remote", "none"):
                lines.append(f"{PREFIX}_target{_labels(component=c, target=kind)} {int(kind == t)}")
        family("response_start_seconds", "histogram", "Time until the response started, by target.")
        for (c, t), h in sorted(self._latency.items()):
            cumulative = 0
            for bound, count in zip((*BUCKETS_S, float("inf")), h.counts, strict=True):
                cumulative += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                lines.append(f"{PREFIX}_response_start_seconds_bucket{_labels(component=c, target=t, le=le)} {cumulative}")
            lines.append(f"{PREFIX}_response_start_seconds_sum{_labels(component=c, target=t)} {h.total:.6f}")
            lines.append(f"{PREFIX}_response_start_seconds_count{_labels(component=c, target=t)} {h.n}")
        return "\n".join(lines) + "\n"
