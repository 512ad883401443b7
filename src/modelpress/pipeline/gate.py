"""The accuracy gate: measure the artifact against the float baseline on the target, and back off.

Baseline and candidate are both scored by :func:`modelpress.runtime.evaluate.evaluate`
on the same split and the same backend; latency is measured side by side,
interleaved, with :func:`modelpress.bench.measure.bench`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from modelpress.pipeline.recipe import Budget, Gate, Target
    from modelpress.sources.data import Dataset, Split
    from modelpress.sources.models import ModelHandle

log = logging.getLogger(__name__)

# The back-off order the issue fixes: less pruning, then more layers in float, then QAT instead of PTQ.
BACKOFF_ORDER = ("less_pruning", "more_float", "qat")
_INT8 = ("dynamic", "static", "qat", "fastest")


@dataclass
class Measurement:
    """Quality, latency and size of one model on the target backend."""

    label: str
    metric: str
    value: float
    samples: int
    backend: str
    size_mb: float
    latency: dict[str, Any] | None = None  # LatencyStats as a dict (p50_ms, p90_ms, ...)

    @property
    def p50_ms(self) -> float | None:
        return None if self.latency is None else float(self.latency["p50_ms"])


@dataclass
class Verdict:
    """How a candidate compares with the baseline, and whether it meets the budget."""

    passed: bool
    accuracy_drop: float
    speedup: float | None
    speedup_vs_torch: float | None
    size_ratio: float
    reasons: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "accuracy_drop": self.accuracy_drop, "speedup": self.speedup,
                "speedup_vs_torch": self.speedup_vs_torch, "size_ratio": self.size_ratio, "reasons": self.reasons}


def eval_split(data: Dataset, gate: Gate) -> Split:
    """The split the gate scores on (test if any, else val), cut to ``gate.eval_samples``."""
    split = data.eval_split
    if gate.eval_samples is not None and len(split) > gate.eval_samples:
        split = split.take(slice(0, gate.eval_samples))
    return split


def reference_outputs(handle: ModelHandle, split: Split, target: Target) -> np.ndarray:
    """The float model's outputs on the target backend (agreement / cosine need them)."""
    from modelpress.runtime import RuntimeOptions, load_session
    from modelpress.runtime.evaluate import predict

    session = load_session(handle, target.backend, RuntimeOptions(threads=target.threads, device=target.device))
    return predict(session, handle, split.x)


def quality(handle: ModelHandle, split: Split, target: Target, reference: np.ndarray | None, label: str) -> Measurement:
    """Score ``handle``'s ONNX file on the target backend."""
    from modelpress.runtime import RuntimeOptions, load_session
    from modelpress.runtime.evaluate import evaluate

    session = load_session(handle, target.backend, RuntimeOptions(threads=target.threads, device=target.device))
    q = evaluate(session, handle, split, reference=reference)
    size = Path(handle.onnx_path).stat().st_size / 2**20 if handle.onnx_path else float("nan")
    return Measurement(label, q.metric, q.value, q.samples, q.backend, size)


def measure_speed(baseline: ModelHandle, candidates: dict[str, ModelHandle], target: Target, seconds: float) -> dict[str, dict[str, Any]]:
    """Time the float model (target backend and PyTorch eager) and each candidate, interleaved.

    Returns:
        ``{label: LatencyStats dict}``; the float model on torch is labelled ``"float@torch"``.
    """
    import dataclasses

    from modelpress.bench.measure import BenchConfig, BenchEntry, bench

    config = BenchConfig(batch_sizes=(target.batch,), threads=target.threads, max_seconds=seconds, warmup_s=0.2, min_reps=20)
    entries = [BenchEntry("float", baseline)] + [BenchEntry(k, v) for k, v in candidates.items()]
    result = bench(entries, [target.backend, "torch"], config)
    out: dict[str, dict[str, Any]] = {}
    for case in result.cases:
        if case.latency is None:
            continue
        if case.backend == target.backend:
            out[case.model] = dataclasses.asdict(case.latency)
        elif case.model == "float":
            out["float@torch"] = dataclasses.asdict(case.latency)
    return out


