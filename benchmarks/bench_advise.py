"""Benchmark for `modelpress advise`: ResNet-18 FP32 and INT8 across the catalogue, and
measured vs estimated latency on this machine.

Prints one line per measured claim (measured, estimated, ratio), the ranked tables
(uncalibrated roofline and calibrated here), and writes bench-out/advise.json and
bench-out/advise.png.

    PYTHONPATH=src python benchmarks/bench_advise.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _export(model: torch.nn.Module, path: Path) -> None:
    # modelpress.export.onnx.export_onnx takes a ModelHandle once the foundation lands; same settings
    torch.onnx.export(model, (torch.randn(1, 3, 224, 224),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "batch"}})


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

    import onnxruntime as ort
    import torchvision

    from modelpress.advise.calibrate import apply_calibration, calibrate, detect_local, time_interleaved, trust_note
    from modelpress.advise.catalog import load_catalog
    from modelpress.advise.profile import profile_module, profile_onnx
    from modelpress.advise.report import plot, text_table
    from modelpress.advise.roofline import estimate, rank

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = torchvision.models.resnet18().eval()  # random weights: speed only, no accuracy claims
    profile = profile_module(model, (torch.randn(1, 3, 224, 224),), name="resnet18")
    catalog = load_catalog()
    local = detect_local()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory() as tmp:
        fp32_path, int8_path = Path(tmp) / "resnet18.onnx", Path(tmp) / "resnet18_int8.onnx"
        _export(model, fp32_path)
        _quantize_int8(fp32_path, int8_path, samples=4 if args.quick else 32)
        int8_profile = profile_onnx(int8_path, name="resnet18-int8")

        def session(path: Path) -> ort.InferenceSession:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = args.threads
            opts.inter_op_num_threads = 1
            # idle sessions must not spin on the cores the interleaved partner is timing on
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

        x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
        s32, s8 = session(fp32_path), session(int8_path)
        xt = torch.from_numpy(x)

        def torch_fp32() -> None:
            with torch.inference_mode():
                model(xt)

        reps = {"warmup": 2 if args.quick else 5, "min_reps": 5 if args.quick else 30, "max_seconds": 3 if args.quick else 25}
        start = time.perf_counter()
        timings = time_interleaved({"ort-fp32": lambda: s32.run(None, {"input": x}), "ort-int8": lambda: s8.run(None, {"input": x})}, **reps)
        wall = time.perf_counter() - start
        del s32, s8
        # torch eager is timed on its own: its OpenMP workers and ORT's would contend if interleaved
        timings.update(time_interleaved({"torch-fp32": torch_fp32}, **reps))

    cals = calibrate(profile, catalog, {"fp32": ("onnxruntime", timings["ort-fp32"]), "int8": ("onnxruntime", timings["ort-int8"])},
                     local=local)
    here = cals[0].device
    torch_est = estimate(profile, catalog.devices[here], precision="fp32").latency_ms

    print(f"# this machine: {local.cpu_model}, {local.cores} cores, class {local.calibration_class} -> catalogue device {here}")
    print(f"# resnet18: {profile.macs / 1e9:.3f} GMACs (torch), {int8_profile.macs / 1e9:.3f} GMACs (INT8 ONNX graph), "
          f"{profile.params / 1e6:.2f} M params; timing {wall:.1f} s, interleaved, n={timings['ort-fp32'].n}")
    for name, t in timings.items():
        est = torch_est if name == "torch-fp32" else next(c.estimated_ms for c in cals if c.precision == name.split("-")[1])
        print(f"advise resnet18 {name} on {here}: measured {t.median_ms:.2f} ms (p90 {t.p90_ms:.2f}, ±{t.ci95_rel:.1%}) "
              f"vs estimated {est:.2f} ms -> ratio measured/estimated {t.median_ms / est:.2f}")
    print(f"advise resnet18 measured INT8 speedup over FP32 (ORT): {timings['ort-fp32'].median_ms / timings['ort-int8'].median_ms:.2f}x "
          f"vs roofline {cals[0].estimated_ms / cals[1].estimated_ms:.2f}x")

    raw = [estimate(profile, d, precision=p) for d in catalog.devices.values() for p in ("fp32", "int8")]
    calibrated = rank(apply_calibration(raw, cals, profile, catalog))
    for precision in ("fp32", "int8"):
        print(f"\n## resnet18 {precision.upper()}, batch 1, roofline (vendor peaks x efficiency), calibrated where the class matches this machine")
        print(text_table([e for e in calibrated if e.precision == precision]))
    note = trust_note(cals)
    print(f"\n# trust: {note}")

    plot(calibrated, out_dir / "advise.png", title="resnet18 batch 1: latency vs cost per device")
    result = {
        "model": profile.to_dict(),
        "local": {"cpu_model": local.cpu_model, "cores": local.cores, "class": local.calibration_class, "device": here},
        "timings": {k: {"median_ms": t.median_ms, "p90_ms": t.p90_ms, "n": t.n, "ci95_rel": t.ci95_rel} for k, t in timings.items()},
        "calibrations": [c.to_dict() for c in cals],
        "estimates_raw": [e.to_dict() for e in raw],
        "estimates_calibrated": [e.to_dict() for e in calibrated],
        "trust": note,
        "quick": args.quick,
    }
    (out_dir / "advise.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"# wrote {out_dir / 'advise.json'} and {out_dir / 'advise.png'}")


if __name__ == "__main__":
    main()
