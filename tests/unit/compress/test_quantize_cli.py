"""`modelpress quantize` on the command line: JSON output, the guard's exit code, one-line errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace as NS

import numpy as np
import pytest
import torch
from torch import nn


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory):
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(60):
        loss = nn.functional.cross_entropy(net(torch.from_numpy(x[:1200])), torch.from_numpy(y[:1200]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = tmp_path_factory.mktemp("cli") / "mlp.onnx"
    torch.onnx.export(net.eval(), (torch.zeros(1, 64),), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    data = NS(train=NS(x=x[:1200], y=y[:1200]), val=NS(x=x[1200:], y=y[1200:]), calib=NS(x=x[:128], y=y[:128]))
    return path, data


def run_cli(monkeypatch, capsys, data, *args: str) -> tuple[int, str, str]:
    import modelpress.cli.quantize as cli_q
    from modelpress.cli import main as cli_main

    monkeypatch.setattr(cli_q, "_load_data", lambda spec: data if spec == "digits" else None)
    monkeypatch.setattr(sys, "argv", ["modelpress", "quantize", *args])
    code = 0
    try:
        cli_main.main()
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_help_has_an_example(monkeypatch, capsys, model_and_data):
    code, out, _ = run_cli(monkeypatch, capsys, None, "--help")
    assert code == 0
    assert "modelpress quantize" in out and "--max-accuracy-drop" in out and "--allow-slower" in out


@pytest.mark.slow
def test_json_result_names_the_choice(monkeypatch, capsys, model_and_data, tmp_path):
    path, data = model_and_data
    code, out, _ = run_cli(monkeypatch, capsys, data, str(path), "--data", "digits", "--out", str(tmp_path / "q"),
                           "--encoding", "qdq-u8", "--allow-slower", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["chosen"] == "qdq-u8" and result["metric"] == "accuracy"
    assert result["accuracy_drop"] <= 0.01
    assert Path(result["out_dir"], "model.onnx").exists()


def test_slower_result_exits_nonzero_with_one_line(monkeypatch, capsys, model_and_data, tmp_path):
    from modelpress.compress import quantize as qmod

    real = qmod._latencies
    monkeypatch.setattr(qmod, "_latencies",
                        lambda *a, **kw: {k: (1e-3 if k == "float" else v) for k, v in real(*a, **kw).items()})
    path, data = model_and_data
    code, _, err = run_cli(monkeypatch, capsys, data, str(path), "--data", "digits", "--out", str(tmp_path / "q"),
                           "--encoding", "qdq-u8")
    assert code == 2
    assert err.count("\n") == 1 and "not faster" in err and "--allow-slower" in err
    assert not (tmp_path / "q").exists()


def test_bad_flag_value_is_one_line(monkeypatch, capsys, model_and_data, tmp_path):
    path, data = model_and_data
    code, _, err = run_cli(monkeypatch, capsys, data, str(path), "--data", "digits", "--out", str(tmp_path / "q"),
                           "--calibration", "kl")
    assert code == 2
    assert "`calibration`" in err and "'kl'" in err and err.count("\n") == 1


def test_static_without_data_is_one_line(monkeypatch, capsys, model_and_data, tmp_path):
    path, data = model_and_data
    code, _, err = run_cli(monkeypatch, capsys, data, str(path), "--out", str(tmp_path / "q"))
    assert code == 2 and "needs calibration data" in err
