"""ONNX Runtime backend (CPU, and CUDA where the GPU package is installed)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from modelpress.errors import BackendError, MissingDependencyError
from modelpress.runtime.base import RuntimeOptions

if TYPE_CHECKING:
    from modelpress.sources.models import ModelHandle

log = logging.getLogger(__name__)


class OnnxRuntimeSession:
    """An ``onnxruntime.InferenceSession`` behind the Session protocol."""

    backend = "onnxruntime"

    def __init__(self, session: object, device: str, threads: int | None) -> None:
        self._session = session
        self.device = device
        self.threads = threads
        self.input_names = tuple(i.name for i in session.get_inputs())  # type: ignore[attr-defined]
        self.output_names = tuple(o.name for o in session.get_outputs())  # type: ignore[attr-defined]

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return self._session.run(None, dict(inputs))  # type: ignore[attr-defined]


class OnnxRuntimeBackend:
    """Runs ONNX files with ONNX Runtime."""

    name = "onnxruntime"

    def available(self) -> bool:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return False
        return True

    def load(self, model: ModelHandle, options: RuntimeOptions) -> OnnxRuntimeSession:
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise MissingDependencyError("onnxruntime", 'backend "onnxruntime"') from err
        if model.onnx_path is None:
            raise BackendError(f'backend "onnxruntime" needs an ONNX file; {model.spec} has none (export it first)')
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if options.threads:
            so.intra_op_num_threads = options.threads
            so.inter_op_num_threads = 1
        if not options.spin_wait:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if options.device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendError('device "cuda" needs onnxruntime-gpu with the CUDAExecutionProvider; this onnxruntime has only ' + ", ".join(ort.get_available_providers()))
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        try:
            session = ort.InferenceSession(str(model.onnx_path), so, providers=providers)
        except Exception as err:  # ORT raises its own Fail/InvalidGraph types
            raise BackendError(f"onnxruntime could not load {model.onnx_path}: {err}") from err
        return OnnxRuntimeSession(session, options.device, options.threads)
