"""The quantize verb on tiny models and real digits data: every mode, the choice, the budget, the guard."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace as NS
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from modelpress.sources.models import ModelHandle, TensorSpec

from modelpress.compress import quantize as qmod
from modelpress.compress._encodings import ENCODINGS
from modelpress.compress.quantize import DynamicConfig, FP16Config, BF16Config, StaticConfig, quantize
from modelpress.errors import BackendError, ConfigError, DataError, GateError, SlowerThanBaselineError


def Handle(spec: str, module: Any, onnx_path: Path | None, shape: tuple[int, ...]) -> ModelHandle:  # noqa: N802
    """A classifier handle over one float input of ``shape`` (batch axis added)."""
    return ModelHandle(spec, (TensorSpec("input", ("batch", *shape), "float32"),), ("logits",), "classification",
                       module=module, onnx_path=onnx_path)


def export(module: nn.Module, shape: tuple[int, ...], path: Path) -> Path:
    torch.onnx.export(module.eval(), (torch.zeros(1, *shape),), str(path), input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                      opset_version=17, dynamo=False)
    return path


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    return NS(train=NS(x=x[:1200], y=y[:1200]), val=NS(x=x[1200:], y=y[1200:]), calib=NS(x=x[:256], y=y[:256]))


@pytest.fixture(scope="module")
def mlp_handle(digits, tmp_path_factory):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    x, y = torch.from_numpy(digits.train.x), torch.from_numpy(digits.train.y)
    for _ in range(60):
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = export(net, (64,), tmp_path_factory.mktemp("mlp") / "mlp.onnx")
    return Handle("test:mlp", net.eval(), path, (64,))


def ops(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


@pytest.mark.slow
def test_static_chooses_by_measurement_and_records_every_candidate(mlp_handle, digits, tmp_path):
    res = quantize(mlp_handle, StaticConfig(allow_slower=True), data=digits, out_dir=tmp_path / "q")
    assert res.float_metric > 0.9  # the fixture really learned digits
    assert res.accuracy_drop <= 0.01
    assert {c.name for c in res.candidates} == set(ENCODINGS)
    fastest_ok = min((c for c in res.candidates if c.meets_budget), key=lambda c: c.latency_ms)
    assert res.chosen == fastest_ok.name
    manifest = json.loads((tmp_path / "q" / "manifest.json").read_text())
    q = manifest["quantization"]
    assert q["chosen"] == res.chosen
    assert set(q["timings_ms"]) == {"float", *ENCODINGS}
    assert all(t > 0 for t in q["timings_ms"].values())
    assert q["cpu"]["vnni"] in (True, False) and "reduce_range" in q
    model_ops = ops(tmp_path / "q" / "model.onnx")
    assert "QuantizeLinear" in model_ops or "QLinearMatMul" in model_ops or "QGemm" in model_ops
    assert manifest["files"]["model.onnx"]


@pytest.mark.slow
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_fixed_encoding_writes_that_form(mlp_handle, digits, tmp_path, encoding):
    res = quantize(mlp_handle, StaticConfig(encoding=encoding, allow_slower=True, mixed_precision=False),
                   data=digits, out_dir=tmp_path / "q")
    assert [c.name for c in res.candidates] == [encoding]
    model = onnx.load(str(res.onnx_path))
    found = {n.op_type for n in model.graph.node}
    if encoding.startswith("qdq"):
        assert "DequantizeLinear" in found and "QGemm" not in found
    else:
        assert found & {"QGemm", "QLinearMatMul"}
    zp_types = {i.data_type for i in model.graph.initializer if i.name.endswith("zero_point")
                and "input" in i.name.lower()}
    want = onnx.TensorProto.UINT8 if encoding.endswith("u8") else onnx.TensorProto.INT8
    assert want in zp_types
    assert res.accuracy_drop <= 0.02


@pytest.mark.slow
@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_each_calibration_method_stays_accurate(mlp_handle, digits, tmp_path, method):
    cfg = StaticConfig(calibration=method, samples=64, encoding="qdq-u8", allow_slower=True, mixed_precision=False,
                       max_accuracy_drop=0.02)
    res = quantize(mlp_handle, cfg, data=digits, out_dir=tmp_path / "q")
    assert res.details["calibration"] == method
    assert res.details["calibration_samples"] == 64
    assert res.quant_metric >= res.float_metric - 0.02


def test_per_tensor_and_symmetric_activations(mlp_handle, digits, tmp_path):
    cfg = StaticConfig(per_channel=False, activation_symmetric=True, encoding="qdq-s8", allow_slower=True)
    res = quantize(mlp_handle, cfg, data=digits, out_dir=tmp_path / "q")
    model = onnx.load(str(res.onnx_path))
    scales = [i for i in model.graph.initializer if i.name.endswith("_scale") and "weight" in i.name.lower()]
    assert scales and all(len(s.dims) == 0 for s in scales)  # one scale per tensor
    zps = [onnx.numpy_helper.to_array(i) for i in model.graph.initializer if i.name.endswith("zero_point")]
    assert all(np.all(z == 0) for z in zps)  # symmetric: every zero point at 0
    assert res.details["per_channel"] is False and res.details["activation_symmetric"] is True


def test_dynamic_needs_no_data_and_uses_integer_matmul(mlp_handle, digits, tmp_path):
    res = quantize(mlp_handle, DynamicConfig(allow_slower=True), data=digits, out_dir=tmp_path / "q")
    found = set(ops(res.onnx_path))
    assert "DynamicQuantizeLinear" in found and found & {"MatMulInteger", "DynamicQuantizeMatMul"}
    assert res.accuracy_drop <= 0.01
    no_data = quantize(mlp_handle, DynamicConfig(allow_slower=True), out_dir=tmp_path / "q2")
    assert np.isnan(no_data.quant_metric) and no_data.float_ms > 0


def _faster_float(monkeypatch):
    real = qmod._latencies

    def rigged(*args, **kwargs):
        return {k: (0.001 if k == "float" else v) for k, v in real(*args, **kwargs).items()}

    monkeypatch.setattr(qmod, "_latencies", rigged)


def test_guard_refuses_a_slower_result_and_writes_nothing(mlp_handle, digits, tmp_path, monkeypatch):
    _faster_float(monkeypatch)
    with pytest.raises(SlowerThanBaselineError, match="not faster than the float model.*--allow-slower"):
        quantize(mlp_handle, StaticConfig(encoding="qdq-u8"), data=digits, out_dir=tmp_path / "q")
    assert not (tmp_path / "q").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temp dirs left behind either


def test_guard_allow_slower_keeps_result_and_says_so(mlp_handle, digits, tmp_path, monkeypatch):
    _faster_float(monkeypatch)
    res = quantize(mlp_handle, StaticConfig(encoding="qdq-u8", allow_slower=True), data=digits, out_dir=tmp_path / "q")
    assert res.speedup < 1 and res.details["slower_than_float"] is True
    assert (tmp_path / "q" / "model.onnx").exists()


def _outlier_mlp(tmp_path: Path) -> tuple[Handle, NS]:
    """An MLP whose first layer alone is fragile: input feature 0 is tiny and its weight column huge.

    Per-tensor INT8 of that layer crushes both its other weights and feature 0; no other layer is affected.
    """
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    with torch.no_grad():
        net[0].weight[:, 0] *= 1000.0
        net[4].weight *= 20.0  # peaked softmax: agreement is judged on confident inputs
    path = export(net, (16,), tmp_path / "outlier.onnx")
    x = np.random.default_rng(0).standard_normal((600, 16)).astype(np.float32)
    x[:, 0] /= 1000.0
    data = NS(calib=NS(x=x[:128], y=None), val=NS(x=x[200:], y=None), train=None)
    return Handle("test:outlier", net, path, (16,)), data


@pytest.mark.slow
def test_budget_failure_is_a_gate_error(tmp_path):
    handle, data = _outlier_mlp(tmp_path)
    cfg = StaticConfig(per_channel=False, encoding="qdq-u8", mixed_precision=False, allow_slower=True,
                       max_accuracy_drop=0.005)
    with pytest.raises(GateError, match="max_accuracy_drop=0.005"):
        quantize(handle, cfg, data=data, out_dir=tmp_path / "q")
    assert not (tmp_path / "q").exists()


@pytest.mark.slow
def test_mixed_precision_keeps_only_the_sensitive_layer_in_float(tmp_path):
    handle, data = _outlier_mlp(tmp_path)
    cfg = StaticConfig(per_channel=False, encoding="qdq-u8", allow_slower=True, max_accuracy_drop=0.005)
    res = quantize(handle, cfg, data=data, out_dir=tmp_path / "q")
    mp = res.details["mixed_precision"]
    assert mp["met_budget"]
    assert res.metric == "agreement" and res.quant_metric >= 0.995
    assert len(res.keep_float) == 1  # the fewest: only the outlier layer
    assert mp["ranking"][0]["node"] == res.keep_float[0]
    assert "0" in res.keep_float[0]  # node named after module 0, the outlier Linear
    assert (tmp_path / "q" / "sensitivity.png").stat().st_size > 1000


@pytest.mark.slow
def test_sensitivity_ranks_the_outlier_layer_first(tmp_path):
    handle, data = _outlier_mlp(tmp_path)
    cfg = StaticConfig(per_channel=False, encoding="qdq-u8", allow_slower=True, max_accuracy_drop=1.0)
    res = quantize(handle, cfg, data=data, out_dir=tmp_path / "q", sensitivity=True)
    layers = res.details["sensitivity"]["layers"]
    assert len(layers) == 3
    assert "0" in layers[0]["node"] and layers[0]["delta"] > layers[1]["delta"] + 0.05


def test_no_data_for_static_is_one_clear_error(mlp_handle, tmp_path):
    with pytest.raises(DataError, match="calibration data.*--data"):
        quantize(mlp_handle, StaticConfig(), out_dir=tmp_path / "q")
    assert not (tmp_path / "q").exists()


def test_empty_calibration_split_is_one_clear_error(mlp_handle, digits, tmp_path):
    data = NS(calib=NS(x=np.zeros((0, 64), np.float32), y=None), train=NS(x=np.zeros((0, 64), np.float32), y=None),
              val=digits.val)
    with pytest.raises(DataError, match="no calibration samples"):
        quantize(mlp_handle, StaticConfig(), data=data, out_dir=tmp_path / "q")


def test_misshapen_data_names_the_input(mlp_handle, tmp_path):
    x = np.zeros((32, 5, 5), np.float32)
    data = NS(calib=NS(x=x, y=None), val=NS(x=x, y=None), train=None)
    with pytest.raises(DataError, match=r"shape \(5, 5\).*input 'input'.*\(64,\)"):
        quantize(mlp_handle, StaticConfig(), data=data, out_dir=tmp_path / "q")
    assert not (tmp_path / "q").exists()


def test_unsupported_op_names_the_layer(mlp_handle, digits, tmp_path):
    model = onnx.load(str(mlp_handle.onnx_path))
    last = model.graph.node[-1]
    custom = onnx.helper.make_node("FancyAct", [last.output[0]], ["fancy"], name="my_fancy_layer", domain="acme")
    model.graph.node.append(custom)
    model.graph.output[0].name = "fancy"
    model.opset_import.append(onnx.helper.make_opsetid("acme", 1))
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    with pytest.raises(ConfigError, match="'my_fancy_layer'.*acme::FancyAct"):
        quantize(str(bad), StaticConfig(), data=digits, out_dir=tmp_path / "q")
    assert not (tmp_path / "q").exists()


def test_failed_run_leaves_an_existing_artifact_untouched(mlp_handle, tmp_path):
    out = tmp_path / "q"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"previous")
    with pytest.raises(DataError):
        quantize(mlp_handle, StaticConfig(), out_dir=out)
    assert (out / "model.onnx").read_bytes() == b"previous"


def test_fp16_graph_matches_float(mlp_handle, digits, tmp_path):
    res = quantize(mlp_handle, FP16Config(device="cpu", allow_slower=True), data=digits, out_dir=tmp_path / "q")
    model = onnx.load(str(res.onnx_path))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # I/O kept float32
    assert res.accuracy_drop <= 0.005


def test_fp16_on_cuda_without_cuda_says_so(mlp_handle, digits, tmp_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here")
    with pytest.raises(BackendError, match="CUDAExecutionProvider"):
        quantize(mlp_handle, FP16Config(), data=digits, out_dir=tmp_path / "q")


def test_bf16_needs_the_cpu_instructions(mlp_handle, digits, tmp_path, monkeypatch):
    from modelpress.compress import _encodings

    no_bf16 = _encodings.cpu_features("flags : avx2 fma")
    monkeypatch.setattr(qmod.enc, "cpu_features", lambda: no_bf16)
    with pytest.raises(ConfigError, match="AVX512-BF16 or AMX"):
        quantize(mlp_handle, BF16Config(), data=digits, out_dir=tmp_path / "q")
