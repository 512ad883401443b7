"""Calibrate roofline estimates against a measurement on this machine.

The estimate for the catalogue device that matches this machine is compared with a
measured latency; the ratio measured / estimated then corrects every device of the
same ``calibration_class``. Other devices stay labelled "uncalibrated".
"""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelpress.advise.catalog import Catalog, Device
from modelpress.advise.profile import ModelProfile
from modelpress.advise.roofline import Estimate, estimate, rescale
from modelpress.errors import ConfigError

if TYPE_CHECKING:
    from modelpress.bench.measure import LatencyStats

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LocalDevice:
    """What this machine is, as far as the catalogue cares."""

    calibration_class: str
    cores: int
    cpu_model: str
    flags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Calibration:
    """One measured-vs-estimated comparison on this machine."""

    calibration_class: str
    device: str
    precision: str
    runtime: str
    batch: int
    measured_ms: float
    measured_ci95_rel: float
    estimated_ms: float
    load_avg: float | None = None
    cores: int | None = None

    @property
    def ratio(self) -> float:
        """Measured / estimated latency: >1 means the roofline was optimistic."""
        return self.measured_ms / self.estimated_ms

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return {**asdict(self), "ratio": self.ratio}


_CLASS_FLAGS = (  # most capable first
    ("amx_tile", "x86-amx"),
    ("avx512_vnni", "x86-avx512-vnni"),
    ("avx512f", "x86-avx512"),
    ("avx_vnni", "x86-avx-vnni"),   # 256-bit VNNI on client cores without AVX-512 (Alder Lake and later)
    ("avx2", "x86-avx2"),
)


def classify_cpu(flags: set[str], machine: str) -> str:
    """Map CPU feature flags (from /proc/cpuinfo) to a calibration class name."""
    if machine in ("aarch64", "arm64"):
        return "arm-a76" if "asimddp" in flags else "arm"
    for flag, name in _CLASS_FLAGS:
        if flag in flags:
            return name
    return "x86-generic"


def local_from(flags: set[str] | frozenset[str], cpu_model: str, cores: int, machine: str | None = None) -> LocalDevice:
    """Describe a machine from its CPU flags, model name and usable core count."""
    machine = machine or platform.machine()
    interesting = sorted(f for f in flags if f.startswith(("avx", "amx", "asimd", "fma")))
    return LocalDevice(classify_cpu(set(flags), machine), cores, cpu_model, tuple(interesting))


def detect_local() -> LocalDevice:
    """Detect this machine's calibration class from its cores and CPU flags (/proc/cpuinfo)."""
    from modelpress.bench.hardware import cpu_flags, cpu_info

    info = cpu_info()
    return local_from(cpu_flags(), str(info["cpu"]), int(info["cores"] or os.cpu_count() or 1))


def match_local(catalog: Catalog, local: LocalDevice) -> Device:
    """Return the catalogue device standing for this machine: same class, nearest core count."""
    same = [d for d in catalog.devices.values() if d.calibration_class == local.calibration_class and d.kind != "gpu"]
    if not same:
        raise ConfigError(
            f"this machine is class {local.calibration_class!r} ({local.cpu_model}, {local.cores} cores) and no "
            "catalogue device has that `calibration_class`; add one with --catalog FILE to calibrate"
        )
    return min(same, key=lambda d: abs((d.cores or 0) - local.cores))


def calibrate(
    profile: ModelProfile,
    catalog: Catalog,
    measured: Mapping[str, tuple[str, LatencyStats]],
    *,
    batch: int = 1,
    local: LocalDevice | None = None,
    load_avg: float | None = None,
) -> list[Calibration]:
    """Compare measured latencies with the roofline for this machine's catalogue device.

    Args:
        profile: the model at batch 1.
        catalog: the device catalogue.
        measured: precision -> (runtime name, latency from ``modelpress.bench.measure``) measured here at ``batch``.
        batch: the batch size the timings were taken at.
        local: this machine; detected when None.
        load_avg: the 1-minute load average while measuring; read now when None. A load
            above the core count means other processes shared the cores and inflated the timing.
    """
    local = local or detect_local()
    if load_avg is None and hasattr(os, "getloadavg"):
        load_avg = os.getloadavg()[0]
    device = match_local(catalog, local)
    out = []
    for precision, (runtime, stats) in measured.items():
        est = estimate(profile, device, precision=precision, batch=batch)
        if est.latency_ms is None:
            raise ConfigError(f"device {device.id!r} has no {precision} peak to calibrate against")
        out.append(
            Calibration(local.calibration_class, device.id, precision, runtime, batch, stats.p50_ms, stats.rel_half_width,
                        est.latency_ms, load_avg, local.cores)
        )
        logger.info("calibration %s %s: measured %.2f ms, estimated %.2f ms", device.id, precision, stats.p50_ms, est.latency_ms)
    return out


