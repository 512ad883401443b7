"""OpenVINO backend: compiles the ONNX file for the CPU (or another OpenVINO device)."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from modelpress.errors import BackendError, MissingDependencyError
from modelpress.runtime.base import RuntimeOptions

if TYPE_CHECKING:
    from modelpress.sources.models import ModelHandle

_PRECISION = {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}


class OpenVinoSession:
    """A compiled OpenVINO model behind the Session protocol."""

    backend = "openvino"

    def __init__(self, compiled: object, device: str, threads: int | None) -> None:
        self._compiled = compiled
        self._local = threading.local()
        self.device = device
        self.threads = threads
        self.input_names = tuple(p.get_any_name() for p in compiled.inputs)  # type: ignore[attr-defined]
        self.output_names = tuple(p.get_any_name() for p in compiled.outputs)  # type: ignore[attr-defined]

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        # One infer request per thread keeps concurrent callers (the server's workers) apart.
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()  # type: ignore[attr-defined]
        result = request.infer(dict(inputs))
        return [np.asarray(result[out]) for out in self._compiled.outputs]  # type: ignore[attr-defined]


class OpenVinoBackend:
    """Runs ONNX files with OpenVINO."""

    name = "openvino"

    def available(self) -> bool:
        try:
            import openvino  # noqa: F401
        except ImportError:
            return False
        return True

    def load(self, model: ModelHandle, options: RuntimeOptions) -> OpenVinoSession:
        try:
            import openvino as ov
        except ImportError as err:
            raise MissingDependencyError("openvino", 'backend "openvino"', "openvino") from err
        if model.onnx_path is None:
            raise BackendError(f'backend "openvino" needs an ONNX file; {model.spec} has none (export it first)')
        if options.device != "cpu":
            raise BackendError(f'backend "openvino" runs on device "cpu" here; got {options.device!r}')
        config: dict[str, object] = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": _PRECISION[options.precision],
        }
        if options.threads:
            config["INFERENCE_NUM_THREADS"] = options.threads
        try:
            core = ov.Core()
            compiled = core.compile_model(core.read_model(str(model.onnx_path)), "CPU", config)
        except Exception as err:  # OpenVINO raises RuntimeError subclasses with long texts
            raise BackendError(f"openvino could not compile {model.onnx_path}: {str(err).splitlines()[0]}") from err
        return OpenVinoSession(compiled, options.device, options.threads)
