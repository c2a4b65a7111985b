"""The VAST smoke run against the fake: spotleash's own overhead apart from the provider's waits."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.harness import log
from bench.stats import ratio, summary
from spotleash.providers.vast.smoke import smoke_against_fake


def vast_smoke(work_dir: Path, runs: int) -> dict[str, Any]:
    reports: list[dict[str, Any]] = []
    for i in range(runs):
        rep = smoke_against_fake(console=Console(file=io.StringIO(), width=120),
                                 report_path=work_dir / f"vast-smoke-{i}.json")
        reports.append(rep.to_json())
        log.info("bench vast smoke", ok=rep.ok, total_s=rep.total_s, own_s=rep.own_s, provider_s=rep.provider_s)
    ok = [r for r in reports if r["ok"]]
    return {
        "runs": reports,
        "own_s": summary([r["own_s"] for r in ok]),
        "provider_s": summary([r["provider_s"] for r in ok]),
        "total_s": summary([r["total_s"] for r in ok]),
        "failed": len(reports) - len(ok),
    }


def smoke_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    own, prov, total = res["own_s"], res["provider_s"], res["total_s"]
    if not own.get("n"):
        return []
    return [{
        "key": "vast_smoke_overhead", "metric": "VAST smoke run (fake): spotleash overhead beside the provider's waits",
        "unit": "s", "n": own["n"], "median": own["median"], "p99": own["p99"], "max": own["max"],
        "baseline_name": f"waiting on VAST; total {total['median']:.2f} s", "baseline": prov["median"],
        "ratio": ratio(own["median"], prov["median"]), "target": None, "within_target": None,
    }]
