"""The advise verb: profile a model, estimate it on every device, optionally calibrate here."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from modelpress.advise.calibrate import (
    Calibration,
    LocalDevice,
    Timing,
    apply_calibration,
    calibrate,
    detect_local,
    time_interleaved,
    trust_note,
)
from modelpress.advise.catalog import PRECISIONS, Catalog, load_catalog
from modelpress.advise.profile import ModelProfile, profile_module, profile_onnx
from modelpress.advise.roofline import Estimate, estimate, rank
from modelpress.errors import ConfigError

logger = logging.getLogger(__name__)

_QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}


class AdviseConfig(BaseModel):
    """What to estimate: which devices, precisions and batch size, and whether to calibrate here."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    devices: list[str] | None = None
    precisions: list[Literal["fp32", "fp16", "bf16", "int8"]] | None = None
    batch: int = Field(default=1, ge=1)
    sort: Literal["latency", "cost", "energy"] = "latency"
    calibrate: bool = False
    threads: int = Field(default=2, ge=1)
    max_seconds: float = Field(default=10.0, gt=0)
    seq_len: int = Field(default=16, ge=1)

    @field_validator("precisions")
    @classmethod
    def _known(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("give at least one precision")
        return value


def make_config(**kwargs: Any) -> AdviseConfig:
    """Build an AdviseConfig, turning validation errors into a ConfigError naming the field."""
    try:
        return AdviseConfig(**kwargs)
    except ValidationError as err:
        problems = "; ".join(f"`{'.'.join(map(str, e['loc']))}`: {e['msg']}; got {e.get('input')!r}" for e in err.errors())
        raise ConfigError(f"advise options: {problems}") from err


@dataclass
class Target:
    """A model to advise on: its profile, and what can run it here for calibration."""

    profile: ModelProfile
    precision: str
    runner: Callable[[int], tuple[str, Callable[[], Any]]] | None = None


@dataclass
class AdviseReport:
    """Estimates per device (ranked), the calibration behind them, and how far to trust them."""

    profile: ModelProfile
    estimates: list[Estimate]
    calibrations: list[Calibration] = field(default_factory=list)
    local: LocalDevice | None = None
    trust: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return {
            "model": self.profile.to_dict(),
            "estimates": [e.to_dict() for e in self.estimates],
            "calibrations": [c.to_dict() for c in self.calibrations],
            "local_device": None if self.local is None else {
                "calibration_class": self.local.calibration_class, "cores": self.local.cores,
                "cpu_model": self.local.cpu_model, "flags": list(self.local.flags),
            },
            "trust": self.trust,
        }


def onnx_precision(path: str | Path) -> str:
    """Return "int8" when an ONNX graph holds quantize/dequantize or integer ops, else "fp32"."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return "int8" if any(n.op_type in _QUANT_OPS for n in model.graph.node) else "fp32"


def _onnx_runner(path: Path, threads: int, seq_len: int) -> Callable[[int], tuple[str, Callable[[], Any]]]:
    def make(batch: int) -> tuple[str, Callable[[], Any]]:
        import numpy as np
        import onnxruntime as ort

        # a stand-in until modelpress.runtime.load_session lands; same settings it uses
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        feeds = {}
        for value in session.get_inputs():
            shape = [batch if i == 0 else (d if isinstance(d, int) else seq_len) for i, d in enumerate(value.shape)]
            if "int" in value.type:
                feeds[value.name] = rng.integers(0, 2, size=shape).astype(np.int64)
            else:
                feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
        return "onnxruntime", lambda: session.run(None, feeds)

    return make


def _torch_runner(module: Any, inputs_for: Callable[[int], dict[str, Any]], threads: int) -> Callable[[int], tuple[str, Callable[[], Any]]]:
    def make(batch: int) -> tuple[str, Callable[[], Any]]:
        import torch

        torch.set_num_threads(threads)
        feeds = {k: torch.as_tensor(v) for k, v in inputs_for(batch).items()}

        def run() -> Any:
            with torch.inference_mode():
                return module(**feeds)

        return "torch", run

    return make


def profile_spec(spec: str | Path, *, threads: int = 2, seq_len: int = 16) -> Target:
    """Profile a model spec, artifact directory or ONNX file, and say how to run it here.

    An ONNX file is profiled from its graph; anything else is loaded with
    ``modelpress.sources.models.load_model`` (artifact directories included), profiled
    from its torch module when it has one, else from its ONNX file.
    """
    path = Path(str(spec).removeprefix("onnx:"))
    if path.suffix == ".onnx":
        if not path.is_file():
            raise ConfigError(f"ONNX file {path} does not exist")
        return Target(profile_onnx(path, seq_len=seq_len), onnx_precision(path), _onnx_runner(path, threads, seq_len))
    try:
        from modelpress.sources.models import load_model
    except ImportError as err:
        raise ConfigError(f"cannot load {spec!r}: model specs need modelpress.sources (not installed); give an .onnx file") from err
    handle = load_model(str(spec))
    onnx_path = getattr(handle, "onnx_path", None)
    precision = onnx_precision(onnx_path) if onnx_path else "fp32"
    if handle.module is not None and precision == "fp32":
        import torch

        example = {k: torch.as_tensor(v) for k, v in handle.example_inputs(batch=1, seq_len=seq_len).items()}
        profile = profile_module(handle.module, example, name=str(spec))

        def inputs_for(batch: int) -> dict[str, Any]:
            return handle.example_inputs(batch=batch, seq_len=seq_len)

        runner = _onnx_runner(onnx_path, threads, seq_len) if onnx_path else _torch_runner(handle.module, inputs_for, threads)
        return Target(profile, precision, runner)
    if onnx_path is None:
        raise ConfigError(f"{spec!r} has neither a torch module nor an ONNX file to profile")
    # a quantized artifact: its ONNX graph is what ships, so that is what we profile and time
    return Target(profile_onnx(onnx_path, name=str(spec), seq_len=seq_len), precision, _onnx_runner(Path(onnx_path), threads, seq_len))


def advise(
    target: Target,
    config: AdviseConfig,
    *,
    catalog: Catalog | None = None,
    local: LocalDevice | None = None,
    calibrations: list[Calibration] | None = None,
    progress: Callable[[str], None] | None = None,
) -> AdviseReport:
    """Estimate ``target`` on every selected device and precision, calibrated here when asked.

    Args:
        target: from :func:`profile_spec` (or built from a profile and a runner).
        config: devices, precisions, batch, sort order, calibration.
        catalog: the device catalogue; the shipped one when None.
        local: this machine; detected when None (only used when calibrating).
        calibrations: ratios measured earlier (``load_calibrations``), applied like fresh ones.
        progress: called with a short message before each long step.
    """
    catalog = catalog or load_catalog()
    devices = catalog.select(config.devices)
    precisions = config.precisions or [target.precision]
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise ConfigError(f"`precisions` must be among {', '.join(PRECISIONS)}; got {unknown}")
    estimates = [estimate(target.profile, d, precision=p, batch=config.batch) for d in devices for p in precisions]
    calibrations = list(calibrations or [])
    if config.calibrate:
        if target.runner is None:
            raise ConfigError("calibration needs a model that runs here (an ONNX file or a torch module)")
        local = local or detect_local()
        if progress:
            progress(f"measuring {target.profile.name} ({target.precision}, batch {config.batch}) on this machine")
        runtime, fn = target.runner(config.batch)
        timing: Timing = time_interleaved({target.precision: fn}, max_seconds=config.max_seconds)[target.precision]
        fresh = calibrate(target.profile, catalog, {target.precision: (runtime, timing)}, batch=config.batch, local=local)
        # a fresh measurement replaces a loaded one for the same class and precision
        calibrations = [c for c in calibrations if (c.calibration_class, c.precision) not in
                        {(f.calibration_class, f.precision) for f in fresh}] + fresh
    if calibrations:
        estimates = apply_calibration(estimates, calibrations, target.profile, catalog)
    return AdviseReport(target.profile, rank(estimates, by=config.sort), calibrations, local, trust_note(calibrations))
