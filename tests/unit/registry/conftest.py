"""Fixtures for registry tests: artifact directories made by hand, a registry in tmp_path."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest


def make_artifact(directory: Path, *, seed: int = 0, extra: dict[str, bytes] | None = None) -> Path:
    """Write a tiny real ONNX model (y = x @ W) and a manifest listing each file's sha256."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    directory.mkdir(parents=True, exist_ok=True)
    weight = np.random.default_rng(seed).normal(size=(4, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(weight, "W")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), directory / "model.onnx")
    for name, data in (extra or {}).items():
        (directory / name).write_bytes(data)
    files = {
        p.name: {"sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "bytes": p.stat().st_size}
        for p in sorted(directory.iterdir())
        if p.name != "manifest.json"
    }
    manifest = {"format": "modelpress-artifact", "files": files, "task": "classification", "seed": seed}
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return directory


@pytest.fixture
def artifact_factory(tmp_path: Path) -> Callable[..., Path]:
    """Return a function making distinct artifact directories (by seed) under tmp_path."""

    def make(seed: int = 0, **kwargs: object) -> Path:
        return make_artifact(tmp_path / "artifacts" / f"a{seed}", seed=seed, **kwargs)  # type: ignore[arg-type]

    return make


@pytest.fixture
def registry(tmp_path: Path):
    """A registry in an SQLite file under tmp_path."""
    from modelpress.registry import Registry

    reg = Registry(f"sqlite:///{tmp_path / 'reg' / 'registry.db'}")
    yield reg
    reg.close()
