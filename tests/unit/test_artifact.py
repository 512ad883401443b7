from __future__ import annotations

import json

import pytest
import torch

from modelpress.artifact import load_artifact, read_manifest, write_artifact
from modelpress.errors import ArtifactError
from modelpress.export.onnx import ExportConfig, export_onnx
from modelpress.sources.models import load_model


@pytest.fixture
def exported(tmp_path):
    handle = load_model("python:modelpress.testing:DigitsNet")
    return handle.with_onnx(export_onnx(handle, tmp_path / "src.onnx", ExportConfig(exporter="torchscript")).path)


def test_round_trip_with_checkpoint_and_lineage(tmp_path, exported):
    out = write_artifact(tmp_path / "a", handle=exported, manifest={"parent": "xyz", "metrics": {"accuracy": 0.9}})
    manifest = read_manifest(out)
    assert set(manifest["files"]) == {"model.onnx", "model.safetensors", "architecture.json"}
    assert manifest["parent"] == "xyz" and manifest["environment"]["libraries"]["torch"]
    loaded = load_artifact(out)
    x = exported.torch_inputs(batch=2)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(*x), exported.module(*x))
    assert load_model(str(out)).onnx_path == out / "model.onnx"


def test_tampered_file_is_refused(tmp_path, exported):
    out = write_artifact(tmp_path / "a", handle=exported)
    with open(out / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ArtifactError, match="does not match its manifest hash"):
        load_artifact(out)


def test_missing_file_is_refused(tmp_path, exported):
    out = write_artifact(tmp_path / "a", handle=exported)
    (out / "model.safetensors").unlink()
    with pytest.raises(ArtifactError, match="missing model.safetensors"):
        load_artifact(out)


def test_failed_write_leaves_nothing_and_keeps_the_old_artifact(tmp_path, exported):
    out = write_artifact(tmp_path / "a", handle=exported, manifest={"v": 1})
    with pytest.raises(FileNotFoundError):
        write_artifact(out, handle=exported, manifest={"v": 2}, extra_files={"x": tmp_path / "missing"})
    assert json.loads((out / "manifest.json").read_text())["v"] == 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_no_onnx_is_an_error(tmp_path):
    handle = load_model("python:modelpress.testing:DigitsNet")
    with pytest.raises(ArtifactError, match="has no ONNX file"):
        write_artifact(tmp_path / "a", handle=handle)
    assert not (tmp_path / "a").exists()
