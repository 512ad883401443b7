"""The more_float back-off on the real quantize stage: it floats the layers measured most sensitive.

The model (tests/unit/pipeline/pipeline_fakes.py:OutlierMLP) is built so that INT8 ruins
its *middle* layer, so keeping the first / last layers in float would not help; the
budget's speed limit cannot be met, so the gate fails every round and backs off.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "pipeline"))

from modelpress.pipeline.recipe import recipe_from_text  # noqa: E402

pytestmark = pytest.mark.slow

RECIPE = """
name: float-backoff
model: python:pipeline_fakes:outlier_mlp
data: digits
export: {exporter: torchscript, check: false}
gate: {max_rounds: 2, float_rounds: 2, bench_seconds: 0.3}
budget: {max_accuracy_drop: 0.01, min_speedup: 1000}
stages:
  - {kind: quantize, mode: static, encoding: qdq-u8, mixed_precision: false, max_accuracy_drop: 1.0}
"""


def test_more_float_keeps_the_measured_most_sensitive_layers_and_ranks_once(tmp_path, monkeypatch):
    from modelpress.compress import quantize as q
    from modelpress.pipeline.run import run_recipe

    calls = []
    real = q.measure_sensitivity

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(q, "measure_sensitivity", counting)
    result = run_recipe(recipe_from_text(RECIPE), work_dir=tmp_path / "run", write_report=False)

    assert not result.passed  # 1000x faster is out of reach: every round fails and backs off
    assert [r.backoff_step for r in result.rounds] == [None, "more_float", "more_float"]
    reports = [r.stages[0].report for r in result.rounds]
    assert [r.stages[0].config["float_layers"] for r in result.rounds] == [0, 1, 2]
    assert reports[0]["float_choice"] is None and reports[0]["keep_float"] == []

    ranking = [layer["node"] for layer in reports[1]["float_choice"]["ranking"]]
    assert len(ranking) == 3 and reports[2]["float_choice"]["ranking"] == reports[1]["float_choice"]["ranking"]
    # measured, not positional: fc2 (the middle layer) costs the most, by a wide margin
    assert "fc2" in ranking[0], ranking
    deltas = [layer["delta"] for layer in reports[1]["float_choice"]["ranking"]]
    assert deltas[0] > 0.3 and deltas[0] > 5 * max(deltas[1], 0.01), deltas
    for k, report in ((1, reports[1]), (2, reports[2])):
        kept = [layer["node"] for layer in report["float_choice"]["kept"]]
        assert kept == ranking[:k]
        assert report["keep_float"] == ranking[:k]  # what the quantizer actually left in float
        assert [layer["rank"] for layer in report["float_choice"]["kept"]] == list(range(1, k + 1))

    # floating fc2 recovers the accuracy INT8 took, measured by the gate on ONNX Runtime
    drops = [r.verdict.accuracy_drop for r in result.rounds]
    assert drops[0] > 0.3 and drops[1] < 0.05, (drops, deltas)

    # ranked once per run: the second more_float round (and any later one) reads the cache
    assert len(calls) == 1
    assert [reports[1]["float_choice"]["cached"], reports[2]["float_choice"]["cached"]] == [False, True]
    cached = list((tmp_path / "run" / "cache").glob("sensitivity-*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["sensitivity"]["layers"][0]["node"] == ranking[0]
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["rounds"][1]["stages"][0]["report"]["float_choice"]["kept"][0]["node"] == ranking[0]

    # the manifest / report.html of a round that kept layers float names them with their numbers
    from modelpress.pipeline.report_html import render_report
    from modelpress.pipeline.run import build_manifest

    result.best = 1
    manifest = build_manifest(result)
    assert manifest["lineage"]["stages"][0]["report"]["float_choice"]["kept"][0]["node"] == ranking[0]
    html = render_report(manifest)
    assert f"<td><code>{ranking[0]}</code></td><td>{deltas[0] * 100:.2f}</td><td>float_layers=1: rank 1 of 3 by measured sensitivity</td>" in html
