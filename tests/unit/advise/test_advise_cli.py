"""`modelpress advise` on the command line: JSON, plot, catalogue errors."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from modelpress.cli.main import app
from modelpress.errors import ConfigError


@pytest.fixture
def tiny_onnx(tiny_convnet, tmp_path):
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(tiny_convnet, (torch.randn(1, 3, 16, 16),), str(path), dynamo=False,
                      input_names=["input"], dynamic_axes={"input": {0: "batch"}})
    return path


def test_json_and_plot(tiny_onnx, tmp_path):
    out, png = tmp_path / "advise.json", tmp_path / "advise.png"
    result = CliRunner().invoke(app, [
        "advise", str(tiny_onnx), "--devices", "nvidia-t4,raspberry-pi-5", "--precision", "fp32,int8",
        "--batch", "1,8", "--sort", "cost", "--json", str(out), "--plot", str(png),
    ])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["model"]["macs"] == 1_290_400
    assert {(e["device"], e["precision"], e["batch"]) for e in data["estimates"]} == {
        (d, p, b) for d in ("nvidia-t4", "raspberry-pi-5") for p in ("fp32", "int8") for b in (1, 8)}
    costs = [e["cost_per_million_usd"] for e in data["estimates"]]
    assert costs == sorted(costs)
    t4 = {e["batch"]: e for e in data["estimates"] if (e["device"], e["precision"]) == ("nvidia-t4", "fp32")}
    assert t4[8]["throughput_per_s"] > t4[1]["throughput_per_s"]     # the fixed launch overhead is shared by 8
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "raspberry-pi-5" in result.output


def test_bad_user_catalogue_is_a_config_error(tiny_onnx, tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text("devices:\n  nvidia-t4:\n    power_w: lots\n")
    result = CliRunner().invoke(app, ["advise", str(tiny_onnx), "--catalog", str(bad)])
    assert isinstance(result.exception, ConfigError)
    assert "device 'nvidia-t4'" in str(result.exception) and "`power_w`" in str(result.exception)


def test_bad_batch_list(tiny_onnx):
    result = CliRunner().invoke(app, ["advise", str(tiny_onnx), "--batch", "1,eight"])
    assert isinstance(result.exception, ConfigError) and "--batch" in str(result.exception)


def test_missing_model_file(tmp_path):
    result = CliRunner().invoke(app, ["advise", str(tmp_path / "nope.onnx")])
    assert isinstance(result.exception, ConfigError) and "nope.onnx" in str(result.exception)


def test_importing_advise_stays_light():
    import subprocess
    import sys

    code = ("import sys, modelpress.advise, modelpress.cli.advise; "
            "print(','.join(m for m in ('torch', 'onnx', 'onnxruntime', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_list_devices_shows_sources_and_user_entries(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text(
        "devices:\n  my-box:\n    name: Box\n    kind: cpu\n    calibration_class: x86-avx2\n    peak_tops: {fp32: 0.2}\n"
        "    memory_bandwidth_gbs: 20\n    memory_gb: 8\n    power_w: 30\n    price_usd: 500\n    source: my notes\n"
    )
    result = CliRunner().invoke(app, ["advise", "unused", "--list-devices", "--catalog", str(mine)])
    assert result.exit_code == 0, result.output
    assert "my-box" in result.output and "my notes" in result.output and "NVIDIA T4 Tensor Core GPU datasheet" in result.output
