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


def _walk(stages, **kwargs):
    done: list[str] = []
    seen = []
    while (nxt := backoff(stages, done, **kwargs)) is not None:
        stages, step = nxt
        done.append(step)
        seen.append((step, stages[0].get("float_layers"), stages[0]["mode"]))
    return seen


def test_more_float_doubles_for_as_many_rounds_as_the_gate_allows_then_qat():
    seen = _walk([{"kind": "quantize", "mode": "static", "float_layers": 0}], float_rounds=3)
    assert seen == [("more_float", 1, "static"), ("more_float", 2, "static"), ("more_float", 4, "static"), ("qat", 4, "qat")]


def test_more_float_goes_beyond_what_the_quantizer_already_floated():
    # round 1's quantizer met its own budget by floating two layers besides the recipe's keep_float:
    # asking for one would rebuild the same model
    stage = {"kind": "quantize", "mode": "static", "float_layers": 0, "keep_float": ["head"]}
    last = [{"keep_float": ["head", "/b/MatMul", "/c/MatMul"], "float_choice": None}]
    stages, step = backoff([stage], [], last=last)  # type: ignore[misc]
    assert step == "more_float" and stages[0]["float_layers"] == 4
    # capped at the number of layers the ranking had left
    last = [{"keep_float": ["head", "/b/MatMul"], "float_choice": {"kept": [{"node": "/b/MatMul"}], "available": 3}}]
    stages, step = backoff([{**stage, "float_layers": 1}], [], float_rounds=2, last=last)  # type: ignore[misc]
    assert step == "more_float" and stages[0]["float_layers"] == 2
    last = [{"keep_float": ["/a", "/b"], "float_choice": {"kept": [{"node": "/a"}, {"node": "/b"}], "available": 2}}]
    stages, step = backoff([{**stage, "float_layers": 2}], ["more_float"], float_rounds=3, last=last)  # type: ignore[misc]
    assert step == "qat"  # every layer is already float: the step no longer applies


def test_most_sensitive_picks_by_measured_rank_not_position():
    from modelpress.pipeline.stages import most_sensitive

    sens = {"metric": "accuracy", "encoding": "qdq-u8", "reference": 0.9,
            "layers": [{"node": "/mid/MatMul", "delta": 0.4}, {"node": "/first/MatMul", "delta": 0.02}, {"node": "/last/MatMul", "delta": 0.01}]}
    got = most_sensitive(sens, 1)
    assert [x["node"] for x in got["kept"]] == ["/mid/MatMul"] and got["kept"][0] == {"node": "/mid/MatMul", "delta": 0.4, "rank": 1}
    got = most_sensitive(sens, 2, already_float=["/mid/MatMul"])  # the recipe's keep_float is not counted
    assert [(x["node"], x["rank"]) for x in got["kept"]] == [("/first/MatMul", 2), ("/last/MatMul", 3)]
    assert got["available"] == 2 and got["requested"] == 2 and len(got["ranking"]) == 3


def test_the_ranking_is_measured_once_per_input_model_and_settings(tmp_path, monkeypatch):
    from modelpress.compress import quantize as q
    from modelpress.compress.sensitivity import Sensitivity
    from modelpress.pipeline.recipe import Target
    from modelpress.pipeline.stages import StageContext, sensitivity_ranking

    calls = []

    def fake(handle, cfg, *, data):
        calls.append(cfg)
        return Sensitivity("only-quantized", "qdq-u8", "accuracy", 0.9, [("/b", 0.3), ("/a", 0.1)])

    monkeypatch.setattr(q, "measure_sensitivity", fake)

    def ctx(key: str) -> StageContext:
        return StageContext(data=None, target=Target(), budget=Budget(), seed=0, work_dir=tmp_path, cache_dir=tmp_path / "cache", input_key=key)  # type: ignore[arg-type]

    first, cached = sensitivity_ranking(None, "static", {"calibration": "entropy"}, ctx("k1"))  # type: ignore[arg-type]
    assert not cached and [x["node"] for x in first["layers"]] == ["/b", "/a"] and calls[0].calibration == "entropy"
    again, cached = sensitivity_ranking(None, "qat", {"calibration": "entropy", "epochs": 2}, ctx("k1"))  # type: ignore[arg-type]
    assert cached and again == first and len(calls) == 1  # QAT's training fields do not change the ranking
    _, cached = sensitivity_ranking(None, "static", {"calibration": "minmax"}, ctx("k1"))  # type: ignore[arg-type]
    assert not cached and len(calls) == 2  # other calibration: measured again
    _, cached = sensitivity_ranking(None, "static", {"calibration": "entropy"}, ctx("k2"))  # type: ignore[arg-type]
    assert not cached and len(calls) == 3  # another input model (e.g. pruned less)
    _, cached = sensitivity_ranking(None, "dynamic", {}, ctx("k1"))  # type: ignore[arg-type]
    assert not cached and calls[-1].preprocess is False  # dynamic quantizes the raw graph: rank its node names
    assert len(list((tmp_path / "cache").glob("sensitivity-*.json"))) == 4