def judge(base: Measurement, cand: Measurement, torch_latency: dict[str, Any] | None, budget: Budget) -> Verdict:
    """Compare a candidate with the baseline under ``budget``."""
    drop = base.value - cand.value
    speedup = base.p50_ms / cand.p50_ms if base.p50_ms and cand.p50_ms else None
    vs_torch = torch_latency["p50_ms"] / cand.p50_ms if torch_latency and cand.p50_ms else None
    size_ratio = base.size_mb / cand.size_mb if cand.size_mb else float("nan")
    reasons = []
    # a hair of slack: a drop of exactly the budget, up to float rounding, passes
    if drop > budget.max_accuracy_drop + 1e-9:
        reasons.append(f"{cand.metric} dropped {drop * 100:.2f} points (budget {budget.max_accuracy_drop * 100:.2f})")
    if budget.min_speedup is not None:
        got = vs_torch if budget.speedup_vs == "torch" else speedup
        if got is None or got < budget.min_speedup:
            reasons.append(f"speedup vs {budget.speedup_vs} {got if got is None else round(got, 2)}× < {budget.min_speedup}×")
    if budget.max_size_mb is not None and cand.size_mb > budget.max_size_mb:
        reasons.append(f"size {cand.size_mb:.3f} MB > {budget.max_size_mb} MB")
    if budget.min_size_ratio is not None and size_ratio < budget.min_size_ratio:
        reasons.append(f"{size_ratio:.2f}× smaller < {budget.min_size_ratio}×")
    return Verdict(not reasons, drop, speedup, vs_torch, size_ratio, reasons)


def _more_float(stage: dict[str, Any], report: dict[str, Any] | None) -> bool:
    """Raise a quantize stage's ``float_layers`` for the next round; False when nothing is left to float.

    The count doubles, starting at 1 — and from what the last round actually left in float
    beyond the recipe's own ``keep_float`` when that was more (the quantizer's mixed precision
    may already have floated some of the most sensitive layers; asking for fewer would rebuild
    the same model).
    """
    current = int(stage.get("float_layers") or 0)
    report = report or {}
    choice = report.get("float_choice") or {}
    if choice and len(choice.get("kept") or []) >= int(choice.get("available") or 0):
        return False  # every quantizable layer is already float
    by_hand = set(stage.get("keep_float") or ())
    floated = len(set(report.get("keep_float") or ()) - by_hand)
    base = max(current, floated)
    stage["float_layers"] = max(1, 2 * base)
    if choice.get("available"):
        stage["float_layers"] = min(stage["float_layers"], int(choice["available"]))
    return True


def backoff(
    stages: list[dict[str, Any]], done: list[str], *, float_rounds: int = 1, last: Sequence[dict[str, Any]] | None = None,
) -> tuple[list[dict[str, Any]], str] | None:
    """Return the next, gentler stage list and the step taken, or None when nothing is left.

    Steps go in :data:`BACKOFF_ORDER`, skipping those that do not apply: halve every
    prune ratio (and distillation's student shrink), leave more of the most
    quantization-sensitive layers in float (the quantize stage measures which), switch
    static INT8 to QAT. Each step is taken once, except ``more_float``, up to
    ``float_rounds`` times in a row (doubling the count each time).

    Args:
        done: the steps taken so far (one entry per round); a step found not to apply
            is appended here until it is used up.
        last: the last round's stage reports, aligned with ``stages`` (what the
            quantizer actually left in float); None when the round produced none.
    """
    for step in BACKOFF_ORDER:
        limit = float_rounds if step == "more_float" else 1
        if done.count(step) >= limit:
            continue
        new = copy.deepcopy(stages)
        changed = False
        for i, stage in enumerate(new):
            if step == "less_pruning":
                if stage["kind"] == "prune" and (stage.get("ratio") or 0) > 0.02:
                    stage["ratio"] = round(stage["ratio"] / 2, 4)
                    changed = True
                elif stage["kind"] == "distill" and stage.get("student_ratio"):
                    stage["student_ratio"] = round(stage["student_ratio"] / 2, 4)
                    changed = True
            elif step == "more_float" and stage["kind"] == "quantize" and stage.get("mode") in _INT8:
                report = last[i] if last is not None and i < len(last) else None
                changed = _more_float(stage, report) or changed
            elif step == "qat" and stage["kind"] == "quantize" and stage.get("mode") == "static":
                stage["mode"] = "qat"
                changed = True
        if changed:
            return new, step
        done.extend([step] * (limit - done.count(step)))
    return None
