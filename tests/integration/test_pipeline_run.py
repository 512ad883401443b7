"""The whole orchestration on fake stages: gate, back-off, manifest, report.html, resume after a kill.

The fake stages (tests/unit/pipeline/pipeline_fakes.py) damage a trained
logistic regression on digits by amounts their fields control, so the real
gate (export, ONNX Runtime evaluation, side-by-side timing) sees real drops.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "pipeline"))

from modelpress.pipeline.recipe import recipe_from_text  # noqa: E402

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
FAKES = ROOT / "tests" / "unit" / "pipeline"


@pytest.fixture
def fake_stages(monkeypatch):
    import pipeline_fakes

    return pipeline_fakes.use_fakes(monkeypatch)


def _recipe(stages: str, budget: str = "max_accuracy_drop: 0.015", rounds: int = 3):
    return recipe_from_text(f"""
name: fake
plugins: [pipeline_fakes_plugin]
model: python:pipeline_fakes:trained_digits_linear
data: digits
export: {{exporter: torchscript, check: false}}
gate: {{max_rounds: {rounds}, bench_seconds: 0.5}}
budget: {{{budget}}}
stages:
{stages}
""")


def test_failing_budget_backs_off_in_order_then_stops_with_no_artifact(fake_stages, tmp_path):
    from modelpress.pipeline.run import run_recipe

    recipe = _recipe("  - {kind: prune, ratio: 0.6}\n  - {kind: quantize, mode: static}", budget="max_accuracy_drop: 0.0")
    result = run_recipe(recipe, work_dir=tmp_path / "run", write_report=False)
    assert not result.passed and result.artifact is None and result.best is None
    assert "failed" in result.verdict and "4 round" in result.verdict
    assert [r.backoff_step for r in result.rounds] == [None, "less_pruning", "more_float", "qat"]
    configs = [[s.config for s in r.stages] for r in result.rounds]
    assert [c[0]["ratio"] for c in configs] == [0.6, 0.3, 0.3, 0.3]
    assert [c[1]["float_layers"] for c in configs] == [0, 0, 1, 1]
    assert [c[1]["mode"] for c in configs] == ["static", "static", "static", "qat"]
    drops = [r.verdict.accuracy_drop for r in result.rounds]
    assert drops[0] > drops[1] > drops[2] > 0  # each step was gentler, measured on ONNX Runtime
    # the prune stage of rounds 3 and 4 is the same as round 2's: made once, reused
    assert [c["ratio"] for c in fake_stages.FakePrune.calls] == [0.6, 0.3]
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["passed"] is False and len(saved["rounds"]) == 4
    assert not (tmp_path / "run" / "artifact").exists()


def test_backoff_recovers_and_the_artifact_records_everything(fake_stages, tmp_path):
    from modelpress.artifact import load_artifact, read_manifest, sha256_file
    from modelpress.pipeline.run import run_recipe

    recipe = _recipe("  - {kind: prune, ratio: 0.2}")
    result = run_recipe(recipe, work_dir=tmp_path / "run", out=tmp_path / "art")
    assert result.passed and result.best == 1, [r.verdict for r in result.rounds]
    assert result.rounds[0].verdict.accuracy_drop > 0.015 >= result.rounds[1].verdict.accuracy_drop
    art = tmp_path / "art"
    manifest = read_manifest(art)
    assert set(manifest["files"]) >= {"model.onnx", "manifest.json", "report.html", "model.safetensors", "architecture.json"} - {"manifest.json"}
    for name, digest in manifest["files"].items():
        assert sha256_file(art / name) == digest
    assert manifest["recipe"]["name"] == "fake" and manifest["recipe"]["stages"] == [{"kind": "prune", "ratio": 0.2}]
    assert manifest["lineage"]["stages"][0]["config"]["ratio"] == 0.1 and manifest["lineage"]["backoff_step"] == "less_pruning"
    assert manifest["lineage"]["stages"][0]["report"]["zeroed"] == 6
    assert len(manifest["data"]["content_hash"]) == 64 and len(manifest["data"]["calibration_hash"]) == 64
    assert manifest["seeds"] == {"recipe": 0, "stages": [0]}
    before, after = manifest["metrics"]["before"], manifest["metrics"]["after"]
    assert before["metric"] == after["metric"] == "accuracy" and before["backend"] == "onnxruntime"
    assert before["value"] > 0.9 and before["value"] - after["value"] <= 0.015
    assert before["latency"]["p50_ms"] > 0 and after["latency"]["p50_ms"] > 0
    assert manifest["metrics"]["torch_fp32_latency"]["p50_ms"] > 0
    assert "onnxruntime" in manifest["environment"]["libraries"] and "hardware" in manifest["environment"]
    assert len(manifest["gate_rounds"]) == 2 and manifest["gate_rounds"][1]["verdict"]["passed"]
    html = (art / "report.html").read_text()
    assert "data:image/png;base64," in html and "Before / after" in html and "Pruning" in html
    assert "http://" not in html and "https://" not in html and "<script" not in html
    handle = load_artifact(art)  # hashes verify; the checkpoint rebuilds
    assert handle.module is not None and handle.onnx_path.name == "model.onnx"
    assert not [p for p in art.parent.iterdir() if ".tmp-" in p.name]


_KILL_SCRIPT = """
import sys
from modelpress.pipeline.recipe import load_recipe
from modelpress.pipeline.run import run_recipe
run_recipe(load_recipe(sys.argv[1]), work_dir=sys.argv[2], resume="--resume" in sys.argv, write_report=False)
"""

_KILL_RECIPE = """
name: killme
plugins: [pipeline_fakes_plugin]
model: python:pipeline_fakes:trained_digits_linear
data: digits
export: {exporter: torchscript, check: false}
gate: {max_rounds: 0, bench_seconds: 0.5}
budget: {max_accuracy_drop: 0.05}
stages:
  - {kind: prune, ratio: 0.1}
  - {kind: slow, seconds: 4}
