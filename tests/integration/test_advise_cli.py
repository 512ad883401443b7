"""`modelpress advise` as a user runs it: a real torchvision model, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "modelpress.cli.main", "advise", *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_resnet18_fp32_and_int8_json():
    result = run("torchvision:resnet18", "--precision", "fp32,int8", "--devices", "nvidia-t4,raspberry-pi-5", "--json", "-")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["model"]["macs"] == 1_814_073_344        # torchvision's published 1.81 GMACs
    by = {(e["device"], e["precision"]): e for e in data["estimates"]}
    pi32, pi8 = by[("raspberry-pi-5", "fp32")], by[("raspberry-pi-5", "int8")]
    # Pi 5: 4 x 2.4 GHz x 16 FP32 FLOP/cycle x 0.5 efficiency -> 2 * 1.814e9 / 76.8e9 = 47.2 ms of compute
    assert pi32["compute_ms"] == pytest.approx(2 * 1_814_073_344 / 76.8e9 * 1e3, rel=1e-6)
    assert pi8["latency_ms"] < pi32["latency_ms"] / 3
    assert by[("nvidia-t4", "fp32")]["latency_ms"] < pi32["latency_ms"]


def test_bad_catalogue_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text("devices:\n  nvidia-t4:\n    memory_gb: -1\n")
    result = run("torchvision:resnet18", "--catalog", str(bad))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "device 'nvidia-t4'" in lines[0] and "`memory_gb`" in lines[0]
