"""Benchmark results: measured rows, targets, the printed table and the JSON file."""

from __future__ import annotations

import dataclasses
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidestep.atomic import write_text_atomic


@dataclass(frozen=True)
class Stat:
    """The median of `n` repetitions with their minimum and maximum."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> "Stat":
        """Summarise repeated measurements (at least one)."""
        return cls(statistics.median(values), min(values), max(values), len(values))


@dataclass
class Row:
    """One measured figure, labelled with what ran where, and optionally compared with its baseline row."""

    group: str
    name: str
    size: str
    device: str
    dtype: str
    unit: str
    stat: Stat
    baseline: str = ""
    ratio: float | None = None
    note: str = ""


@dataclass
class Target:
    """A goal from the issue: the limit, what was measured, and whether it was met (None: not measured this run)."""

    name: str
    limit: str
    measured: str
    met: bool | None
    note: str = ""

    @property
    def status(self) -> str:
        """met / MISSED / not run."""
        return {True: "met", False: "MISSED", None: "not run"}[self.met]


@dataclass
class Report:
    """Everything one benchmark run produced."""

    environment: dict[str, Any]
    settings: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (schema 1)."""
        return {
            "schema": 1,
            "environment": self.environment,
            "settings": self.settings,
            "results": [dataclasses.asdict(row) for row in self.rows],
            "targets": [{**dataclasses.asdict(target), "status": target.status} for target in self.targets],
            "notes": self.notes,
        }


def _number(value: float) -> str:
    """A short human form of a measured value."""
    if value == 0 or abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 0.01:
        return f"{value:.3f}".rstrip("0").rstrip(".") if abs(value) < 1 else f"{value:.2f}"
    return f"{value:.2e}"


def _cells(row: Row) -> list[str]:
    stat = row.stat
    spread = f"{_number(stat.low)}–{_number(stat.high)}" if stat.n > 1 else "—"
    ratio = ""
    if row.ratio is not None:
        share = row.ratio < 0.1  # small fractions read better as a percentage
        ratio = f"{100 * row.ratio:.2f} % of {row.baseline}" if share else f"{row.ratio:.2f}× {row.baseline}"
    median = f"{_number(stat.median)} {row.unit}"
    return [row.group, row.name, row.size, row.dtype, median, spread, str(stat.n), ratio, row.note]


def _grid(header: list[str], lines: list[list[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(header, *lines)]
    render = lambda cells: " | ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip()
    return "\n".join([render(header), "-+-".join("-" * width for width in widths), *map(render, lines)])


def format_table(report: Report) -> str:
    """The measurements, the targets and the run's environment as plain text."""
    env = report.environment
    title = (
        f"Side-Step benchmarks — {env['device']} ({env['cpu']}), torch {env['torch']}, {env['threads']} threads, "
        f"load average {env['load_before']} → {env['load_after']}"
    )
    header = ["group", "benchmark", "size", "dtype", "median", "min–max", "n", "vs baseline", "note"]
    parts = [title, "", _grid(header, [_cells(row) for row in report.rows])]
    if report.targets:
        target_lines = [[t.name, t.limit, t.measured, t.status, t.note] for t in report.targets]
        parts += ["", _grid(["target", "limit", "measured", "status", "why"], target_lines)]
    parts += [f"* {note}" for note in report.notes]
    return "\n".join(parts)


def write_json(report: Report, path: Path) -> Path:
    """Write the report to `path` atomically."""
    write_text_atomic(path, json.dumps(report.to_dict(), indent=2) + "\n")
    return path