"""


def test_resume_after_sigkill_mid_stage_restarts_from_the_last_finished_stage(fake_stages, tmp_path):
    from modelpress.pipeline.recipe import load_recipe
    from modelpress.pipeline.run import run_recipe

    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(_KILL_RECIPE)
    work = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{FAKES}"}
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(recipe_path), str(work)], env=env)
    deadline = time.monotonic() + 120
    while not (work / "scratch" / "1-slow").is_dir():  # the slow stage has started: prune is finished
        assert proc.poll() is None, "the run ended before the kill"
        assert time.monotonic() < deadline, "the slow stage never started"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = sorted(p.name for p in (work / "stages").iterdir() if not p.name.startswith("."))
    assert len(finished) == 1 and finished[0].startswith("0-prune-")  # the killed stage left nothing in place
    prune_dir = work / "stages" / finished[0]
    mtime = prune_dir.stat().st_mtime_ns

    lines: list[str] = []
    result = run_recipe(load_recipe(recipe_path), work_dir=work, resume=True, progress=lines.append, write_report=False)
    assert result.passed
    assert any("baseline: reusing" in line for line in lines)
    assert any("stage 1/2 prune: finished earlier, reusing it" in line for line in lines)
    assert [s.resumed for s in result.rounds[0].stages] == [True, False]
    assert fake_stages.FakePrune.calls == [] and len(fake_stages.SlowStage.calls) == 1
    assert prune_dir.stat().st_mtime_ns == mtime
    assert not (work / "scratch" / "1-slow").exists()


def test_the_same_recipe_and_seed_give_the_same_baseline(tmp_path):
    """The factory's random initial weights are drawn after seeding, so two runs train the same float model."""
    import torch

    from modelpress.pipeline.run import run_recipe

    text = """
name: seeded
model: python:modelpress.testing:DigitsNet
data: digits
seed: 7
pretrain: {epochs: 2, batch_size: 64}
export: {exporter: torchscript, check: false}
gate: {max_rounds: 1, bench_seconds: 0.2}
budget: {max_accuracy_drop: 1.0}
stages:
  - {kind: quantize, mode: dynamic, allow_slower: true}
"""
    first = run_recipe(recipe_from_text(text), work_dir=tmp_path / "a")
    torch.manual_seed(12345)  # whatever the caller's RNG state, the baseline is the same
    second = run_recipe(recipe_from_text(text), work_dir=tmp_path / "b")
    assert first.baseline.value == second.baseline.value
    onnx_a, onnx_b = (next((tmp_path / d).glob("baseline-*/*.onnx")).read_bytes() for d in ("a", "b"))
    assert onnx_a == onnx_b
