"""report.html rendering and atomic stage state (save / load round trip)."""

from __future__ import annotations

import re

import torch

from modelpress.pipeline.report_html import render_report, render_search


def _lat(p50: float) -> dict:
    return {"n": 50, "p50_ms": p50, "p90_ms": p50 * 1.2, "p99_ms": p50 * 1.5, "mean_ms": p50, "ci95_low_ms": p50 * 0.98, "ci95_high_ms": p50 * 1.02}


MANIFEST = {
    "recipe": {"name": "r1", "model": "m", "data": "mnist1d"},
    "target": {"backend": "onnxruntime"},
    "metrics": {
        "before": {"metric": "accuracy", "value": 0.9512, "backend": "onnxruntime", "size_mb": 0.2, "latency": _lat(0.2)},
        "after": {"metric": "accuracy", "value": 0.9461, "backend": "onnxruntime", "size_mb": 0.02, "latency": _lat(0.05)},
        "torch_fp32_latency": _lat(0.6),
        "verdict": {"passed": True, "accuracy_drop": 0.0051, "speedup": 4.0, "speedup_vs_torch": 12.0, "size_ratio": 10.0, "reasons": []},
    },
    "lineage": {"stages": [
        {"kind": "prune", "config": {"ratio": 0.5}, "report": {"layers": [{"name": "features.0", "kind": "conv", "original": 32, "kept": 16}]}},
        {"kind": "quantize", "config": {"mode": "static"}, "report": {"details": {"sensitivity": {"metric": "accuracy", "layers": [{"node": "Conv_0", "delta": 0.01}]}}}},
    ]},
    "gate_rounds": [{"index": 0, "backoff_step": None, "stages": [{"kind": "prune", "config": {"ratio": 0.5}}], "verdict": {"passed": True}}],
    "environment": {"libraries": {"onnxruntime": "1.x"}, "hardware": {"cpu": "x"}},
}


def test_report_is_self_contained_with_table_and_plots():
    html = render_report(MANIFEST, {"points": [{"name": "p0.5+static", "metric": 0.946, "latency_ms": 0.05, "size_mb": 0.02, "pareto": True},
                                               {"name": "float", "metric": 0.951, "latency_ms": 0.2, "size_mb": 0.2, "pareto": True}]})
    assert "PASSED" in html and "95.12" not in html  # values are shown as fractions with 4 digits
    assert "0.9512" in html and "0.9461" in html and "12.00x faster than eager" in html and "10.00× smaller" in html
    # latency, pruning, sensitivity, Pareto: four inline PNGs
    assert len(re.findall(r'src="data:image/png;base64,[A-Za-z0-9+/=]{100,}"', html)) == 4
    assert "http://" not in html and "https://" not in html and "<script" not in html and "<link" not in html


def test_search_page_lists_every_point():
    html = render_search({"recipe": "s", "backend": "onnxruntime", "engine": "local:2", "wall_s": 3.0, "baseline": {"metric": 0.9},
                          "points": [{"name": "a", "metric": 0.9, "latency_ms": 1.0, "size_mb": 1.0, "pareto": True},
                                     {"name": "b", "error": "boom"}]})
    assert "<td>a</td>" in html and "boom" in html and "data:image/png;base64," in html


def test_stage_state_round_trips_without_onnx(tmp_path):
    from modelpress.pipeline.run import load_state, save_state
    from modelpress.sources.models import load_model

    handle = load_model("python:modelpress.testing:DigitsNet")
    save_state(tmp_path / "s", handle, {"note": 1}, "abc")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no temporaries left
    loaded, report = load_state(tmp_path / "s")
    assert report == {"note": 1} and loaded.onnx_path is None and loaded.spec == handle.spec
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded.module(x), handle.module(x))


def test_report_shows_which_layers_are_float_and_why():
    ranking = [{"node": "/fc2/MatMul", "delta": 0.7685}, {"node": "/fc1/MatMul", "delta": 0.0}, {"node": "/fc3/MatMul", "delta": -0.0028}]
    quant = {"kind": "quantize", "config": {"mode": "static", "float_layers": 1, "keep_float": ["/head/MatMul"]},
             "report": {"keep_float": ["/head/MatMul", "/fc2/MatMul", "/fc4/MatMul"], "mixed_precision": {"keep_float": ["/fc4/MatMul"]},
                        "float_choice": {"policy": "most_sensitive", "requested": 1, "available": 3, "metric": "accuracy", "ranking": ranking,
                                         "kept": [{"node": "/fc2/MatMul", "delta": 0.7685, "rank": 1}]}}}
    manifest = {**MANIFEST, "lineage": {"stages": [quant]},
                "gate_rounds": [{"index": 1, "backoff_step": "more_float", "stages": [quant], "verdict": {"passed": True}}]}
    html = render_report(manifest)
    assert "Layers left in float" in html and "accuracy drop (points) when only it is INT8" in html
    assert "<td><code>/fc2/MatMul</code></td><td>76.85</td><td>float_layers=1: rank 1 of 3 by measured sensitivity</td>" in html
    assert "<td><code>/head/MatMul</code></td><td>–</td><td>keep_float in the recipe</td>" in html
    assert "/fc4/MatMul</code></td><td>–</td><td>the quantizer&#x27;s mixed precision" in html
    assert "quantize static, 1 most sensitive float" in html  # the gate round names the step's count
    # the ranking is plotted even without `sensitivity: true` (the verb's details sit at the report's top level)
    assert "Per-layer quantization sensitivity" in html and len(re.findall(r'src="data:image/png;base64,', html)) == 2
