"""Benchmark for `modelpress advise`: ResNet-18 FP32 and INT8 across the catalogue, and
measured vs estimated latency on this machine.

Prints one line per measured claim (measured, estimated, ratio), the ranked tables
(uncalibrated roofline and calibrated here), and writes bench-out/advise.json and
bench-out/advise.png.

    PYTHONPATH=src python benchmarks/bench_advise.py [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np
import torch


def _quantize_int8(fp32: Path, out: Path, samples: int) -> None:
    """Static INT8: pre-process, then QDQ with unsigned activations and per-channel weights."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out.with_name("pre.onnx")
    quant_pre_process(str(fp32), str(pre))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self._it = iter([{"input": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)} for _ in range(samples)])

        def get_next(self) -> dict | None:
            return next(self._it, None)

    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, per_channel=True)


def main() -> None:
    """Run the benchmark and print its lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="bench-out")
    args = parser.parse_args()

    from modelpress.advise.calibrate import apply_calibration, calibrate, detect_local, trust_note
    from modelpress.advise.catalog import load_catalog
    from modelpress.advise.profile import profile_module, profile_onnx
    from modelpress.advise.report import plot, text_table
    from modelpress.advise.roofline import estimate, rank
    from modelpress.bench.measure import BenchConfig, BenchEntry, bench
    from modelpress.export.onnx import export_onnx
    from modelpress.sources.models import load_model

    torch.manual_seed(0)
    handle = load_model("torchvision:resnet18")  # random weights: speed only, no accuracy claims
    profile = profile_module(handle.module, handle.torch_inputs(batch=1), name="resnet18")
    catalog = load_catalog()
    local = detect_local()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory() as tmp:
        fp32_path, int8_path = Path(tmp) / "resnet18.onnx", Path(tmp) / "resnet18_int8.onnx"
        export_onnx(handle, fp32_path)
        _quantize_int8(fp32_path, int8_path, samples=4 if args.quick else 32)
        int8_profile = profile_onnx(int8_path, name="resnet18-int8")
        fp32 = handle.with_onnx(fp32_path)
        int8 = dataclasses.replace(handle, module=None, onnx_path=int8_path, precision="int8")
        config = BenchConfig(threads=args.threads, min_reps=5 if args.quick else 30,
                             max_seconds=6 if args.quick else 60, warmup_s=0.2 if args.quick else 1.0)
        # FP32 and INT8 in ONNX Runtime and FP32 in torch eager, round-robin in one run
        result = bench([BenchEntry("fp32", fp32), BenchEntry("int8", int8)], ["onnxruntime", "torch"], config)
    stats = {f"{c.backend}-{c.model}": c for c in result.cases if c.latency is not None}
    ort32, ort8, torch32 = stats["onnxruntime-fp32"].latency, stats["onnxruntime-int8"].latency, stats["torch-fp32"].latency

    cals = calibrate(profile, catalog, {"fp32": ("onnxruntime", ort32), "int8": ("onnxruntime", ort8)}, local=local)
    here = cals[0].device
    estimated = {"fp32": cals[0].estimated_ms, "int8": cals[1].estimated_ms}

    print(f"# this machine: {local.cpu_model}, {local.cores} cores, flags {' '.join(local.flags)}; "
          f"class {local.calibration_class} -> catalogue device {here}; load average {cals[0].load_avg:.1f}")
    print(f"# resnet18: {profile.macs / 1e9:.3f} GMACs (torch), {int8_profile.macs / 1e9:.3f} GMACs (INT8 ONNX graph), "
          f"{profile.params / 1e6:.2f} M params; bench wall {result.wall_s:.1f} s, interleaved")
    for name, lat, precision in (("onnxruntime fp32", ort32, "fp32"), ("onnxruntime int8", ort8, "int8"), ("torch fp32", torch32, "fp32")):
        est = estimated[precision]
        print(f"advise resnet18 {name} on {here}: measured p50 {lat.p50_ms:.2f} ms (95% CI {lat.ci95_low_ms:.2f}-{lat.ci95_high_ms:.2f}, "
              f"n={lat.n}) vs estimated {est:.2f} ms -> ratio measured/estimated {lat.p50_ms / est:.2f}")
    print(f"advise resnet18 INT8 speedup over FP32 in onnxruntime: measured {ort32.p50_ms / ort8.p50_ms:.2f}x "
          f"vs roofline {estimated['fp32'] / estimated['int8']:.2f}x")

    raw = [estimate(profile, d, precision=p) for d in catalog.devices.values() for p in ("fp32", "int8")]
    calibrated = rank(apply_calibration(raw, cals, profile, catalog))
    for precision in ("fp32", "int8"):
        print(f"\n## resnet18 {precision.upper()}, batch 1: roofline from vendor peaks x efficiency 0.5, "
              "calibrated where the class matches this machine")
        print(text_table([e for e in calibrated if e.precision == precision]))
    note = trust_note(cals)
    print(f"\n# trust: {note}")

    plot(calibrated, out_dir / "advise.png", title="resnet18 batch 1: latency vs cost per device")
    out = {
        "model": profile.to_dict(),
        "local": {"cpu_model": local.cpu_model, "cores": local.cores, "class": local.calibration_class, "device": here},
        "bench": result.to_json(),
        "calibrations": [c.to_dict() for c in cals],
        "estimates_raw": [e.to_dict() for e in raw],
        "estimates_calibrated": [e.to_dict() for e in calibrated],
        "trust": note,
        "quick": args.quick,
    }
    (out_dir / "advise.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"# wrote {out_dir / 'advise.json'} and {out_dir / 'advise.png'}")


if __name__ == "__main__":
    main()
