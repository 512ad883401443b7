"""Drive `modelpress prune` as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "modelpress.cli.main", "prune", *args], capture_output=True, text=True,
                          env=env, timeout=600)


def test_help_has_an_example_and_kebab_case_flags():
    result = run("--help")
    assert result.returncode == 0
    assert "modelpress prune torchvision:resnet18 --ratio 0.5" in result.stdout
    assert "--latency-backend onnxruntime" in result.stdout
    for flag in ("--round-to", "--head-ratio", "--macs-fraction", "--latency-ms", "--latency-backend", "--finetune-epochs", "--json"):
        assert flag in result.stdout


@pytest.mark.slow
def test_prune_writes_a_reloadable_artifact(tmp_path: Path):
    out = tmp_path / "art"
    result = run("python:modelpress.testing:Conv1dNet?shape=1x40", "--ratio", "0.5", "--round-to", "8", "--steps", "2",
                 "--data", "mnist1d", "--finetune-epochs", "1", "--out", str(out), "--json", str(tmp_path / "r.json"))
    assert result.returncode == 0, result.stderr
    assert "fewer" in result.stdout and "accuracy after fine-tuning" in result.stdout
    assert {"model.onnx", "model.safetensors", "architecture.json", "manifest.json", "channels.png"} <= {p.name for p in out.iterdir()}
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["macs_after"] < 0.5 * report["macs_before"]
    assert len(report["steps"]) == 2 and all(s["metric_finetuned"] > 0.2 for s in report["steps"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "prune" and manifest["prune"]["config"]["round_to"] == 8

    from modelpress.artifact import load_artifact

    handle = load_artifact(out)
    assert handle.module.features[0].out_channels == 16
    assert all(layer["kept"] % 8 == 0 for layer in report["layers"] if layer["name"].startswith("features"))


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--ratio", "1.2"), "`ratio` of prune: must be in [0, 1); got 1.2"),
        (("--ignore", "features.0,nope"), "'nope'"),
        (("--importance", "l3"), "`importance`"),
        (("--round-to", "eight"), "--round-to must be a positive integer"),
        (("--ratio", "0.5", "--macs-fraction", "0.5"), "give one target"),
        (("--method", "unstructured"), "--sparsity"),
        (("--method", "magic"), "--method: unknown value"),
        (("--latency-ms", "5", "--latency-backend", "tensorrt"), "`target.backend` of prune: Input should be 'torch', 'onnxruntime' or 'openvino'; got 'tensorrt'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args, needle):
    result = run("python:modelpress.testing:Conv1dNet?shape=1x40", "--out", str(tmp_path / "x"), *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert not (tmp_path / "x").exists()
