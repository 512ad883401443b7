"""Layers kept in float stay float in the artifact, on ONNX Runtime >= 1.21 too.

ONNX Runtime's WeightBiasQuantization pass quantizes, at session load, the float weight of a
Conv/Gemm whose input comes from a DequantizeLinear (and whose output reaches a QuantizeLinear,
after a Relu it fuses away). The model here has one Conv and one Linear that INT8 ruins by
construction; kept in float they must run as float ops and bring the accuracy back.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from types import SimpleNamespace as NS

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from modelpress.compress import _encodings as enc
from modelpress.compress.quantize import StaticConfig, quantize
from modelpress.sources.models import ModelHandle, TensorSpec

FLOAT_OPS = {"Conv", "FusedConv", "Gemm", "FusedGemm"}
INT8_OPS = {"QLinearConv", "QGemm", "ConvInteger", "MatMulInteger", "QLinearMatMul"}


class FragileNet(nn.Module):
    """Three Convs, three Linears on 8x8 images; ``c2`` and ``f2`` (between INT8 layers) are ruined by INT8.

    Channel 0 of ``c1`` and unit 0 of ``f1`` are always 0 (zero weights and bias, then ReLU), so
    in float the weights reading them never matter. They are made 1000x the largest weight:
    INT8 of ``c2`` / ``f2`` (per channel or per tensor) then rounds every other weight to zero.
    """

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.c3 = (nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1),
                                     nn.Conv2d(8, 4, 3, padding=1))
        self.f1, self.f2, self.f3 = nn.Linear(4 * 64, 32), nn.Linear(32, 32), nn.Linear(32, 10)
        with torch.no_grad():
            for layer in (self.c1, self.c2, self.c3, self.f1, self.f2, self.f3):
                # small (outputs follow the input, so a ruined layer shows) but not all zero: ONNX
                # Runtime merges equal initializers, and a bias shared with an INT8 layer is dequantized
                layer.bias.mul_(0.01)
            self.c1.weight[0] = 0
            self.c1.bias[0] = 0
            self.c2.weight[:, 0] = 1000 * self.c2.weight.abs().max()
            self.f1.weight[0] = 0
            self.f1.bias[0] = 0
            self.f2.weight[:, 0] = 1000 * self.f2.weight.abs().max()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c3(torch.relu(self.c2(torch.relu(self.c1(x))))))
        x = torch.relu(self.f2(torch.relu(self.f1(x.flatten(1)))))
        return self.f3(x)


@pytest.fixture(scope="module")
def fragile(tmp_path_factory):
    torch.manual_seed(0)
    net = FragileNet().eval()
    path = tmp_path_factory.mktemp("fragile") / "float.onnx"
    torch.onnx.export(net, (torch.zeros(1, 1, 8, 8),), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    pre = path.with_name("pre.onnx")
    enc.preprocess(path, pre)
    x = np.random.default_rng(0).standard_normal((400, 1, 8, 8)).astype(np.float32)
    nodes = enc.quantizable_nodes(pre)
    assert nodes == ["/c1/Conv", "/c2/Conv", "/c3/Conv", "/f1/Gemm", "/f2/Gemm", "/f3/Gemm"]
    handle = ModelHandle("test:fragile", (TensorSpec("input", ("batch", 1, 8, 8), "float32"),), ("logits",),
                         "classification", module=net, onnx_path=path)
    return NS(path=path, pre=pre, x=x, handle=handle, keep=("/c2/Conv", "/f2/Gemm"))


def _quantize(fragile, tmp: Path, encoding: str, keep: tuple[str, ...]) -> Path:
    feeds = [{"input": fragile.x[i:i + 1]} for i in range(64)]
    settings = enc.StaticSettings(nodes_to_exclude=keep)
    return enc.quantize_static_encoding(fragile.pre, tmp / f"{encoding}-{len(keep)}.onnx", encoding,  # type: ignore[arg-type]
                                        settings, feeds=feeds, cache=tmp / "calib.json")


def _optimized(path: Path, level: str = "ORT_ENABLE_EXTENDED") -> tuple[onnx.GraphProto, np.ndarray]:
    """Load ``path`` as a deployment would; return ORT's optimized graph and its outputs on the val rows.

    EXTENDED runs every QDQ transformation (WeightBiasQuantization included) without the
    CPU-specific NCHWc layout, so the float weights can be compared with the originals.
    """
    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    so.optimized_model_filepath = str(path.with_suffix(f".{level}.onnx"))
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((256, 1, 8, 8)).astype(np.float32)
    return onnx.load(so.optimized_model_filepath).graph, sess.run(None, {"input": x})[0]


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(1) == b.argmax(1)).mean())


def _runs_float(graph: onnx.GraphProto, weight: str) -> str | None:
    """Return the op type of the node whose weight input is the *float initializer* ``weight``, if any."""
    inits = {t.name for t in graph.initializer}
    for n in graph.node:
        if len(n.input) > 1 and n.input[1] == weight and weight in inits:
            return n.op_type
    return None


@pytest.mark.parametrize("encoding", ["qdq-u8", "qdq-s8"])
def test_kept_conv_and_linear_run_as_float_ops_and_recover_accuracy(fragile, tmp_path, encoding):
    _, reference = _optimized(fragile.path)
    all_int8 = _quantize(fragile, tmp_path, encoding, ())
    mixed = _quantize(fragile, tmp_path, encoding, fragile.keep)

    graph, out = _optimized(mixed)
    ops = Counter(n.op_type for n in graph.node)
    # (a) in the graph ONNX Runtime runs, the kept layers are float ops on their original weights...
    assert _runs_float(graph, "c2.weight") in FLOAT_OPS, ops
    assert _runs_float(graph, "f2.weight") in FLOAT_OPS, ops
    src = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(fragile.pre)).graph.initializer}
    got = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    np.testing.assert_array_equal(got["c2.weight"], src["c2.weight"])
    np.testing.assert_array_equal(got["f2.weight"], src["f2.weight"])
    # ... and at most the other four run as INT8 kernels (no WeightBiasQuantization of c2 / f2)
    assert sum(ops[o] for o in INT8_OPS) <= 4, ops

    # (b) INT8 ruins c2 and f2; kept in float, the model agrees with the float one again
    _, ruined = _optimized(all_int8)
    assert _agreement(ruined, reference) < 0.6
    assert _agreement(out, reference) >= 0.97
    assert np.abs(out - reference).mean() < 0.2 * np.abs(ruined - reference).mean()

    # the rewired graph computes what it says: ORT's optimized run matches the graph run literally
    _, literal = _optimized(mixed, "ORT_DISABLE_ALL")
    _, full = _optimized(mixed, "ORT_ENABLE_ALL")
    # (up to INT8 kernels rounding a step differently from Q/DQ arithmetic on a few rows)
    assert _agreement(full, literal) >= 0.98
    assert np.abs(full - literal).mean() < 0.05 * np.abs(literal).mean()


def test_float_layers_read_the_float_tensor_and_removed_relus_come_back(fragile, tmp_path):
    mixed = onnx.load(str(_quantize(fragile, tmp_path, "qdq-u8", fragile.keep))).graph
    producer = {o: n for n in mixed.node for o in n.output}
    for name in fragile.keep:
        node = next(n for n in mixed.node if n.name == name)
        parent = producer[node.input[0]]
        assert parent.op_type == "Relu", (name, parent.op_type)  # the quantizer had folded it into the Q
        assert producer[parent.input[0]].op_type in ("Conv", "Gemm")  # fed by the float output, no Q/DQ
    onnx.checker.check_model(onnx.load(str(tmp_path / "qdq-u8-2.onnx")), full_check=True)


def test_operator_form_cannot_keep_a_layer_float_and_says_so(fragile, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="modelpress.compress._encodings"):
        qop = _quantize(fragile, tmp_path, "qop-u8", fragile.keep)
    assert "/f2/Gemm" in caplog.text and "use a qdq encoding" in caplog.text
    graph, _ = _optimized(qop)
    assert _runs_float(graph, "f2.weight") is None  # ORT re-quantized it: why mixed precision uses QDQ
    assert enc.with_float_layers("qop-s8") == "qdq-s8" and enc.with_float_layers("qdq-u8") == "qdq-u8"


@pytest.mark.slow
def test_quantize_artifact_keeps_the_layers_float_for_any_deployment(fragile, tmp_path):
    val = np.random.default_rng(2).standard_normal((300, 1, 8, 8)).astype(np.float32)
    data = NS(calib=NS(x=fragile.x[:64], y=None), val=NS(x=val, y=None), train=None)
    cfg = StaticConfig(encoding="qdq-u8", keep_float=fragile.keep, mixed_precision=False, allow_slower=True,
                       max_accuracy_drop=0.03)
    res = quantize(fragile.handle, cfg, data=data, out_dir=tmp_path / "q")
    assert res.quant_metric >= 0.97
    graph, _ = _optimized(tmp_path / "q" / "model.onnx")
    assert _runs_float(graph, "c2.weight") in FLOAT_OPS and _runs_float(graph, "f2.weight") in FLOAT_OPS
