"""The INT8 artifacts on real runtimes: ORT runs them with int8 kernels, OpenVINO runs the same graph."""

from __future__ import annotations

from types import SimpleNamespace as NS

import numpy as np
import onnx
import pytest
import torch

from modelpress.compress import _qeval as qe
from modelpress.compress.quantize import StaticConfig, quantize

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def convnet_onnx(tmp_path_factory):
    from modelpress.testing import TinyConvNet

    torch.manual_seed(0)
    net = TinyConvNet().eval()
    path = tmp_path_factory.mktemp("conv") / "tiny.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, 16, 16),), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    x = np.random.default_rng(0).standard_normal((400, 3, 16, 16)).astype(np.float32)
    return path, NS(calib=NS(x=x[:64], y=None), val=NS(x=x[100:], y=None), train=None)


@pytest.mark.parametrize("encoding", ["qdq-u8", "qop-u8"])
def test_onnxruntime_uses_int8_kernels(convnet_onnx, tmp_path, encoding):
    import onnxruntime as ort

    path, data = convnet_onnx
    res = quantize(str(path), StaticConfig(encoding=encoding, allow_slower=True, max_accuracy_drop=0.05),
                   data=data, out_dir=tmp_path / "q")
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(res.onnx_path), so, providers=["CPUExecutionProvider"])
    kernels = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert kernels.count("QLinearConv") == 3  # all three convs run as int8
    assert res.metric == "agreement" and res.quant_metric >= 0.95


def test_openvino_runs_the_same_int8_graph(convnet_onnx, tmp_path):
    pytest.importorskip("openvino")
    path, data = convnet_onnx
    res = quantize(str(path), StaticConfig(encoding="qdq-u8", allow_slower=True, max_accuracy_drop=0.05),
                   data=data, out_dir=tmp_path / "q")
    from modelpress.sources.models import load_model

    handle = load_model(str(path))
    feeds = [{"input": data.val.x[i:i + 50]} for i in range(0, 300, 50)]
    ort_out = qe.run_all(qe.load_runner(handle, res.onnx_path, "onnxruntime", threads=2), feeds)
    ov_out = qe.run_all(qe.load_runner(handle, res.onnx_path, "openvino", threads=2), feeds)
    ref = qe.run_all(qe.load_runner(handle, path, "onnxruntime", threads=2), feeds)
    assert qe.score(handle, ov_out, ref, None, "openvino").value >= 0.95  # agreement with float
    cos = (ov_out * ort_out).sum(1) / (np.linalg.norm(ov_out, axis=1) * np.linalg.norm(ort_out, axis=1))
    assert cos.mean() >= 0.99  # same graph, same numbers on both runtimes


def test_quantize_measured_on_openvino(convnet_onnx, tmp_path):
    pytest.importorskip("openvino")
    path, data = convnet_onnx
    res = quantize(str(path), StaticConfig(backend="openvino", allow_slower=True, max_accuracy_drop=0.05),
                   data=data, out_dir=tmp_path / "q")
    assert res.backend == "openvino" and res.float_ms > 0 and {c.name for c in res.candidates} == {"qdq-u8", "qdq-s8"}
