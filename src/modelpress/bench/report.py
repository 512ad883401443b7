"""Present bench results: a rich table, JSON, and a PNG plot."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.table import Table

    from modelpress.bench.measure import BenchResult


def speed_words(speedup: float | None, *, suffix: str = "") -> str:
    """Say ``1.50x faster`` or ``1.25x slower``; a ratio below 1 never reads as faster."""
    if speedup is None or speedup <= 0:
        return "–"
    words = f"{speedup:.2f}x faster" if speedup >= 1 else f"{1 / speedup:.2f}x slower"
    return f"{words}{suffix}"


def _fmt_int(value: int | None, unit: float, suffix: str) -> str:
    return "-" if value is None else f"{value / unit:.2f}{suffix}"


def bench_table(result: BenchResult, *, baseline: tuple[str, str] | None = None) -> Table:
    """Build a table of every case; speedups are against ``baseline`` (model, backend) at the same batch."""
    from rich.table import Table

    table = Table(title=f"modelpress bench  (threads={result.config.threads}, {result.environment.get('hardware', {}).get('cpu', '')})")
    for col in ("model", "backend", "batch", "p50 ms", "±95% ci", "p90 ms", "p99 ms", "samples/s", "speedup", "+RSS MB", "size MB", "params", "MACs"):
        table.add_column(col, justify="left" if col in ("model", "backend") else "right")
    base = {}
    if baseline is not None:
        for c in result.cases:
            if (c.model, c.backend) == baseline and c.latency is not None:
                base[c.batch] = c.latency.p50_ms
    for c in result.cases:
        if c.latency is None:
            table.add_row(c.model, c.backend, str(c.batch), "[red]n/a[/red]", "", "", "", "", "", "", "", "", (c.error or "")[:60])
            continue
        lat = c.latency
        ci = f"{lat.rel_half_width * 100:.1f}%" + ("" if c.converged else "*")
        speed = f"{base[c.batch] / lat.p50_ms:.2f}x" if c.batch in base else "-"
        table.add_row(
            c.model, c.backend, str(c.batch), f"{lat.p50_ms:.2f}", ci, f"{lat.p90_ms:.2f}", f"{lat.p99_ms:.2f}",
            f"{c.throughput:.1f}", speed, "-" if c.rss_mb is None else f"{c.rss_mb:.0f}",
            "-" if c.size_mb is None else f"{c.size_mb:.2f}", _fmt_int(c.params, 1e6, "M"), _fmt_int(c.macs, 1e9, "G"),
        )
    if any(not c.converged and c.latency is not None for c in result.cases):
        table.caption = "* the 95% interval of the median did not narrow to the target within the time budget"
    table.caption = ((table.caption or "") + "\n+RSS: resident memory added by loading the session and running the batch").strip()
    return table


def write_json(result: BenchResult, path: Path | str) -> Path:
    """Write the result as JSON (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result.to_json(), indent=2, default=str))
    os.replace(tmp, path)
    return path


def plot(result: BenchResult, path: Path | str) -> Path:
    """Draw p50 latency with its 95% interval per case as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [c for c in result.cases if c.latency is not None]
    labels = [f"{c.model}\n{c.backend} b{c.batch}" for c in cases]
    p50 = [c.latency.p50_ms for c in cases]  # type: ignore[union-attr]
    err = [[c.latency.p50_ms - c.latency.ci95_low_ms for c in cases], [c.latency.ci95_high_ms - c.latency.p50_ms for c in cases]]  # type: ignore[union-attr]
    fig, ax = plt.subplots(figsize=(max(6, len(cases) * 0.9), 4.5))
    ax.bar(range(len(cases)), p50, yerr=err, capsize=3, color="#4a7ab5")
    ax.set_xticks(range(len(cases)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("p50 latency (ms), 95% CI")
    ax.set_title(f"modelpress bench (threads={result.config.threads})")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
