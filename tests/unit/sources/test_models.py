from __future__ import annotations

import numpy as np
import pytest
import torch

from modelpress.errors import SpecError
from modelpress.sources.models import ModelHandle, load_checkpoint, load_model, save_checkpoint


def test_python_factory_with_input_shape_attribute():
    handle = load_model("python:modelpress.testing:DigitsNet")
    assert handle.inputs[0].shape == ("batch", 1, 8, 8)
    out = handle.module(*handle.torch_inputs(batch=3))
    assert out.shape == (3, 10)


def test_python_factory_shape_option_and_task():
    handle = load_model("python:modelpress.testing:TinyConvNet?shape=3x16x16")
    assert handle.inputs[0].shape == ("batch", 3, 16, 16)
    assert handle.task == "classification"


def test_torchvision_source_with_options():
    handle = load_model("torchvision:resnet18?input_size=64&num_classes=7")
    assert handle.inputs[0].shape == ("batch", 3, 64, 64)
    assert handle.module(*handle.torch_inputs(batch=2)).shape == (2, 7)


@pytest.mark.slow
def test_hf_minilm_is_a_sentence_encoder():
    handle = load_model("hf:minilm")
    assert handle.task == "embedding"
    assert [s.name for s in handle.inputs] == ["input_ids", "attention_mask"]
    emb = handle.module(*handle.torch_inputs(batch=2, seq_len=9))
    assert emb.shape == (2, 384)
    assert torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)


def test_onnx_source_reads_inputs(tmp_path):
    from modelpress.export.onnx import ExportConfig, export_onnx

    handle = load_model("python:modelpress.testing:DigitsNet")
    path = tmp_path / "m.onnx"
    export_onnx(handle, path, ExportConfig(exporter="torchscript"))
    loaded = load_model(f"onnx:{path}")
    assert loaded.onnx_path == path
    assert loaded.inputs[0].name == "input"
    assert loaded.inputs[0].shape[1:] == (1, 8, 8)
    assert isinstance(loaded.inputs[0].shape[0], str)


def test_torch_exported_program(tmp_path):
    handle = load_model("python:modelpress.testing:DigitsNet")
    x = handle.torch_inputs(batch=2)
    program = torch.export.export(handle.module, x)
    torch.export.save(program, tmp_path / "m.pt2")
    loaded = load_model(f"torch:{tmp_path / 'm.pt2'}")
    torch.testing.assert_close(loaded.module(*x), handle.module(*x))


def _shrink_digitsnet(module: torch.nn.Module, keep: int) -> None:
    """Prune the first conv's output channels by hand, as structured pruning would."""
    conv, bn, conv2 = module.features[0], module.features[1], module.features[3]
    idx = torch.arange(keep)
    conv.weight = torch.nn.Parameter(conv.weight.data[idx].clone())
    conv.out_channels = keep
    for name in ("weight", "bias"):
        setattr(bn, name, torch.nn.Parameter(getattr(bn, name).data[idx].clone()))
    bn.running_mean, bn.running_var = bn.running_mean[idx].clone(), bn.running_var[idx].clone()
    bn.num_features = keep
    conv2.weight = torch.nn.Parameter(conv2.weight.data[:, idx].clone())
    conv2.in_channels = keep


def test_checkpoint_round_trip_of_a_pruned_model(tmp_path):
    handle = load_model("python:modelpress.testing:DigitsNet")
    _shrink_digitsnet(handle.module, 12)
    x = handle.torch_inputs(batch=4)
    with torch.no_grad():
        want = handle.module.eval()(*x)
    save_checkpoint(handle, tmp_path)
    assert not any(p.suffix in (".pt", ".pkl") for p in tmp_path.iterdir())
    loaded = load_checkpoint(tmp_path)
    assert loaded.module.features[0].out_channels == 12
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(*x), want)
    assert load_model(f"torch:{tmp_path}").module.features[1].num_features == 12


def test_example_inputs_respect_dtypes():
    handle = load_model("python:modelpress.testing:DigitsNet")
    text = ModelHandle("t", (handle.inputs[0].__class__("input_ids", ("batch", "sequence"), "int64"),), ("logits",), "classification")
    ex = text.example_inputs(batch=2, seq_len=5)
    assert ex["input_ids"].shape == (2, 5) and ex["input_ids"].dtype == np.int64


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("", "model spec is empty"),
        ("nosuchkind:abc", "unknown model source 'nosuchkind'"),
        ("torchvision:resnet_nope", "torchvision has no model 'resnet_nope'"),
        ("torchvision:resnet18?input_size=abc", "option 'input_size'"),
        ("torchvision:resnet18?colour=red", "unknown option(s) ['colour']"),
        ("onnx:/does/not/exist.onnx", "no such file"),
        ("hf:/does/not/exist", "not a transformers directory"),
        ("python:modelpress.testing", "must look like python:pkg.module:function"),
        ("python:modelpress.nosuch:fn", "cannot import module"),
        ("python:modelpress.testing:Nope", "has no attribute 'Nope'"),
        ("python:modelpress.testing:TinyConvNet", "input shape is unknown"),
        ("python:modelpress.testing:DigitsNet?shape=1xbad", "shape must look like"),
        ("python:modelpress.testing:Conv1dNet?depth=3", "option(s) depth are not parameters of the factory; allowed: shape, task, num_classes, width, length"),
        ("torch:/nope.bin", "ExportedProgram .pt2"),
        ("some/dir/that/is/not/there", "not a known form"),
    ],
)
def test_bad_model_specs_name_the_problem(spec, fragment):
    with pytest.raises(SpecError) as info:
        load_model(spec)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_python_spec_options_are_factory_keywords():
    handle = load_model("python:modelpress.testing:Conv1dNet?width=8&num_classes=4")
    assert handle.module.features[0].out_channels == 8
    assert handle.module.classifier.out_features == 4
    assert handle.inputs[0].shape == ("batch", 1, 40)


def test_bad_onnx_file(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(SpecError, match="not a readable ONNX model"):
        load_model(f"onnx:{bad}")
