"""`modelpress finetune` and `modelpress distill` end to end on a tiny npz data set."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from modelpress.cli.main import app
from modelpress.errors import ConfigError

MODEL = "python:modelpress.testing:Conv1dNet?shape=1x40"


@pytest.fixture(scope="module")
def data_spec(tmp_path_factory):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400)
    x = rng.normal(0, 0.5, (400, 1, 40)).astype(np.float32)
    for i, c in enumerate(y):
        x[i, 0, c * 12:(c + 1) * 12] += 1.5
    path = tmp_path_factory.mktemp("data") / "bumps.npz"
    np.savez(path, x=x, y=y)
    return f"npz:{path}"


@pytest.mark.slow
def test_finetune_then_distill_from_torch_and_onnx_teachers(data_spec, tmp_path):
    runner = CliRunner()
    teacher = tmp_path / "teacher"
    result = runner.invoke(app, ["finetune", MODEL, "--data", data_spec, "--out", str(teacher), "--epochs", "4", "--lr", "0.01",
                                 "--batch-size", "32", "--threads", "1", "--json", str(tmp_path / "ft.json")])
    assert result.exit_code == 0, result.output
    manifest = json.loads((teacher / "manifest.json").read_text())
    assert manifest["stage"] == "finetune" and manifest["metrics"]["accuracy_after"] > 0.9
    assert (teacher / "model.onnx").is_file() and (teacher / "model.safetensors").is_file()
    report = json.loads((tmp_path / "ft.json").read_text())
    assert len(report["history"]) == 4 and report["samples_per_s"] > 0

    student = tmp_path / "student"
    result = runner.invoke(app, ["distill", MODEL, "--teacher", str(teacher), "--teacher", f"onnx:{teacher}/model.onnx",
                                 "--teacher-weight", "1", "--teacher-weight", "1", "--data", data_spec, "--out", str(student),
                                 "--epochs", "3", "--lr", "0.01", "--batch-size", "32", "--threads", "1", "--alpha", "0.7",
                                 "--temperature", "4", "--temperature-final", "2", "--json", "-"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((student / "manifest.json").read_text())
    assert manifest["stage"] == "distill" and manifest["teachers"][1].startswith("onnx:")
    assert manifest["distill"]["temperatures"] == [4.0, 3.0, 2.0]
    assert manifest["metrics"]["accuracy_after"] > 0.8
    assert len(manifest["metrics"]["teacher_val_accuracy"]) == 2


def test_cli_bad_inputs_are_one_line_errors(data_spec, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["finetune", MODEL, "--data", data_spec, "--out", str(tmp_path / "x"), "--freeze", "pattern:backbone.*"])
    assert isinstance(result.exception, ConfigError) and "freeze.patterns: 'backbone.*' match no parameter" in str(result.exception)
    result = runner.invoke(app, ["finetune", MODEL, "--data", data_spec, "--out", str(tmp_path / "x"), "--freeze", "last-n:two"])
    assert isinstance(result.exception, ConfigError) and "--freeze last-n:N needs an integer N" in str(result.exception)
    result = runner.invoke(app, ["finetune", MODEL, "--data", data_spec, "--out", str(tmp_path / "x"), "--optimizer", "adam"])
    assert isinstance(result.exception, ConfigError) and "optimizer" in str(result.exception)
    result = runner.invoke(app, ["distill", MODEL, "--teacher", MODEL, "--data", data_spec, "--out", str(tmp_path / "y"), "--feature", "features.3"])
    assert isinstance(result.exception, ConfigError) and "--feature must be STUDENT_LAYER=TEACHER_LAYER" in str(result.exception)
