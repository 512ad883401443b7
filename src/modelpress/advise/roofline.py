"""Roofline estimates per device: latency and its bound, utilisation, energy, cost, memory fit.

Every formula here is written out in docs/advise.md; the unit tests check them on
hand-computed cases.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from modelpress.advise.catalog import BYTES_PER_ELEMENT, Device
from modelpress.advise.profile import ModelProfile
from modelpress.errors import ConfigError

SECONDS_PER_YEAR = 365 * 24 * 3600
Bound = Literal["compute", "memory", "overhead", "unsupported"]


@dataclass(frozen=True, slots=True)
class Estimate:
    """What one model costs on one device at one batch size and precision.

    Latency is per batch; energy and cost are per sample (one inference).
    """

    device: str
    device_name: str
    precision: str
    batch: int
    latency_ms: float | None
    bound: Bound
    compute_ms: float
    memory_ms: float
    overhead_ms: float
    utilisation: float | None
    energy_mj: float | None
    cost_per_million_usd: float | None
    memory_needed_gb: float
    fits: bool
    calibration: str = "uncalibrated"
    note: str = ""

    @property
    def throughput_per_s(self) -> float | None:
        """Samples per second at this batch size."""
        return None if not self.latency_ms else self.batch * 1000.0 / self.latency_ms

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return {**asdict(self), "throughput_per_s": self.throughput_per_s}


def memory_needed_bytes(profile: ModelProfile, precision: str, batch: int) -> int:
    """Bytes resident while running: every weight plus the largest layer's input and output."""
    size = BYTES_PER_ELEMENT[precision]
    return size * (profile.params + batch * profile.peak_activations)


def cost_per_inference_usd(device: Device, seconds_per_sample: float) -> float:
    """Dollars for one inference: rented time, or amortised price plus electricity when owned."""
    if device.hourly_usd is not None:
        return device.hourly_usd / 3600.0 * seconds_per_sample
    assert device.price_usd is not None  # the schema guarantees one of the two
    amortised = device.price_usd / (device.lifetime_years * SECONDS_PER_YEAR) * seconds_per_sample
    energy_kwh = device.power_w * seconds_per_sample / 3.6e6
    return amortised + energy_kwh * device.electricity_usd_per_kwh


def estimate(profile: ModelProfile, device: Device, *, precision: str = "fp32", batch: int = 1) -> Estimate:
    """Estimate one model on one device with a per-layer roofline.

    For each layer i at batch B, with P the device's peak ops/s at ``precision``,
    e its efficiency, W the memory bandwidth and s the bytes per element::

        compute_i = 2 * MACs_i * B / (P * e)
        memory_i  = s * (params_i + B * activations_i) / W
        t_i       = max(compute_i, memory_i)

    latency = sum(t_i) + overhead_ms + launch_overhead_us * layers. The bound is
    whichever of the compute-bound layers' time, memory-bound layers' time and the
    overhead is largest.

    Args:
        profile: the model at batch 1.
        device: the catalogue entry.
        precision: fp32, fp16, bf16 or int8 (weights and activations at that width).
        batch: samples per inference call, >= 1.
    """
    if batch < 1:
        raise ConfigError(f"`batch` must be >= 1; got {batch}")
    if precision not in BYTES_PER_ELEMENT:
        raise ConfigError(f"`precision` must be one of {', '.join(BYTES_PER_ELEMENT)}; got {precision!r}")
    size = BYTES_PER_ELEMENT[precision]
    needed = memory_needed_bytes(profile, precision, batch)
    needed_gb = needed / 1e9
    fits = needed_gb <= device.memory_gb
    peak = device.peak_tops.get(precision)
    if peak is None:
        return Estimate(
            device.id, device.name, precision, batch, None, "unsupported", 0.0, 0.0, 0.0, None, None, None,
            needed_gb, fits, note=f"no {precision} peak in the catalogue",
        )
    achievable = peak * device.efficiency
    bandwidth = device.memory_bandwidth_gbs * 1e9
    compute_bound_s = memory_bound_s = compute_total = memory_total = 0.0
    for layer in profile.layers:
        c = 2.0 * layer.macs * batch / achievable
        m = size * (layer.params + batch * layer.activations) / bandwidth
        compute_total += c
        memory_total += m
        if c >= m:
            compute_bound_s += c
        else:
            memory_bound_s += m
    overhead_s = device.overhead_ms / 1e3 + device.launch_overhead_us / 1e6 * len(profile.layers)
    latency_s = compute_bound_s + memory_bound_s + overhead_s
    bound: Bound = max(
        (("compute", compute_bound_s), ("memory", memory_bound_s), ("overhead", overhead_s)), key=lambda kv: kv[1]
    )[0]
    return _finish(profile, device, precision, batch, latency_s, bound, compute_total, memory_total, overhead_s, needed_gb, fits)


def _finish(
    profile: ModelProfile,
    device: Device,
    precision: str,
    batch: int,
    latency_s: float,
    bound: Bound,
    compute_s: float,
    memory_s: float,
    overhead_s: float,
    needed_gb: float,
    fits: bool,
    calibration: str = "uncalibrated",
) -> Estimate:
    peak = device.peak_tops.get(precision)
    assert peak is not None
    per_sample_s = latency_s / batch
    utilisation = 2.0 * profile.macs * batch / latency_s / peak if latency_s > 0 else 0.0
    return Estimate(
        device=device.id,
        device_name=device.name,
        precision=precision,
        batch=batch,
        latency_ms=latency_s * 1e3,
        bound=bound,
        compute_ms=compute_s * 1e3,
        memory_ms=memory_s * 1e3,
        overhead_ms=overhead_s * 1e3,
        utilisation=utilisation,
        energy_mj=device.power_w * per_sample_s * 1e3,
        cost_per_million_usd=cost_per_inference_usd(device, per_sample_s) * 1e6,
        memory_needed_gb=needed_gb,
        fits=fits,
        calibration=calibration,
        note="" if fits else f"needs {needed_gb:.2f} GB, device has {device.memory_gb:g} GB",
    )


def rescale(est: Estimate, profile: ModelProfile, device: Device, ratio: float, label: str) -> Estimate:
    """Return ``est`` with its latency multiplied by a measured/estimated ``ratio``.

    Utilisation, energy and cost follow the corrected latency; the bound is kept
    from the roofline (calibration says how fast, not why).
    """
    if est.latency_ms is None:
        return est
    return _finish(
        profile, device, est.precision, est.batch, est.latency_ms / 1e3 * ratio, est.bound,
        est.compute_ms / 1e3, est.memory_ms / 1e3, est.overhead_ms / 1e3, est.memory_needed_gb, est.fits, label,
    )


SortKey = Literal["latency", "cost", "energy"]


def rank(estimates: list[Estimate], *, by: SortKey = "latency") -> list[Estimate]:
    """Order estimates best first; devices without an estimate or that do not fit go last."""
    field = {"latency": "latency_ms", "cost": "cost_per_million_usd", "energy": "energy_mj"}[by]

    def key(e: Estimate) -> tuple[int, float]:
        value = getattr(e, field)
        return (0 if value is not None and e.fits else 1, value if value is not None else float("inf"))

    return sorted(estimates, key=key)
