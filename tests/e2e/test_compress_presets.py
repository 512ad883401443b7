"""Each preset end to end with the real verbs on scikit-learn's digits (DigitsNet, a few epochs)."""

from __future__ import annotations

import pytest

from modelpress.pipeline.recipe import recipe_from_text

pytestmark = pytest.mark.slow

HEAD = """
name: preset-{preset}
model: python:modelpress.testing:DigitsNet
data: digits
pretrain: {{epochs: 6, batch_size: 64}}
preset: {preset}
target: {{backend: onnxruntime, threads: 2, batch: 1}}
budget: {{max_accuracy_drop: 0.03}}
gate: {{max_rounds: 1, bench_seconds: 1}}
"""


def _run(preset: str, tmp_path, extra: str = ""):
    from modelpress.artifact import load_artifact, read_manifest
    from modelpress.pipeline.run import run_recipe

    result = run_recipe(recipe_from_text(HEAD.format(preset=preset) + extra), work_dir=tmp_path / "run", out=tmp_path / "art")
    assert result.passed, [(r.error, r.verdict) for r in result.rounds]
    assert result.baseline.value > 0.85  # the float DigitsNet learned something
    manifest = read_manifest(tmp_path / "art")
    load_artifact(tmp_path / "art")  # hashes verify
    return result, manifest


def test_mobile_preset_prunes_finetunes_and_quantizes(tmp_path):
    result, manifest = _run("mobile", tmp_path, "stages:\n  - {kind: finetune, epochs: 3}\n")
    stages = manifest["lineage"]["stages"]
    assert [s["kind"] for s in stages] == ["prune", "finetune", "quantize"]
    assert manifest["precision"] == "int8"
    assert stages[0]["report"]["macs_after"] < 0.5 * stages[0]["report"]["macs_before"]
    verdict = manifest["metrics"]["verdict"]
    assert verdict["accuracy_drop"] <= 0.03 and verdict["size_ratio"] > 4  # half the channels, then INT8


def test_edge_preset_distills_into_a_smaller_student(tmp_path):
    result, manifest = _run("edge", tmp_path, "stages:\n  - {kind: distill, train: {epochs: 4}}\n")
    assert [s["kind"] for s in manifest["lineage"]["stages"]] == ["distill", "quantize"]
    assert manifest["precision"] == "int8"
    assert manifest["metrics"]["verdict"]["size_ratio"] > 4


def test_server_preset_keeps_the_fastest_precision(tmp_path):
    result, manifest = _run("server", tmp_path)
    report = manifest["lineage"]["stages"][0]["report"]
    assert report["mode"] == "fastest" and report["chosen"] in ("static", "fp16", "bf16")
    tried = {c["mode"]: c for c in report["candidates"]}
    assert set(tried) == {"static", "fp16", "bf16"}
    timed = {m: c["latency_ms"] for m, c in tried.items() if "latency_ms" in c}
    assert timed and report["chosen"] == min(timed, key=timed.get)
