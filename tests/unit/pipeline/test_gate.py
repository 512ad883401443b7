"""The gate's verdict and the back-off order (pure functions, no models)."""

from __future__ import annotations

from modelpress.pipeline.gate import BACKOFF_ORDER, Measurement, backoff, judge
from modelpress.pipeline.recipe import Budget


def _m(value: float, p50: float, size: float) -> Measurement:
    return Measurement("x", "accuracy", value, 100, "onnxruntime", size, {"p50_ms": p50})


def test_judge_passes_within_budget_and_reports_ratios():
    v = judge(_m(0.95, 2.0, 4.0), _m(0.945, 0.5, 1.0), {"p50_ms": 10.0}, Budget(max_accuracy_drop=0.01, min_speedup=3, min_size_ratio=4))
    assert v.passed and v.reasons == []
    assert abs(v.accuracy_drop - 0.005) < 1e-12
    assert v.speedup == 4.0 and v.speedup_vs_torch == 20.0 and v.size_ratio == 4.0


def test_judge_names_every_missed_limit():
    v = judge(_m(0.95, 2.0, 4.0), _m(0.90, 1.9, 3.0), {"p50_ms": 3.0},
              Budget(max_accuracy_drop=0.01, min_speedup=2, speedup_vs="torch", max_size_mb=2, min_size_ratio=4))
    assert not v.passed
    text = " | ".join(v.reasons)
    assert "dropped 5.00 points (budget 1.00)" in text
    assert "speedup vs torch 1.58× < 2" in text
    assert "size 3.000 MB > 2" in text and "1.33× smaller < 4" in text


def test_backoff_goes_less_pruning_then_float_layers_then_qat():
    stages = [{"kind": "prune", "ratio": 0.5}, {"kind": "finetune", "epochs": 3}, {"kind": "quantize", "mode": "static", "float_layers": 0}]
    done: list[str] = []
    seen = []
    while (nxt := backoff(stages, done)) is not None:
        stages, step = nxt
        done.append(step)
        seen.append((step, stages[0]["ratio"], stages[2]["float_layers"], stages[2]["mode"]))
    assert [s[0] for s in seen] == list(BACKOFF_ORDER)
    assert seen == [("less_pruning", 0.25, 0, "static"), ("more_float", 0.25, 1, "static"), ("qat", 0.25, 1, "qat")]


def test_backoff_skips_steps_that_do_not_apply():
    done: list[str] = []
    stages, step = backoff([{"kind": "quantize", "mode": "static"}], done)  # type: ignore[misc]
    assert step == "more_float" and "less_pruning" in done
    done.append(step)
    stages, step = backoff(stages, done)  # type: ignore[misc]
    assert step == "qat" and stages[0]["mode"] == "qat"
    done.append(step)
    assert backoff(stages, done) is None
    assert backoff([{"kind": "finetune"}], []) is None


def test_backoff_shrinks_distillation_less():
    stages, step = backoff([{"kind": "distill", "student_ratio": 0.5}], [])  # type: ignore[misc]
    assert step == "less_pruning" and stages[0]["student_ratio"] == 0.25
