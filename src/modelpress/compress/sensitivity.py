"""Per-layer quantization sensitivity and automatic mixed precision.

Sensitivity of a layer is the metric drop when only that layer is quantized
(``mode="only-quantized"``) or the metric gained back when only it is left in
float (``mode="only-float"``). Mixed precision keeps the fewest most-sensitive
layers in float that bring the whole model within the accuracy budget.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from modelpress.compress import _encodings as enc

if TYPE_CHECKING:
    from modelpress.compress.quantize import _Ctx

logger = logging.getLogger(__name__)


@dataclass
class Sensitivity:
    """Per-layer metric change, most sensitive first."""

    mode: str
    encoding: str
    metric: str
    reference: float
    layers: list[tuple[str, float]]  # (node name, drop caused by quantizing it / recovered by floating it)
    plot: Path | None = None

    @property
    def ranking(self) -> list[str]:
        return [name for name, _ in self.layers]

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "encoding": self.encoding, "metric": self.metric, "reference": self.reference,
                "layers": [{"node": n, "delta": d} for n, d in self.layers],
                "plot": self.plot.name if self.plot else None}


def analyse(ctx: _Ctx, encoding: str, *, mode: Literal["only-quantized", "only-float"] = "only-quantized",
            plot: bool = True) -> Sensitivity:
    """Measure every quantizable layer's effect on the validation metric.

    Args:
        encoding: the INT8 encoding to quantize with ("qdq-u8", ...); with "only-float", an
            operator-form one is replaced by its QDQ form (the one that keeps a layer float).
        mode: quantize only this layer, or quantize all but this layer.
        plot: draw a bar chart to ``work/sensitivity.png``.
    """
    if mode == "only-float":
        encoding = enc.with_float_layers(encoding)
    nodes = enc.quantizable_nodes(ctx.source)
    full = ctx.quality(ctx.build(encoding, "sens-full")) if mode == "only-float" else None
    layers = []
    for i, node in enumerate(nodes):
        ctx.say(f"sensitivity {node}", i / max(1, len(nodes)))
        if mode == "only-quantized":
            q = ctx.quality(ctx.build(encoding, "sens", only=[node]))
            layers.append((node, q.drop))
        else:
            q = ctx.quality(ctx.build(encoding, "sens", keep=[node]))
            layers.append((node, q.value - full.value))  # type: ignore[union-attr]
    layers.sort(key=lambda t: t[1], reverse=True)
    ref = ctx.quality(ctx.m.onnx_path)
    result = Sensitivity(mode, encoding, ref.metric, ref.reference, layers)
    if plot and layers:
        result.plot = _plot(result, ctx.work / "sensitivity.png")
    return result


def _plot(s: Sensitivity, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, _ in s.layers][:40]
    vals = [d for _, d in s.layers][:40]
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.25 * len(names))))
    ax.barh(range(len(names)), vals, color="#c0504d")
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    what = "drop when only this layer is int8" if s.mode == "only-quantized" else "gain when only this layer is float"
    ax.set_xlabel(f"{s.metric} {what}")
    ax.set_title(f"Quantization sensitivity ({s.encoding})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@dataclass
class MixedPrecision:
    """The fewest float layers found that meet the budget (``path`` None when none did)."""

    keep_float: list[str]
    path: Path | None
    tried: list[dict[str, Any]] = field(default_factory=list)
    ranking: list[tuple[str, float]] = field(default_factory=list)
    encoding: str = "qdq-u8"

    def to_dict(self) -> dict[str, Any]:
        return {"keep_float": self.keep_float, "met_budget": self.path is not None, "encoding": self.encoding,
                "tried": self.tried,
                "ranking": [{"node": n, "delta": d} for n, d in self.ranking]}


def mixed_precision(ctx: _Ctx, encoding: str) -> MixedPrecision:
    """Keep the fewest most-sensitive layers in float so that the drop fits the budget.

    Ranks layers by :func:`analyse`, then grows the float set by doubling and
    bisects back to the smallest count that meets ``max_accuracy_drop``. An operator-form
    ``encoding`` is replaced by its QDQ form, the one that can keep a layer float
    (:func:`modelpress.compress._encodings.with_float_layers`).
    """
    encoding = enc.with_float_layers(encoding)
    sens = analyse(ctx, encoding, plot=True)
    ranking = sens.ranking
    budget = ctx.cfg.max_accuracy_drop
    tried: list[dict[str, Any]] = []
    cache: dict[int, tuple[bool, Path]] = {}

    def attempt(k: int) -> bool:
        if k not in cache:
            path = ctx.build(encoding, f"mixed-{k}", keep=ranking[:k])
            q = ctx.quality(path)
            cache[k] = (q.drop <= budget + 1e-12, path)
            tried.append({"float_layers": k, "metric": q.value, "drop": q.drop})
        return cache[k][0]

    lo, hi = 0, None
    k = 1
    while k <= len(ranking):
        if attempt(k):
            hi = k
            break
        lo = k
        k *= 2
    if hi is None and ranking and attempt(len(ranking)):
        hi = len(ranking)
    if hi is None:
        return MixedPrecision([], None, tried, sens.layers, encoding)
    while hi - lo > 1:  # smallest passing count in (lo, hi]
        mid = (lo + hi) // 2
        if attempt(mid):
            hi = mid
        else:
            lo = mid
    logger.info("mixed precision: %d of %d layers kept in float", hi, len(ranking))
    return MixedPrecision(ranking[:hi], cache[hi][1], tried, sens.layers, encoding)
