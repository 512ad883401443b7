"""Dynamic INT8 for transformer encoders: the transformer-fused candidate, measured beside the plain graph."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace as NS

import numpy as np
import onnx
import pytest
import torch

from modelpress.compress import _encodings as enc
from modelpress.compress._dynamic import fuse_transformer
from modelpress.compress.quantize import DynamicConfig, quantize
from modelpress.errors import BackendError, ConfigError
from modelpress.sources.models import ModelHandle, SentenceEncoder, TensorSpec

TEXT_INPUTS = (TensorSpec("input_ids", ("batch", "sequence"), "int64"),
               TensorSpec("attention_mask", ("batch", "sequence"), "int64"))


def ops(path: Path) -> Counter[str]:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A 2-layer, 4-head BERT sentence encoder built from a config (nothing downloads), exported by dynamo."""
    transformers = pytest.importorskip("transformers")
    from modelpress.export.onnx import export_onnx

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=512, attn_implementation="eager")
    module = SentenceEncoder(transformers.BertModel(config, add_pooling_layer=False)).eval()
    handle = ModelHandle("test:tiny-bert", TEXT_INPUTS, ("sentence_embedding",), "embedding", module=module)
    path = tmp_path_factory.mktemp("bert") / "float.onnx"
    export_onnx(handle, path)
    return handle.with_onnx(path)


@pytest.fixture(scope="module")
def sentences():
    """Token ids with padding, so the fused attention's mask handling is scored too."""
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 100, (24, 16)).astype(np.int64)
    mask = np.ones_like(ids)
    for row, length in enumerate(rng.integers(4, 17, len(ids))):
        mask[row, length:] = 0
    split = NS(x={"input_ids": ids * mask, "attention_mask": mask}, y=None)
    return NS(val=split, calib=None, train=None)


@pytest.mark.slow
def test_dynamic_times_the_fused_candidate_and_keeps_the_fastest_within_budget(tiny_bert, sentences, tmp_path):
    res = quantize(tiny_bert, DynamicConfig(allow_slower=True, val_samples=24), data=sentences, out_dir=tmp_path / "q")
    assert {c.name for c in res.candidates} == {"dynamic", "fused-dynamic"}
    assert res.metric == "cosine"
    fusion = res.details["transformer_fusion"]
    # The dynamo graph's attention does not match the optimizer's patterns; the TorchScript re-export's does.
    assert fusion["status"] == "fused" and fusion["source"] == "torchscript re-export"
    assert (fusion["num_heads"], fusion["hidden_size"]) == (4, 32)
    assert fusion["fused_ops"]["Attention"] == 2 and fusion["fused_ops"]["SkipLayerNormalization"] == 4
    fastest_ok = min((c for c in res.candidates if c.meets_budget), key=lambda c: c.latency_ms)
    assert res.chosen == fastest_ok.name
    assert res.quant_metric >= 0.99 and res.accuracy_drop <= 0.01
    manifest = json.loads((tmp_path / "q" / "manifest.json").read_text())["quantization"]
    assert set(manifest["timings_ms"]) == {"float", "dynamic", "fused-dynamic"}
    assert all(t > 0 for t in manifest["timings_ms"].values())
    assert {c["name"] for c in manifest["candidates"]} == {"dynamic", "fused-dynamic"}
    assert manifest["transformer_fusion"]["fused_ops"]["Attention"] == 2
    found = ops(res.onnx_path)
    if res.chosen == "fused-dynamic":
        assert found["QAttention"] == 2 and found["Softmax"] == 0
    else:
        assert found["MatMulInteger"] > 0 and found["Softmax"] == 2


@pytest.mark.slow
def test_fused_only_quantizes_attention_into_qattention(tiny_bert, sentences, tmp_path):
    res = quantize(tiny_bert, DynamicConfig(allow_slower=True, transformer_fusion="only", val_samples=24),
                   data=sentences, out_dir=tmp_path / "q")
    assert [c.name for c in res.candidates] == ["fused-dynamic"]
    found = ops(tmp_path / "q" / "model.onnx")
    assert found["QAttention"] == 2 and found["DynamicQuantizeLinear"] > 0
    assert {n.domain for n in onnx.load(str(tmp_path / "q" / "model.onnx")).graph.node} <= {"", "com.microsoft"}
    assert res.quant_metric >= 0.99


