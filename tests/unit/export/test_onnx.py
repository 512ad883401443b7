from __future__ import annotations

import numpy as np
import pytest
import torch

from modelpress.errors import ExportError, ExportMismatchError
from modelpress.export.onnx import ExportConfig, export_onnx
from modelpress.sources.models import ModelHandle, TensorSpec, load_model


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_export_has_dynamic_batch_and_matches_torch(tmp_path, exporter):
    import onnxruntime as ort

    handle = load_model("python:modelpress.testing:DigitsNet")
    report = export_onnx(handle, tmp_path / "m.onnx", ExportConfig(exporter=exporter))
    assert report.exporter == exporter
    assert report.max_abs_error is not None and report.max_abs_error < 1e-4
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        x = np.random.default_rng(batch).standard_normal((batch, 1, 8, 8)).astype(np.float32)
        (got,) = session.run(None, {"input": x})
        with torch.no_grad():
            want = handle.module(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)


def test_batchnorm_is_fused_into_conv(tmp_path):
    handle = load_model("python:modelpress.testing:DigitsNet")
    report = export_onnx(handle, tmp_path / "m.onnx", ExportConfig(exporter="torchscript"))
    assert report.node_counts.get("BatchNormalization", 0) == 0
    assert report.node_counts["Conv"] == 2


def test_debug_metadata_is_stripped_unless_asked_for(tmp_path):
    import onnx

    handle = load_model("python:modelpress.testing:DigitsNet")
    lean = export_onnx(handle, tmp_path / "lean.onnx", ExportConfig(exporter="dynamo"))
    full = export_onnx(handle, tmp_path / "full.onnx", ExportConfig(exporter="dynamo", keep_debug_info=True))
    lean_nodes, full_nodes = onnx.load(str(lean.path)).graph.node, onnx.load(str(full.path)).graph.node
    assert [n.op_type for n in lean_nodes] == [n.op_type for n in full_nodes]
    assert not any(n.metadata_props or n.doc_string for n in lean_nodes)
    # the dynamo exporter records source stack traces with this machine's paths
    assert any(p.key == "pkg.torch.onnx.stack_trace" for n in full_nodes for p in n.metadata_props)
    assert b"testing.py" not in lean.path.read_bytes()
    assert lean.path.stat().st_size < full.path.stat().st_size


def test_text_model_gets_a_dynamic_sequence_axis(tmp_path, tiny_transformer):
    import onnx

    handle = ModelHandle("tiny", (TensorSpec("input_ids", ("batch", "sequence"), "int64"),), ("logits",), "classification", tiny_transformer)
    report = export_onnx(handle, tmp_path / "t.onnx", ExportConfig(atol=1e-4))
    assert report.exporter == "dynamo"
    dims = onnx.load(str(report.path)).graph.input[0].type.tensor_type.shape.dim
    assert all(d.dim_param for d in dims)


class _Randomised(torch.nn.Module):
    """Differs between calls: what an export check must catch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.rand_like(x)


def test_shapes_fixed_by_the_trace_are_caught(tmp_path, tiny_transformer):
    handle = ModelHandle("tiny", (TensorSpec("input_ids", ("batch", "sequence"), "int64"),), ("logits",), "classification", tiny_transformer)
    with pytest.raises(ExportMismatchError, match="fails at batch 1, sequence 7"):
        export_onnx(handle, tmp_path / "t.onnx", ExportConfig(exporter="torchscript"))


def test_mismatch_is_reported_with_both_errors(tmp_path):
    handle = ModelHandle("rand", (TensorSpec("input", ("batch", 4)),), ("out",), "other", _Randomised())
    with pytest.raises(ExportMismatchError, match=r"max abs error .* max rel error"):
        export_onnx(handle, tmp_path / "r.onnx", ExportConfig(exporter="torchscript"))
    assert not (tmp_path / "r.onnx").exists()


def test_no_module_is_an_error(tmp_path):
    handle = ModelHandle("x", (TensorSpec("input", ("batch", 4)),), ("out",), "other")
    with pytest.raises(ExportError, match="no torch module"):
        export_onnx(handle, tmp_path / "x.onnx")


def test_config_rejects_unknown_keys_and_bad_values():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="opsett"):
        ExportConfig.model_validate({"opsett": 17})
    with pytest.raises(ValidationError, match="opset"):
        ExportConfig(opset=7)
    assert ExportConfig.model_validate_json(ExportConfig(opset=17).model_dump_json()).opset == 17
