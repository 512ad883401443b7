"""--search on fake stages: a local process pool and Ray Tune on a local Ray instance."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "pipeline"))

from modelpress.pipeline.recipe import recipe_from_text  # noqa: E402
from modelpress.pipeline.search import TrialResult, grid, pareto  # noqa: E402

RECIPE = """
name: fake-search
plugins: [pipeline_fakes_plugin]
model: python:pipeline_fakes:trained_digits_linear
data: digits
export: {exporter: torchscript, check: false}
gate: {bench_seconds: 0.5}
search: {prune_ratios: [0, 0.1, 0.6], quantize: [none, static], finetune_epochs: 0, workers: 2}
stages: [{kind: prune, ratio: 0.5}]
"""


@pytest.fixture
def fake_stages(monkeypatch):
    import pipeline_fakes

    return pipeline_fakes.use_fakes(monkeypatch)


def test_grid_expands_every_combination(fake_stages):
    recipe = recipe_from_text(RECIPE.replace("finetune_epochs: 0", "finetune_epochs: 2").replace("quantize: [none, static]", "quantize: [none, static], distill: [false, true]"))
    jobs = dict(grid(recipe))
    assert len(jobs) == 3 * 2 * 2
    assert jobs["float"] == []
    assert [s["kind"] for s in jobs["kd+p0.6+static"]] == ["distill", "prune", "finetune", "quantize"]
    assert jobs["p0.1"][0]["ratio"] == 0.1 and jobs["p0.1"][1] == {"kind": "finetune", "epochs": 2}


def test_pareto_keeps_only_undominated_points():
    pts = [TrialResult("a", [], metric=0.9, latency_ms=1.0, size_mb=1.0), TrialResult("b", [], metric=0.8, latency_ms=2.0, size_mb=1.0),
           TrialResult("c", [], metric=0.7, latency_ms=0.5, size_mb=1.0), TrialResult("d", [], metric=0.9, latency_ms=1.0, size_mb=0.5),
           TrialResult("e", [], error="boom")]
    pareto(pts)
    assert [p.name for p in pts if p.pareto] == ["c", "d"]


def _check(result, tmp_path, n=6):
    assert len(result.trials) == n and all(t.error is None for t in result.trials), [t.error for t in result.trials]
    by = {t.name: t for t in result.trials}
    assert by["float"].accuracy_drop == pytest.approx(0.0, abs=1e-9)
    assert by["p0.6"].metric < by["float"].metric  # measured on ONNX Runtime
    if "p0.1" in by:
        assert by["p0.6"].metric < by["p0.1"].metric < by["float"].metric + 1e-9
    assert all(t.latency_ms and t.latency_ms > 0 for t in result.trials)
    front = {t.name for t in result.front}
    assert "float" in front or by["float"].latency_ms > min(t.latency_ms for t in result.trials if t.metric >= by["float"].metric)
    body = json.loads(result.json_path.read_text())
    assert len(body["points"]) == n and set(body["front"]) == front
    html = result.report.read_text()
    assert "data:image/png;base64," in html and "Pareto" in html


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_search_on_a_local_process_pool(fake_stages, tmp_path):
    from modelpress.pipeline.search import run_search

    result = run_search(recipe_from_text(RECIPE), work_dir=tmp_path / "s", bench_seconds=2)
    assert result.engine == "local:2"
    _check(result, tmp_path)


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(1800)
def test_search_as_ray_tune_trials_on_a_local_cluster(fake_stages, tmp_path):
    ray = pytest.importorskip("ray")
    from modelpress.pipeline.search import run_search

    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    try:
        # two trials keep the test short on a busy machine; the grid itself is tested above
        recipe = recipe_from_text(RECIPE.replace("prune_ratios: [0, 0.1, 0.6], quantize: [none, static]", "prune_ratios: [0, 0.6], quantize: [none]"))
        result = run_search(recipe, work_dir=tmp_path / "s", ray_address="auto", bench_seconds=2)
    finally:
        ray.shutdown()
    assert result.engine == "ray:auto"
    _check(result, tmp_path, n=2)
    assert (tmp_path / "s" / "trials" / "ray").is_dir()  # Ray Tune's experiment storage
