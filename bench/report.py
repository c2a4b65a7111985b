"""Render the benchmark results: a Markdown table for docs/benchmarks.md and a plain summary for the console."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

START, END = "<!-- bench:start -->", "<!-- bench:end -->"
COLUMNS = ("metric", "n", "median", "p99", "max", "baseline (median)", "ratio", "target", "")


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "–"
    if unit == "ms":
        return f"{value:.1f} ms" if value < 10 else f"{value:.0f} ms"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "reads":
        return f"{value:,.0f}"
    if unit == "%":
        return f"{value:.2f} %"
    if unit == "req/s":
        return f"{value:,.0f} req/s"
    if unit == "MB/s":
        return f"{value:,.0f} MB/s"
    if unit == "MB":
        return f"{value:.1f} MB"
    return f"{value:g} {unit}".strip()


def fmt_ratio(r: float | None) -> str:
    if r is None:
        return "–"
    return f"{r:.2f}×" if r < 10 else f"{r:.0f}×"


def verdict(row: dict[str, Any]) -> str:
    met = row.get("within_target")
    return "" if met is None else ("✓" if met else "✗ over")


def row_cells(row: dict[str, Any]) -> list[str]:
    unit = str(row.get("unit", ""))
    baseline = row.get("baseline")
    base = "–" if baseline is None else f"{fmt(baseline, unit)} ({row.get('baseline_name', 'baseline')})"
    return [
        str(row["metric"]), str(row.get("n", "")), fmt(row.get("median"), unit), fmt(row.get("p99"), unit),
        fmt(row.get("max"), unit), base, fmt_ratio(row.get("ratio")), str(row.get("target") or "–"), verdict(row),
    ]


def _escape(cell: str) -> str:
    return cell.replace("|", "\\|")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(_escape(c) for c in row_cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def machine_line(results: dict[str, Any]) -> str:
    m = results.get("machine", {})
    return (f"Measured {results.get('date', '?')} on {m.get('arch', '?')}, {m.get('cores', '?')} cores, "
            f"{m.get('ram_gb', '?')} GB RAM, Python {m.get('python', '?')}, spotleash commit "
            f"`{str(m.get('commit', '?'))[:10]}`; {'quick' if results.get('quick') else 'full'} run of "
            f"`uv run python -m bench` took {results.get('duration_s', 0):.0f} s.")


def docs_section(results: dict[str, Any]) -> str:
    parts = [machine_line(results), "", markdown_table(results.get("rows", []))]
    notes = results.get("notes") or []
    if notes:
        parts += [""] + [f"- {n}" for n in notes]
    parts += ["", "Raw samples, baselines and per-run details: `bench/results/latest.json`. "
              "Targets are quoted, never asserted."]
    return "\n".join(parts)


def update_page(page: Path, section: str) -> bool:
    """Replace what lies between the bench markers; False (file untouched) when the markers are missing."""
    text = page.read_text()
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        return False
    page.write_text(pattern.sub(lambda _m: f"{START}\n{section}\n{END}", text, count=1))
    return True


def console_table(rows: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    t = Table(title="spotleash benchmarks")
    for c in COLUMNS:
        t.add_column(c, justify="left" if c in ("metric", "target") else "right")
    for r in rows:
        t.add_row(*row_cells(r))
    return t
