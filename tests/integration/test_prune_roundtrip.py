"""A pruned model saves, reloads, exports to ONNX and runs in ONNX Runtime with the same outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from modelpress.compress.prune import PruneConfig, UnstructuredPruneConfig, prune_model
from modelpress.sources.models import load_checkpoint, load_model, save_checkpoint


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
    with torch.no_grad():
        torch.testing.assert_close(a(*inputs), b(*inputs), atol=1e-6, rtol=1e-5)


def test_pruned_resnet_like_model_saves_and_reloads(tmp_path):
    handle = load_model("python:modelpress.testing:TinyConvNet?shape=3x16x16")
    pruned, report = prune_model(handle, PruneConfig(ratio=0.5, round_to=4))
    assert pruned.module.stem[0].out_channels == 8
    save_checkpoint(pruned, tmp_path)
    arch = json.loads((tmp_path / "architecture.json").read_text())
    assert arch["source"] == handle.spec and arch["dims"]["stem.0"]["out_channels"] == 8
    assert "import pickle" not in (tmp_path / "model.safetensors").read_bytes()[:200].decode("latin1")
    again = load_checkpoint(tmp_path)
    assert again.module.stem[0].out_channels == 8 and again.module.fc.in_features == 8
    _same_outputs(pruned.module, again.module, (torch.randn(3, 3, 16, 16),))
    assert report.macs_after < 0.5 * report.macs_before


def test_pruned_depthwise_model_reloads_with_its_groups(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))  # makes `tests.unit...` importable
    handle = load_model("python:tests.unit.compress.test_prune_structured:DepthwiseNet?shape=3x12x12")
    pruned, report = prune_model(handle, PruneConfig(ratio=0.5))
    assert report.attrs["dw.0.groups"] == 32
    save_checkpoint(pruned, tmp_path)
    again = load_checkpoint(tmp_path)
    assert again.module.dw[0].groups == again.module.dw[0].out_channels == 32
    _same_outputs(pruned.module, again.module, (torch.randn(2, 3, 12, 12),))


@pytest.fixture
def tiny_bert_dir(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=120, hidden_size=48, num_hidden_layers=2, num_attention_heads=6,
                                     intermediate_size=96, architectures=["BertModel"])
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(tmp_path / "bert")
    return tmp_path / "bert"


def test_pruned_transformer_saves_and_reloads(tiny_bert_dir, tmp_path):
    handle = load_model(f"hf:{tiny_bert_dir}")
    pruned, report = prune_model(handle, PruneConfig(ratio=0.5, head_ratio=1 / 3))
    attn = pruned.module.encoder.encoder.layer[0].attention.self
    assert attn.num_attention_heads == 4
    assert pruned.architecture["attrs"]["encoder.encoder.layer.1.attention.self.num_attention_heads"] == 4
    save_checkpoint(pruned, tmp_path / "ckpt")
    again = load_checkpoint(tmp_path / "ckpt")
    reloaded = again.module.encoder.encoder.layer[0]
    assert reloaded.attention.self.num_attention_heads == 4
    assert reloaded.intermediate.dense.out_features == 48
    ids = torch.randint(0, 120, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    _same_outputs(pruned.module, again.module, (ids, mask))
    assert report.macs_after < report.macs_before


@pytest.mark.slow
def test_pruned_models_export_to_onnx_and_match_torch(tiny_bert_dir, tmp_path):
    import onnxruntime as ort

    from modelpress.export.onnx import ExportConfig, export_onnx

    for spec, config in [
        ("python:modelpress.testing:TinyConvNet?shape=3x16x16", PruneConfig(ratio=0.5)),
        ("python:modelpress.testing:Conv1dNet?shape=1x40", PruneConfig(ratio=0.5, round_to=8)),
        (f"hf:{tiny_bert_dir}", PruneConfig(ratio=0.5, head_ratio=0.5)),
    ]:
        pruned, _ = prune_model(load_model(spec), config)
        report = export_onnx(pruned, tmp_path / "m.onnx", ExportConfig(check=True))
        assert report.max_abs_error is not None and report.max_abs_error < 1e-4
        session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
        inputs = pruned.example_inputs(batch=3, seq_len=7)
        got = session.run(None, inputs)[0]
        with torch.no_grad():
            want = pruned.module(*(torch.from_numpy(v) for v in inputs.values())).numpy()
        assert got.shape == want.shape and got.shape[0] == 3  # the batch axis stays dynamic
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)


def test_unstructured_pruned_model_keeps_its_zeros_through_a_checkpoint(tmp_path):
    handle = load_model("python:modelpress.testing:TinyConvNet?shape=3x16x16")
    pruned, report = prune_model(handle, UnstructuredPruneConfig(sparsity=0.75))
    save_checkpoint(pruned, tmp_path)
    again = load_checkpoint(tmp_path)
    zeros = sum(int((m.weight == 0).sum()) for m in again.module.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear))
    assert zeros == report.sparsity.zeros
