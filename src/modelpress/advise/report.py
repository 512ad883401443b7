"""Turn estimates into rows, a plain-text table and a PNG plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelpress.advise.roofline import Estimate

COLUMNS = ("device", "prec", "batch", "latency ms", "bound", "util", "mJ/inf", "$/1M inf", "mem GB", "fits", "calibration")


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def rows(estimates: list[Estimate]) -> list[tuple[str, ...]]:
    """Return one formatted row per estimate, in the order of COLUMNS."""
    out = []
    for e in estimates:
        out.append((
            e.device, e.precision, str(e.batch), _fmt(e.latency_ms, ".3g"), e.bound,
            "-" if e.utilisation is None else f"{e.utilisation:.1%}", _fmt(e.energy_mj, ".3g"),
            _fmt(e.cost_per_million_usd, ".3g"), f"{e.memory_needed_gb:.3g}", "yes" if e.fits else "NO",
            e.calibration if not e.note else f"{e.calibration}; {e.note}",
        ))
    return out


def text_table(estimates: list[Estimate]) -> str:
    """Format estimates as an aligned plain-text table."""
    table = [COLUMNS, *rows(estimates)]
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in table)


def plot(estimates: list[Estimate], path: str | Path, *, title: str = "") -> Path:
    """Write a log-log scatter of latency against cost per million inferences, one point per device and precision."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(9, 6))
    markers: dict[str, Any] = {"fp32": "o", "fp16": "s", "bf16": "D", "int8": "^"}
    for e in estimates:
        if e.latency_ms is None or e.cost_per_million_usd is None:
            continue
        colour = "tab:blue" if e.calibration.startswith("calibrated") else "tab:grey"
        ax.scatter(e.latency_ms, e.cost_per_million_usd, marker=markers.get(e.precision, "o"),
                   c=colour, edgecolors="black" if e.fits else "red")
        ax.annotate(f"{e.device} {e.precision}", (e.latency_ms, e.cost_per_million_usd), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("latency per batch (ms, roofline estimate)")
    ax.set_ylabel("cost per million inferences (USD)")
    ax.set_title(title or "modelpress advise: latency vs cost (blue = calibrated, red edge = does not fit)")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