_CAL_FIELDS = ("calibration_class", "device", "precision", "runtime", "batch", "measured_ms", "measured_ci95_rel", "estimated_ms")


def load_calibrations(path: str | Path) -> list[Calibration]:
    """Read the calibrations saved in an earlier ``advise --json`` report (its ``calibrations`` list).

    Raises:
        ConfigError: when the file is missing, not JSON, or an entry lacks a field.
    """
    import json

    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise ConfigError(f"calibration file {path} does not exist") from err
    except json.JSONDecodeError as err:
        raise ConfigError(f"calibration file {path} is not JSON: {err}") from err
    entries = data.get("calibrations") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"calibration file {path}: field `calibrations` must be a non-empty list (write one with advise --calibrate --json FILE)")
    out = []
    for i, entry in enumerate(entries):
        missing = [f for f in _CAL_FIELDS if not isinstance(entry, dict) or f not in entry]
        if missing:
            raise ConfigError(f"calibration file {path}: entry {i} lacks field(s) {', '.join(f'`{m}`' for m in missing)}")
        try:
            cal = Calibration(
                str(entry["calibration_class"]), str(entry["device"]), str(entry["precision"]), str(entry["runtime"]),
                int(entry["batch"]), float(entry["measured_ms"]), float(entry["measured_ci95_rel"]), float(entry["estimated_ms"]),
                entry.get("load_avg"), entry.get("cores"),
            )
        except (TypeError, ValueError) as err:
            raise ConfigError(f"calibration file {path}: entry {i} has a non-numeric field: {err}") from err
        if cal.measured_ms <= 0 or cal.estimated_ms <= 0:
            raise ConfigError(f"calibration file {path}: entry {i} fields `measured_ms` and `estimated_ms` must be > 0")
        out.append(cal)
    return out


def apply_calibration(
    estimates: list[Estimate], calibrations: list[Calibration], profile: ModelProfile, catalog: Catalog
) -> list[Estimate]:
    """Correct estimates on devices of a calibrated class; leave the rest "uncalibrated".

    The class's ratio measured at the same precision and batch is preferred, then the
    same precision at the nearest batch, then another precision; the label says which.
    """
    by_class: dict[str, list[Calibration]] = {}
    for cal in calibrations:
        by_class.setdefault(cal.calibration_class, []).append(cal)
    out = []
    for est in estimates:
        device = catalog.devices[est.device]
        cals = by_class.get(device.calibration_class)
        if not cals or est.latency_ms is None:
            out.append(est)
            continue
        cal = min(cals, key=lambda c: (c.precision != est.precision, abs(c.batch - est.batch)))
        where = "here" if cal.device == device.id else f"from {cal.device}"
        at_batch = "" if cal.batch == est.batch else f" at batch {cal.batch}"
        label = f"calibrated x{cal.ratio:.2f} ({cal.precision}{at_batch} {where})"
        out.append(rescale(est, profile, device, cal.ratio, label))
    return out


def trust_note(calibrations: list[Calibration]) -> str:
    """Say how far calibrated and uncalibrated figures can be trusted, from the measurements."""
    if not calibrations:
        return ("uncalibrated: vendor peak figures at an assumed efficiency; batch-1 latency on real "
                "runtimes is often several times the roofline (run with --calibrate).")
    parts = []
    for cal in calibrations:
        at_batch = "" if cal.batch == 1 else f" batch {cal.batch}"
        parts.append(f"{cal.precision}{at_batch}: measured {cal.measured_ms:.2f} ms (±{cal.measured_ci95_rel:.0%}) vs "
                     f"estimated {cal.estimated_ms:.2f} ms on {cal.device} (ratio {cal.ratio:.2f})")
    text = "; ".join(parts) + ". The calibrated figure for this machine, model and precision is as good as the measurement."
    ratios = [c.ratio for c in calibrations]
    if len(ratios) > 1:
        spread = max(ratios) / min(ratios)
        text += (f" The ratios at different precisions or batches differ by {spread:.2f}x; a ratio carried to another "
                 "precision, model or device of the class is good to about that factor at best.")
    # the measurement itself keeps about `cores` threads busy; well past that, others were running too
    busy = [c for c in calibrations if c.load_avg is not None and c.cores and c.load_avg > 1.5 * c.cores]
    if busy:
        text += (f" The load average was {max(c.load_avg for c in busy):.1f} on {busy[0].cores} cores while measuring: "
                 "other processes shared the cores, so the measured latency and the ratio are inflated; "
                 "re-run on an idle machine.")
    text += " Devices of other classes stay uncalibrated (vendor peaks at the assumed efficiency)."
    return text
