"""PyTorch eager backend: runs the handle's torch module."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from modelpress.errors import BackendError
from modelpress.runtime.base import RuntimeOptions

if TYPE_CHECKING:
    from torch import nn

    from modelpress.sources.models import ModelHandle


class TorchSession:
    """An eval-mode torch module behind the Session protocol."""

    backend = "torch"

    def __init__(self, module: nn.Module, input_names: tuple[str, ...], output_names: tuple[str, ...], options: RuntimeOptions) -> None:
        import torch

        self._module = module
        self._torch = torch
        self.device = options.device
        self.threads = options.threads
        self.input_names = input_names
        self.output_names = output_names
        self._autocast = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(options.precision)

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        torch = self._torch
        args = [torch.from_numpy(np.ascontiguousarray(inputs[name])).to(self.device) for name in self.input_names]
        with torch.inference_mode(), torch.autocast(self.device, dtype=self._autocast or torch.float32, enabled=self._autocast is not None):
            out = self._module(*args)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return [o.float().cpu().numpy() for o in outs]


class TorchBackend:
    """Runs torch modules eagerly."""

    name = "torch"

    def available(self) -> bool:
        return True

    def load(self, model: ModelHandle, options: RuntimeOptions) -> TorchSession:
        import torch

        if model.module is None:
            raise BackendError(f'backend "torch" needs a torch module; {model.spec} has only an ONNX file')
        if model.precision != "fp32" and model.onnx_path is not None:
            raise BackendError(
                f'backend "torch" would run the float checkpoint of {model.spec}, not its {model.precision} ONNX graph; '
                "use onnxruntime or openvino for it"
            )
        if options.device == "cuda" and not torch.cuda.is_available():
            raise BackendError('device "cuda" asked for, but torch sees no CUDA device')
        if options.threads:
            # torch's thread count is process-wide; the last session loaded sets it
            torch.set_num_threads(options.threads)
        module = model.module.eval().to(options.device)
        return TorchSession(module, tuple(s.name for s in model.inputs), tuple(model.outputs), options)
