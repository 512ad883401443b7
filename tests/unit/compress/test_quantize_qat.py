"""QAT pieces: BN folding, fake-quant with STE, the train_fn seam, export as a real QDQ graph."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace as NS
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from modelpress.sources.models import ModelHandle, TensorSpec

from modelpress.compress._qat import FakeQuantLayer, fold_bn_, quantize_, strip_
from modelpress.compress.quantize import QATConfig, quantize
from modelpress.errors import ConfigError, DataError


def Handle(spec: str, module: Any, onnx_path: Path | None, shape: tuple[int, ...]) -> ModelHandle:  # noqa: N802
    """A classifier handle over one float input of ``shape`` (batch axis added)."""
    return ModelHandle(spec, (TensorSpec("input", ("batch", *shape), "float32"),), ("logits",), "classification",
                       module=module, onnx_path=onnx_path)


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 10),
    )


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.images / 16.0).astype(np.float32)[:, None], d.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    return NS(train=NS(x=x[:1200], y=y[:1200]), val=NS(x=x[1200:], y=y[1200:]), calib=NS(x=x[:128], y=y[:128]))


def test_fold_bn_keeps_the_function_and_removes_bn(tiny_convnet):
    with torch.no_grad():
        for m in tiny_convnet.modules():
            if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics so folding has work to do
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
    x = torch.randn(4, 3, 16, 16)
    before = tiny_convnet(x)
    pairs = fold_bn_(tiny_convnet)
    assert len(pairs) == 3
    assert not any(isinstance(m, nn.BatchNorm2d) for m in tiny_convnet.modules())
    torch.testing.assert_close(tiny_convnet(x), before, atol=1e-5, rtol=1e-4)


def test_fake_quant_simulates_int8_and_passes_gradients():
    torch.manual_seed(0)
    net = quantize_(small_cnn().eval())
    layers = [m for m in net.modules() if isinstance(m, FakeQuantLayer)]
    assert len(layers) == 3  # two convs and the classifier
    x = torch.randn(16, 1, 8, 8)
    net.train()
    out = net(x)
    out.sum().backward()
    grads = [m.layer.weight.grad for m in layers]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)  # STE lets gradients through
    net.eval()
    w = layers[0].weight_fq(layers[0].layer.weight).detach()
    scale = layers[0].weight_fq.scale.view(-1, 1, 1, 1)
    steps = w / scale
    torch.testing.assert_close(steps, steps.round(), atol=1e-4, rtol=0)  # weights sit on the int8 grid
    assert steps.abs().max() <= 128


def test_strip_restores_plain_layers():
    net = strip_(quantize_(small_cnn().eval()))
    assert not any(isinstance(m, FakeQuantLayer) for m in net.modules())
    assert isinstance(net[0], nn.Conv2d)


@pytest.mark.slow
def test_qat_exports_a_real_int8_graph_close_to_its_simulation(digits, tmp_path):
    torch.manual_seed(0)
    net = small_cnn()
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    x, y = torch.from_numpy(digits.train.x), torch.from_numpy(digits.train.y)
    for _ in range(40):
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    handle = Handle("test:cnn", net, None, (1, 8, 8))
    calls = []

    def train_fn(module, split, cfg):
        from modelpress.compress._qat import plain_train

        calls.append((len(split.x), cfg.epochs))
        return plain_train(module, split, cfg)

    res = quantize(handle, QATConfig(epochs=1, lr=1e-4, encoding="qdq-u8", allow_slower=True), data=digits,
                   out_dir=tmp_path / "q", train_fn=train_fn)
    assert calls == [(1200, 1)]
    assert res.float_metric > 0.85
    assert res.accuracy_drop <= 0.02
    assert abs(res.details["sim_gap"]) <= 0.02  # the exported INT8 graph does what the simulation promised
    model = onnx.load(str(res.onnx_path))
    op_types = [n.op_type for n in model.graph.node]
    assert op_types.count("QuantizeLinear") >= 3 and "BatchNormalization" not in op_types
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(res.onnx_path), so, providers=["CPUExecutionProvider"])
    kernels = {n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}
    assert "QLinearConv" in kernels  # ORT fused the QDQ pairs into int8 kernels


def test_qat_needs_a_torch_module(digits, tmp_path):
    path = tmp_path / "m.onnx"
    torch.onnx.export(small_cnn().eval(), (torch.zeros(1, 1, 8, 8),), str(path), input_names=["input"],
                      output_names=["logits"], opset_version=17, dynamo=False)
    with pytest.raises(ConfigError, match="qat needs a torch module"):
        quantize(str(path), QATConfig(allow_slower=True), data=digits, out_dir=tmp_path / "q")
    assert not (tmp_path / "q").exists()


def test_qat_needs_labels(digits, tmp_path):
    handle = Handle("test:cnn", small_cnn().eval(), None, (1, 8, 8))
    data = NS(train=NS(x=digits.train.x, y=None), val=digits.val, calib=digits.calib)
    with pytest.raises(DataError, match="labelled train split"):
        quantize(handle, QATConfig(allow_slower=True), data=data, out_dir=tmp_path / "q")


def test_public_quantize_prepares_in_place():
    from modelpress.compress.quantize import quantize_

    net = small_cnn().eval()
    same = quantize_(net, QATConfig(per_channel=False, reduce_range=True))
    assert same is net
    fq = [m for m in net.modules() if isinstance(m, FakeQuantLayer)]
    assert len(fq) == 3 and fq[0].weight_fq.quant_max == 63  # reduce_range: 7-bit weights
