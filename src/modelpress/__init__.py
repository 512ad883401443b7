"""modelpress: compress a trained PyTorch model, verify it, serve it, roll it out.

The public verbs live in their subpackages and are re-exported here lazily so
that ``import modelpress`` stays cheap (no torch, onnxruntime or CUDA at import).
"""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("modelpress")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

_LAZY = {
    "load_model": "modelpress.sources.models",
    "load_data": "modelpress.sources.data",
    "export_onnx": "modelpress.export.onnx",
    "ExportConfig": "modelpress.export.onnx",
    "get_backend": "modelpress.runtime",
    "BenchConfig": "modelpress.bench.measure",
    "finetune_": "modelpress.train.finetune",
    "FinetuneConfig": "modelpress.train.finetune",
    "distill_": "modelpress.compress.distill",
    "DistillConfig": "modelpress.compress.distill",
    "prune_": "modelpress.compress.prune",
    "PruneConfig": "modelpress.compress.prune",
    "UnstructuredPruneConfig": "modelpress.compress.prune",
    "quantize": "modelpress.compress.quantize",
    "quantize_": "modelpress.compress.quantize",
    "DynamicConfig": "modelpress.compress.quantize",
    "StaticConfig": "modelpress.compress.quantize",
    "QATConfig": "modelpress.compress.quantize",
    "load_recipe": "modelpress.pipeline.recipe",
    "run_recipe": "modelpress.pipeline.run",
    "open_registry": "modelpress.registry",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'modelpress' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
