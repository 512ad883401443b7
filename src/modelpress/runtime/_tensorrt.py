"""TensorRT backend, through ONNX Runtime's TensorRT execution provider where installed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelpress.errors import BackendError, MissingDependencyError
from modelpress.runtime._onnxruntime import OnnxRuntimeSession
from modelpress.runtime.base import RuntimeOptions

if TYPE_CHECKING:
    from modelpress.sources.models import ModelHandle


class TensorRtBackend:
    """Runs ONNX files with TensorRT via ONNX Runtime's TensorrtExecutionProvider."""

    name = "tensorrt"

    def available(self) -> bool:
        try:
            import onnxruntime as ort
        except ImportError:
            return False
        return "TensorrtExecutionProvider" in ort.get_available_providers()

    def load(self, model: ModelHandle, options: RuntimeOptions) -> OnnxRuntimeSession:
        if not self.available():
            raise MissingDependencyError("onnxruntime-gpu with TensorRT", 'backend "tensorrt"')
        import onnxruntime as ort

        if model.onnx_path is None:
            raise BackendError(f'backend "tensorrt" needs an ONNX file; {model.spec} has none')
        provider_options = {"trt_fp16_enable": options.precision == "fp16"}
        session = ort.InferenceSession(
            str(model.onnx_path),
            providers=[("TensorrtExecutionProvider", provider_options), "CUDAExecutionProvider"],
        )
        return OnnxRuntimeSession(session, "cuda", options.threads)
