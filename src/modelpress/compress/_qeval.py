"""Run, score and time candidate graphs for the quantize stage.

Small local stand-ins for ``modelpress.runtime`` sessions, ``runtime.evaluate``
and ``bench.measure`` until the foundation lands; the quantize stage calls
only the three functions below so the swap is one place.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from modelpress.errors import BackendError, MissingDependencyError

Feeds = Sequence[Mapping[str, np.ndarray]]
RunFn = Callable[[Mapping[str, np.ndarray]], list[np.ndarray]]
Task = Literal["classification", "embedding", "other"]


def load_runner(path: Path, backend: str, *, threads: int, precision: str = "fp32", device: str = "cpu") -> RunFn:
    """Load an ONNX file on ``backend`` and return a function that runs one batch."""
    if backend == "onnxruntime":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendError("device 'cuda' needs onnxruntime-gpu with the CUDA provider; this onnxruntime has "
                               f"{ort.get_available_providers()}")
        try:
            sess = ort.InferenceSession(str(path), so, providers=providers)
        except Exception as err:
            raise BackendError(f"onnxruntime could not load {path.name}: {err}") from err
        names = [o.name for o in sess.get_outputs()]
        return lambda feeds: sess.run(names, dict(feeds))
    if backend == "openvino":
        try:
            import openvino as ov
        except ImportError as err:
            raise MissingDependencyError("openvino", 'backend "openvino"', "openvino") from err
        cfg: dict[str, object] = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
        if precision == "bf16":
            cfg["INFERENCE_PRECISION_HINT"] = "bf16"
        else:
            cfg["INFERENCE_PRECISION_HINT"] = "f32"
        try:
            compiled = ov.Core().compile_model(str(path), "CPU", cfg)
        except Exception as err:
            raise BackendError(f"openvino could not load {path.name}: {err}") from err
        request = compiled.create_infer_request()
        outs = compiled.outputs

        def run(feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
            result = request.infer(dict(feeds))
            return [np.asarray(result[o]) for o in outs]

        return run
    raise BackendError(f'quantize measures on "onnxruntime" or "openvino"; got backend {backend!r}')


def run_all(run: RunFn, feeds: Feeds) -> np.ndarray:
    """Run every batch and concatenate the first output along the batch axis."""
    return np.concatenate([np.asarray(run(f)[0], dtype=np.float32) for f in feeds], axis=0)


@dataclass(frozen=True, slots=True)
class Quality:
    """One model's score on the validation split and its drop from the float model."""

    metric: str
    value: float
    reference: float
    n: int

    @property
    def drop(self) -> float:
        return self.reference - self.value


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def confident_mask(ref: np.ndarray, threshold: float = 0.6, min_count: int = 32) -> np.ndarray:
    """Select inputs where the float model is confident.

    Flat-softmax inputs flip under any perturbation, so agreement is judged
    where the reference's top probability is at least ``threshold``; when fewer
    than ``min_count`` pass, the most confident half is used instead.
    """
    p = _softmax(ref.reshape(len(ref), -1)).max(axis=1)
    mask = p >= threshold
    if mask.sum() < min(min_count, len(ref)):
        mask = p >= np.median(p)
    return mask


def score(task: Task, out: np.ndarray, ref: np.ndarray, labels: np.ndarray | None) -> Quality:
    """Score ``out`` against labels (accuracy) or against the float outputs ``ref``.

    Labelled classifiers: accuracy, reference = the float model's accuracy.
    Unlabelled classifiers: top-1 agreement on confident inputs (reference 1).
    Encoders and other outputs: mean cosine similarity per sample (reference 1).
    """
    n = len(out)
    if task == "classification" and labels is not None:
        labels = np.asarray(labels)[:n]
        return Quality("accuracy", float((out.argmax(1) == labels).mean()), float((ref.argmax(1) == labels).mean()), n)
    if task == "classification":
        m = confident_mask(ref)
        return Quality("agreement", float((out[m].argmax(1) == ref[m].argmax(1)).mean()), 1.0, int(m.sum()))
    a, b = out.reshape(n, -1).astype(np.float64), ref.reshape(n, -1).astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return Quality("cosine", float(cos.mean()), 1.0, n)


def interleaved_ms(fns: Mapping[str, Callable[[], object]], *, warmup: int = 3, reps: int = 30,
                   max_seconds: float = 20.0) -> dict[str, float]:
    """Time several callables round-robin and return each one's median in milliseconds.

    Round-robin interleaving makes load from other processes hit every
    candidate alike, so ratios stay honest on a busy machine.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    for i in range(reps):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            samples[k].append(time.perf_counter() - t)
        if i >= 4 and time.perf_counter() - start > max_seconds:
            break
    return {k: 1000.0 * float(np.median(v)) for k, v in samples.items()}
