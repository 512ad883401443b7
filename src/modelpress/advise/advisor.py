"""The advise verb: profile a model, estimate it on every device, optionally calibrate here."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modelpress.advise.calibrate import Calibration, LocalDevice, apply_calibration, calibrate, detect_local, trust_note
from modelpress.advise.catalog import Catalog, load_catalog
from modelpress.advise.profile import ModelProfile, profile_module, profile_onnx
from modelpress.advise.roofline import Estimate, estimate, rank
from modelpress.errors import ConfigError

if TYPE_CHECKING:
    from modelpress.sources.models import ModelHandle

logger = logging.getLogger(__name__)

_QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}


class AdviseConfig(BaseModel):
    """What to estimate: which devices, precisions and batch sizes, and whether to calibrate here."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    devices: list[str] | None = None
    precisions: list[Literal["fp32", "fp16", "bf16", "int8"]] | None = Field(default=None, min_length=1)
    batches: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [1], min_length=1)
    sort: Literal["latency", "cost", "energy"] = "latency"
    calibrate: bool = False
    threads: int = Field(default=2, ge=1)
    max_seconds: float = Field(default=10.0, gt=0)
    seq_len: int = Field(default=16, ge=1)


def make_config(**kwargs: Any) -> AdviseConfig:
    """Build an AdviseConfig, turning validation errors into a ConfigError naming the field."""
    try:
        return AdviseConfig(**kwargs)
    except ValidationError as err:
        problems = "; ".join(f"`{'.'.join(map(str, e['loc']))}`: {e['msg']}; got {e.get('input')!r}" for e in err.errors())
        raise ConfigError(f"advise options: {problems}") from err


@dataclass
class Target:
    """A model to advise on: its profile, its precision, and the handle that runs it here."""

    profile: ModelProfile
    precision: str
    handle: ModelHandle | None = None

    @property
    def backend(self) -> str:
        """The backend calibration times it on: ONNX Runtime when there is an ONNX file, else torch."""
        return "onnxruntime" if self.handle is not None and self.handle.onnx_path is not None else "torch"


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


def profile_spec(spec: str | Path, *, seq_len: int = 16) -> Target:
    """Profile a model spec, artifact directory or ONNX file.

    The model is loaded with ``modelpress.sources.models.load_model``. A float model
    with a torch module is profiled from the module; a quantized one (or one with
    only an ONNX file) from its ONNX graph, since that is what ships.
    """
    from modelpress.sources.models import load_model

    handle = load_model(str(spec))
    precision = handle.precision
    if precision == "fp32" and handle.onnx_path is not None:
        precision = onnx_precision(handle.onnx_path)  # a bare .onnx file does not say it is quantized
    if handle.module is not None and precision == "fp32":
        profile = profile_module(handle.module, handle.torch_inputs(batch=1, seq_len=seq_len), name=str(spec))
    elif handle.onnx_path is not None:
        profile = profile_onnx(handle.onnx_path, name=str(spec), seq_len=seq_len)
    else:
        raise ConfigError(f"{spec!r} has neither a torch module nor an ONNX file to profile")
    return Target(profile, precision, handle)


def measure_here(target: Target, config: AdviseConfig, *, progress: Callable[[float], None] | None = None) -> dict[int, Any]:
    """Time the target on this machine with the bench harness at every batch size; return batch -> LatencyStats."""
    from modelpress.bench.measure import BenchConfig, BenchEntry, bench

    if target.handle is None:
        raise ConfigError("calibration needs a model that runs here (an ONNX file or a torch module)")
    bench_config = BenchConfig(batch_sizes=tuple(config.batches), threads=config.threads, seq_len=config.seq_len,
                               max_seconds=config.max_seconds, min_reps=10)
    result = bench([BenchEntry(target.profile.name, target.handle)], [target.backend], bench_config, progress=progress)
    out = {}
    for case in result.cases:
        if case.latency is None:
            raise ConfigError(f"could not run {target.profile.name} on {target.backend} to calibrate: {case.error}")
        out[case.batch] = case.latency
    return out


def advise(
    target: Target,
    config: AdviseConfig,
    *,
    catalog: Catalog | None = None,
    local: LocalDevice | None = None,
    calibrations: list[Calibration] | None = None,
    progress: Callable[[float], None] | None = None,
) -> AdviseReport:
    """Estimate ``target`` on every selected device and precision, calibrated here when asked.

    Args:
        target: from :func:`profile_spec` (or a profile without a handle, for estimates only).
        config: devices, precisions, batch sizes, sort order, calibration.
        catalog: the device catalogue; the shipped one when None.
        local: this machine; detected when None (only used when calibrating).
        calibrations: ratios measured earlier (``load_calibrations``), applied like fresh ones.
        progress: called with the share of the calibration run done, in [0, 1].
    """
    catalog = catalog or load_catalog()
    devices = catalog.select(config.devices)
    precisions = config.precisions or [target.precision]
    estimates = [estimate(target.profile, d, precision=p, batch=b) for d in devices for p in precisions for b in config.batches]
    calibrations = list(calibrations or [])
    if config.calibrate:
        local = local or detect_local()
        fresh = []
        for batch, stats in measure_here(target, config, progress=progress).items():
            fresh += calibrate(target.profile, catalog, {target.precision: (target.backend, stats)}, batch=batch, local=local)
        # a fresh measurement replaces a loaded one for the same class, precision and batch
        done = {(f.calibration_class, f.precision, f.batch) for f in fresh}
        calibrations = [c for c in calibrations if (c.calibration_class, c.precision, c.batch) not in done] + fresh
    if calibrations:
        estimates = apply_calibration(estimates, calibrations, target.profile, catalog)
    return AdviseReport(target.profile, rank(estimates, by=config.sort), calibrations, local, trust_note(calibrations))
