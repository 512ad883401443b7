"""The Backend protocol: load a model, run a batch of named numpy arrays."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

    from modelpress.sources.models import ModelHandle

BackendName = Literal["onnxruntime", "openvino", "torch", "tensorrt"]
Device = Literal["cpu", "cuda"]


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    """Where and how a backend runs a model.

    Attributes:
        threads: intra-op threads; None lets the runtime choose.
        device: "cpu" or "cuda".
        precision: compute precision hint for backends that honour one
            (OpenVINO's inference precision, torch autocast); "fp32" keeps the
            model's own types.
        spin_wait: let the runtime's idle worker threads busy-wait for the next
            run (ONNX Runtime's default: lowest latency on dedicated cores). Off
            when several models are timed round-robin on the same cores, where a
            spinning pool steals the cores of whatever runs next.
    """

    threads: int | None = None
    device: Device = "cpu"
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    spin_wait: bool = True


@runtime_checkable
class Session(Protocol):
    """A model loaded by a backend, ready to run."""

    backend: str
    device: str
    threads: int | None
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run one batch; return the outputs in ``output_names`` order."""
        ...


@runtime_checkable
class Backend(Protocol):
    """A runtime that can load a model and make a :class:`Session` of it."""

    name: str

    def available(self) -> bool:
        """Say whether this backend's engine is installed and usable here."""
        ...

    def load(self, model: ModelHandle, options: RuntimeOptions) -> Session:
        """Load ``model`` (its ONNX file or its torch module) for running."""
        ...
