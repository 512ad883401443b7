"""FP16 and BF16 precision choices for the quantize stage."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from modelpress.compress._encodings import CpuFeatures
from modelpress.errors import BackendError, ConfigError


def convert(src: Path, cfg: Any, work: Path, cpu: CpuFeatures) -> tuple[dict[str, Path], dict[str, Any]]:
    """Build the fp16 graph, or check the CPU can run bf16; return the variants to measure."""
    if cfg.kind == "fp16":
        if cfg.device == "cuda":
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendError("fp16 runs on CUDA, but this onnxruntime has no CUDAExecutionProvider "
                                   f"(providers: {ort.get_available_providers()}); install onnxruntime-gpu "
                                   "or set device='cpu' to build the fp16 graph anyway")
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
        dst = work / "fp16.onnx"
        onnx.save(model, str(dst))
        return {"fp16": dst}, {"device": cfg.device, "keep_io_types": True}
    if not (cpu.avx512_bf16 or cpu.amx):
        raise ConfigError("precision bf16 needs a CPU with AVX512-BF16 or AMX; this CPU has neither "
                          f"(flags from {cpu.flags_source}); use static INT8 or fp16 on CUDA instead")
    # OpenVINO runs the float graph with bf16 inference precision; the file stays fp32.
    dst = work / "bf16.onnx"
    shutil.copyfile(src, dst)
    return {"bf16": dst}, {"runtime_precision": "bf16", "note": "run with OpenVINO INFERENCE_PRECISION_HINT=bf16"}
