"""Hardware advisor: roofline latency, utilisation, energy and cost per device, calibrated here."""

from __future__ import annotations

from modelpress.advise.advisor import AdviseConfig, AdviseReport, advise, profile_spec
from modelpress.advise.calibrate import Calibration, apply_calibration, calibrate, detect_local
from modelpress.advise.catalog import Catalog, Device, load_catalog, parse_catalog
from modelpress.advise.profile import LayerProfile, ModelProfile, profile_module, profile_onnx
from modelpress.advise.roofline import Estimate, estimate, rank

__all__ = [
    "AdviseConfig", "AdviseReport", "Calibration", "Catalog", "Device", "Estimate", "LayerProfile", "ModelProfile",
    "advise", "apply_calibration", "calibrate", "detect_local", "estimate", "load_catalog", "parse_catalog",
    "profile_module", "profile_onnx", "profile_spec", "rank",
]
