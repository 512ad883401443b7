"""Export + numerical check of real architectures, and every backend agreeing with torch."""

from __future__ import annotations

import numpy as np
import pytest

from modelpress.export.onnx import export_onnx, torch_outputs
from modelpress.runtime import RuntimeOptions, available_backends, load_session
from modelpress.sources.models import load_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def resnet18(tmp_path_factory):
    handle = load_model("torchvision:resnet18?input_size=96")
    report = export_onnx(handle, tmp_path_factory.mktemp("r18") / "model.onnx")
    return handle.with_onnx(report.path), report


def test_resnet18_exports_within_tolerance(resnet18):
    _, report = resnet18
    assert report.max_abs_error < 1e-3


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "torch"])
def test_each_backend_agrees_with_torch(resnet18, backend):
    handle, _ = resnet18
    if backend not in available_backends():
        pytest.fail(f"backend {backend} should be installed in the dev environment")
    session = load_session(handle, backend, RuntimeOptions(threads=2))
    inputs = handle.example_inputs(batch=3)
    want = torch_outputs(handle, inputs)[0]
    (got,) = session.run(inputs)
    np.testing.assert_allclose(got, want, atol=2e-3, rtol=1e-2)
    assert (got.argmax(1) == want.argmax(1)).all()
    assert session.threads == 2 and session.backend == backend


def test_mobilenet_v2_exports_within_tolerance(tmp_path):
    handle = load_model("torchvision:mobilenet_v2?input_size=96")
    report = export_onnx(handle, tmp_path / "model.onnx")
    assert report.max_abs_error < 1e-3


def test_minilm_exports_with_dynamic_sequence(tmp_path):
    handle = load_model("hf:minilm")
    report = export_onnx(handle, tmp_path / "model.onnx")
    assert report.max_abs_error < 1e-4
    handle = handle.with_onnx(report.path)
    session = load_session(handle, "onnxruntime", RuntimeOptions(threads=2))
    for seq_len in (5, 64):
        inputs = handle.example_inputs(batch=2, seq_len=seq_len)
        (got,) = session.run(inputs)
        cos = (got * torch_outputs(handle, inputs)[0]).sum(1)
        assert got.shape == (2, 384) and cos.min() > 0.9999