@pytest.mark.slow
def test_openvino_gets_no_fused_candidate(tiny_bert, sentences, tmp_path):
    res = quantize(tiny_bert, DynamicConfig(backend="openvino", allow_slower=True, val_samples=8),
                   data=sentences)
    assert [c.name for c in res.candidates] == ["dynamic"]
    assert res.details["transformer_fusion"]["status"] == "skipped"
    assert "openvino cannot read" in res.details["transformer_fusion"]["reason"]
    with pytest.raises(ConfigError, match="`transformer_fusion` 'only'.*openvino cannot read.*'auto' or 'off'"):
        quantize(tiny_bert, DynamicConfig(backend="openvino", transformer_fusion="only"), data=sentences)


def test_openvino_cannot_read_the_fused_int8_graph(tiny_bert, tmp_path):
    """Why the fused candidate is skipped for OpenVINO: it reads the fused float graph, not its INT8 form."""
    from modelpress.compress._qeval import graph_handle
    from modelpress.runtime import RuntimeOptions, load_session

    fusion = fuse_transformer(tiny_bert.onnx_path, tmp_path / "fused.onnx", num_heads=4, hidden_size=32)
    assert fusion.counts["SkipLayerNormalization"] == 4  # the dynamo graph still fuses its Add+LayerNorm pairs
    ts_path = tmp_path / "ts.onnx"
    from modelpress.export.onnx import ExportConfig, export_onnx

    export_onnx(tiny_bert, ts_path, ExportConfig(exporter="torchscript"))
    fusion = fuse_transformer(ts_path, tmp_path / "fused-ts.onnx", num_heads=4, hidden_size=32)
    assert fusion.attention == 2
    int8 = enc.quantize_dynamic_graph(fusion.path, tmp_path / "int8.onnx", per_channel=True, reduce_range=True)
    load_session(graph_handle(tiny_bert, fusion.path), "openvino", RuntimeOptions(threads=1))
    with pytest.raises(BackendError, match="openvino could not compile") as err:
        load_session(graph_handle(tiny_bert, int8, "int8"), "openvino", RuntimeOptions(threads=1))
    assert "com.microsoft.QAttention" in str(err.value.__cause__)


def test_fusion_keeps_the_tiny_transformer_exact(tiny_transformer, tmp_path):
    """modelpress.testing's TinyTransformer (nn.TransformerEncoder): its Add+LayerNorm pairs fuse, outputs unchanged."""
    import onnxruntime as ort

    from modelpress.export.onnx import export_onnx

    handle = ModelHandle("test:tiny", TEXT_INPUTS[:1], ("logits",), "classification", module=tiny_transformer)
    export_onnx(handle, tmp_path / "float.onnx")
    fusion = fuse_transformer(tmp_path / "float.onnx", tmp_path / "fused.onnx", num_heads=4, hidden_size=32)
    assert fusion.counts.get("SkipLayerNormalization") == 4 and fusion.fused == 4
    feed = {"input_ids": np.random.default_rng(0).integers(0, 100, (3, 16)).astype(np.int64)}
    want = ort.InferenceSession(str(tmp_path / "float.onnx"), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    got = ort.InferenceSession(str(fusion.path), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.slow
def test_no_attention_no_fusion(tmp_path):
    """An MLP has nothing to fuse: auto skips the candidate with a reason, only says why it cannot."""
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
    handle = ModelHandle("test:mlp", (TensorSpec("input", ("batch", 16), "float32"),), ("logits",), "classification",
                         module=net)
    res = quantize(handle, DynamicConfig(allow_slower=True))
    assert [c.name for c in res.candidates] == ["dynamic"]
    reason = "the graph has no Softmax and MatMul nodes: no attention to fuse"
    assert res.details["transformer_fusion"] == {"status": "skipped", "reason": reason}
    with pytest.raises(ConfigError, match="no attention to fuse"):
        quantize(handle, DynamicConfig(transformer_fusion="only"))
