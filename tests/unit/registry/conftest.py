"""Fixtures for registry tests: artifact directories made by hand, a registry in tmp_path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


def make_artifact(directory: Path, *, seed: int = 0) -> Path:
    """Write a tiny real ONNX model (logits = input @ W) as an artifact with modelpress.artifact."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from modelpress.artifact import write_artifact
    from modelpress.sources.models import ModelHandle, TensorSpec

    scratch = directory.parent / f".{directory.name}.onnx"
    scratch.parent.mkdir(parents=True, exist_ok=True)
    weight = np.random.default_rng(seed).normal(size=(4, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(weight, "W")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), scratch)
    handle = ModelHandle(
        spec=f"tiny-{seed}", inputs=(TensorSpec("input", ("batch", 4)),), outputs=("logits",),
        task="classification", onnx_path=scratch,
    )
    return write_artifact(directory, handle=handle, manifest={"seed": seed})


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
