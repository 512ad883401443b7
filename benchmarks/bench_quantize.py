"""Quantization benchmarks: speed (vision CNNs, MiniLM) and accuracy (mnist1d, digits), side by side.

Prints one line per measured claim and writes bench-out/quantize.json.
Batch 1, 2 threads. Every ratio in one line was timed in one interleaved run.

    python benchmarks/bench_quantize.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace as NS
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from modelpress.bench.measure import BenchConfig, BenchEntry, bench  # noqa: E402
from modelpress.compress._encodings import FeedReader, cpu_features  # noqa: E402
from modelpress.compress._qat import plain_train  # noqa: E402
from modelpress.compress._qeval import graph_handle  # noqa: E402
from modelpress.compress.quantize import DynamicConfig, QATConfig, StaticConfig, quantize  # noqa: E402
from modelpress.export.onnx import ExportConfig, export_onnx  # noqa: E402
from modelpress.sources.data import Split, load_data  # noqa: E402
from modelpress.sources.models import ModelHandle, TensorSpec, load_model  # noqa: E402

THREADS = 2
RESULTS: dict[str, Any] = {"claims": [], "details": {}}


def claim(name: str, value: float, goal: float | None, unit: str = "x", note: str = "") -> None:
    """Print one measured claim and record it."""
    ok = None if goal is None else value >= goal
    status = "" if ok is None else ("PASS" if ok else "MISS")
    goal_s = "" if goal is None else f" (goal >= {goal:g}{unit})"
    line = f"{name}: {value:.3f}{unit}{goal_s} {status}".rstrip() + (f"  [{note}]" if note else "")
    print(line, flush=True)
    RESULTS["claims"].append({"name": name, "value": value, "goal": goal, "unit": unit, "pass": ok, "note": note})


def export(handle: ModelHandle, path: Path) -> ModelHandle:
    """Export with the foundation's exporter (dynamic batch; checked against torch)."""
    export_onnx(handle, path, ExportConfig())
    return handle.with_onnx(path)


def ort_default_int8(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]]) -> Path:
    """What a user gets from ONNX Runtime's quantizer with its defaults on the plainly exported graph."""
    from onnxruntime.quantization import quantize_static

    quantize_static(str(src), str(dst), FeedReader(feeds))
    return dst


def side_by_side(graphs: dict[str, ModelHandle], module: ModelHandle, backends: list[str], *, max_seconds: float,
                 min_reps: int) -> dict[str, float]:
    """Time PyTorch eager and every graph on every backend in one interleaved run; p50 ms by "backend:label".

    The torch entry carries no ONNX file and the graph entries no module, so each
    runs only where it belongs.
    """
    import dataclasses

    entries = [BenchEntry("fp32", dataclasses.replace(module, onnx_path=None))]
    entries += [BenchEntry(label, h) for label, h in graphs.items()]
    result = bench(entries, ["torch", *backends], BenchConfig(threads=THREADS, min_reps=min_reps,
                                                              max_seconds=max_seconds, warmup_s=0.3, seq_len=128))
    return {f"{c.backend}:{c.model}": c.latency.p50_ms for c in result.cases if c.latency is not None}


# ---- vision -------------------------------------------------------------------------------


def bench_vision(name: str, work: Path, *, calib: int, max_seconds: float, goals: bool) -> None:
    torch.manual_seed(0)
    handle = export(load_model(f"torchvision:{name}"), work / f"{name}.onnx")
    rng = np.random.default_rng(0)
    calib_x = rng.standard_normal((calib, 3, 224, 224), dtype=np.float32)
    val_x = rng.standard_normal((16, 3, 224, 224), dtype=np.float32)
    data = NS(calib=Split(calib_x), val=Split(val_x), train=None)
    t0 = time.perf_counter()
    # Random weights: agreement is reported, not gated (the accuracy claims use trained models below).
    res = quantize(handle, StaticConfig(samples=calib, allow_slower=True, mixed_precision=False,
                                        max_accuracy_drop=1.0, val_samples=16),
                   data=data, out_dir=work / f"{name}-int8")
    q_s = time.perf_counter() - t0
    default = ort_default_int8(handle.onnx_path, work / f"{name}-default.onnx",
                               [{"input": calib_x[i:i + 1]} for i in range(calib)])
    int8 = graph_handle(handle, res.onnx_path, "int8")
    graphs = {"fp32": graph_handle(handle, handle.onnx_path), "int8": int8,
              "default_int8": graph_handle(handle, default, "int8")}
    if not res.chosen.startswith("qdq"):
        # OpenVINO reads QDQ graphs only: the same run targeted at OpenVINO picks its QDQ encoding by measurement.
        ov = quantize(handle, StaticConfig(samples=calib, allow_slower=True, mixed_precision=False, backend="openvino",
                                           max_accuracy_drop=1.0, val_samples=16),
                      data=data, out_dir=work / f"{name}-int8-ov")
        graphs["ov_int8"] = graph_handle(handle, ov.onnx_path, "int8")
    raw = side_by_side(graphs, handle, ["onnxruntime", "openvino"], max_seconds=max_seconds, min_reps=10)
    ov_key = "openvino:ov_int8" if "ov_int8" in graphs else "openvino:int8"
    ms = {"torch_fp32": raw["torch:fp32"], "ort_fp32": raw["onnxruntime:fp32"], "ort_int8": raw["onnxruntime:int8"],
          "ort_default_int8": raw["onnxruntime:default_int8"], "ov_fp32": raw["openvino:fp32"],
          "ov_int8": raw[ov_key]}
    RESULTS["details"][name] = {"ms": ms, "chosen": res.chosen, "quantize_seconds": q_s,
                                "candidates_ms": res.details["timings_ms"], "agreement": res.quant_metric,
                                "reduce_range": res.details.get("reduce_range")}
    timings = ", ".join(f"{k} {v:.1f}" for k, v in ms.items())
    print(f"# {name}: ms at batch 1, {THREADS} threads: {timings}; chosen encoding {res.chosen} "
          f"(candidates {', '.join(f'{k} {v:.1f}' for k, v in res.details['timings_ms'].items())})", flush=True)
    g = goals
    claim(f"{name} ORT INT8 vs PyTorch FP32 eager", ms["torch_fp32"] / ms["ort_int8"], 4.5 if g else None)
    claim(f"{name} ORT INT8 vs ORT FP32", ms["ort_fp32"] / ms["ort_int8"], 3.0 if g else None)
    claim(f"{name} ORT INT8 (modelpress) vs ORT quantizer defaults on plain export", ms["ort_default_int8"] / ms["ort_int8"],
          4.0 if g else None)
    claim(f"{name} OpenVINO INT8 ({'same graph' if ov_key.endswith(':int8') else 'QDQ graph'}) vs PyTorch FP32 eager", ms["torch_fp32"] / ms["ov_int8"], None)
    claim(f"{name} OpenVINO INT8 vs OpenVINO FP32", ms["ov_fp32"] / ms["ov_int8"], None)


# ---- MiniLM -------------------------------------------------------------------------------


def bench_minilm(work: Path, *, max_seconds: float, limit: int) -> None:
    from modelpress.compress._encodings import quantize_dynamic_graph

    handle = export(load_model("hf:minilm"), work / "minilm.onnx")
    sentences = [s.strip() for s in (ROOT / "benchmarks/data/sentences.txt").read_text().splitlines() if s.strip()]
    sentences = sentences[:limit]
    data = NS(val=Split(sentences), calib=Split(sentences), train=None)
    t0 = time.perf_counter()
    res = quantize(handle, DynamicConfig(allow_slower=True, max_accuracy_drop=0.01, val_samples=max(8, len(sentences))),
                   data=data, out_dir=work / "minilm-int8")
    q_s = time.perf_counter() - t0
    graphs = {"fp32": graph_handle(handle, handle.onnx_path), "int8": graph_handle(handle, res.onnx_path, "int8")}
    if res.chosen != "dynamic":
        # The plain dynamic graph (the candidate quantize also timed), rebuilt to time it beside the chosen one.
        plain = quantize_dynamic_graph(handle.onnx_path, work / "minilm-plain-int8.onnx", per_channel=True,
                                       reduce_range=res.details["reduce_range"])
        graphs["plain_int8"] = graph_handle(handle, plain, "int8")
    # The harness feeds batch 1 at seq_len 128 (BenchConfig.seq_len).
    raw = side_by_side(graphs, handle, ["onnxruntime"], max_seconds=max_seconds, min_reps=10)
    ms = {"torch_fp32": raw["torch:fp32"], "ort_fp32": raw["onnxruntime:fp32"], "ort_int8": raw["onnxruntime:int8"],
          "ort_plain_int8": raw.get("onnxruntime:plain_int8", raw["onnxruntime:int8"])}
    fusion = res.details.get("transformer_fusion", {})
    RESULTS["details"]["minilm"] = {"ms": ms, "cosine": res.quant_metric, "sentences": len(sentences),
                                    "chosen": res.chosen, "candidates_ms": res.details["timings_ms"],
                                    "candidates": [{"name": c.name, "ms": c.latency_ms, "cosine": c.metric}
                                                   for c in res.candidates],
                                    "transformer_fusion": fusion, "quantize_seconds": q_s}
    print(f"# MiniLM seq 128: ms {', '.join(f'{k} {v:.1f}' for k, v in ms.items())}; chosen {res.chosen} "
          f"(candidates {', '.join(f'{c.name} {c.latency_ms:.1f} ms cos {c.metric:.4f}' for c in res.candidates)}); "
          f"fusion {fusion.get('status')} from {fusion.get('source', '-')}: {fusion.get('fused_ops', {})}", flush=True)
    claim("MiniLM (seq 128) ORT INT8 dynamic vs PyTorch FP32 eager", ms["torch_fp32"] / ms["ort_int8"], 2.5,
          note=f"chosen {res.chosen}")
    claim("MiniLM ORT INT8 vs ORT FP32", ms["ort_fp32"] / ms["ort_int8"], None)
    claim("MiniLM chosen INT8 vs plain dynamic INT8 (no fusion)", ms["ort_plain_int8"] / ms["ort_int8"], None)
    claim(f"MiniLM INT8 mean cosine to FP32 over {len(sentences)} sentences", res.quant_metric, 0.99, unit="")


# ---- accuracy on real data ----------------------------------------------------------------


class DigitsNet(nn.Module):
    """A small 2-D convnet for 8x8 digits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1, stride=2), nn.BatchNorm2d(64), nn.ReLU(),
        )
        self.classifier = nn.Linear(64 * 2 * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class DepthwiseConv1dNet(nn.Module):
    """A narrow depthwise-separable 1-D CNN for mnist1d (MobileNet-style blocks: depthwise k5, BN, ReLU, 1x1)."""

    def __init__(self, width: int = 16, blocks: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv1d(1, width, 5, padding=2), nn.BatchNorm1d(width), nn.ReLU()]
        for i in range(blocks):
            layers += [nn.Conv1d(width, width, 5, padding=2, stride=2 if i < 2 else 1, groups=width),
                       nn.BatchNorm1d(width), nn.ReLU(),
                       nn.Conv1d(width, width, 1), nn.BatchNorm1d(width), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * 10, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def trained(name: str, net: nn.Module, work: Path, *, epochs: int, label: str) -> tuple[ModelHandle, NS, float]:
    """Train ``net`` on ``name`` (seed 0) and export it; return the handle, the splits (test as val), seconds."""
    torch.manual_seed(0)
    data = load_data(name)
    t0 = time.perf_counter()
    net = plain_train(net, data.train, NS(lr=1e-2, epochs=epochs, batch_size=128, seed=0))
    train_s = time.perf_counter() - t0
    shape = tuple(np.asarray(data.eval_split.x).shape[1:])
    data = NS(train=data.train, val=data.eval_split, calib=data.calib)  # report on the test split
    base = ModelHandle(label, (TensorSpec("input", ("batch", *shape)),), ("logits",), "classification", module=net)
    return export(base, work / f"{label}.onnx"), data, train_s


def bench_accuracy(name: str, work: Path, *, epochs: int, qat_epochs: int) -> None:
    from modelpress.testing import Conv1dNet

    torch.manual_seed(0)  # the same initial weights as before the helper existed
    handle, data, train_s = trained(name, Conv1dNet() if name == "mnist1d" else DigitsNet(), work, epochs=epochs,
                                    label=name)
    common = dict(allow_slower=True, max_accuracy_drop=1.0, mixed_precision=False, samples=256)
    ptq = quantize(handle, StaticConfig(**common), data=data, out_dir=work / f"{name}-ptq")
    # QAT ships a QDQ graph; timing the operator forms too would only slow the run (no speed claim here).
    qat = quantize(handle, QATConfig(epochs=qat_epochs, lr=1e-4, encoding="qdq-u8", **common), data=data,
                   out_dir=work / f"{name}-qat")
    ptq_drop, qat_drop = 100 * ptq.accuracy_drop, 100 * qat.accuracy_drop
    RESULTS["details"][name] = {"float_acc": ptq.float_metric, "ptq_acc": ptq.quant_metric, "qat_acc": qat.quant_metric,
                                "qat_torch_sim_acc": qat.details.get("torch_sim_metric"),
                                "qat_sim_gap": qat.details.get("sim_gap"), "ptq_chosen": ptq.chosen,
                                "ptq_speedup_vs_ort_fp32": ptq.speedup, "train_seconds": train_s}
    print(f"# {name}: float acc {100 * ptq.float_metric:.2f}%, static INT8 {100 * ptq.quant_metric:.2f}% "
          f"({ptq.chosen}), QAT INT8 {100 * qat.quant_metric:.2f}% (torch sim "
          f"{100 * qat.details.get('torch_sim_metric', float('nan')):.2f}%, gap {100 * qat.details.get('sim_gap', 0):+.2f} pts); "
          f"trained {train_s:.0f}s", flush=True)
    claim(f"{name} float CNN test accuracy", 100 * ptq.float_metric, 94.0 if name == "mnist1d" else None, unit="%")
    # A drop is a cost, so the claim is reported as points of headroom under the 0.5-point budget.
    claim(f"{name} static INT8 accuracy drop (points; goal <= 0.5)", ptq_drop, None, unit=" pts",
          note="PASS" if ptq_drop <= 0.5 else "MISS")
    if ptq_drop > 0.5:
        rec = (ptq_drop - qat_drop) / ptq_drop
        claim(f"{name} QAT recovers share of the PTQ drop", rec, 0.5, unit="")
    else:
        claim(f"{name} QAT INT8 accuracy drop (points)", qat_drop, None, unit=" pts",
              note="PTQ drop within 0.5 points; nothing to recover")
    claim(f"{name} exported QAT INT8 vs its torch simulation (points)", 100 * qat.details.get("sim_gap", float("nan")),
          None, unit=" pts")



def bench_per_tensor(work: Path, *, epochs: int, qat_epochs: int) -> None:
    """Where PTQ genuinely costs accuracy: per-tensor weights on a depthwise-separable CNN, and what QAT recovers.

    Some runtimes and accelerators take one weight scale per tensor
    (``per_channel=False``). With BatchNorm folded into a depthwise conv every
    filter gets its own gain, so one shared int8 scale, sized for the largest
    filter, leaves the small filters a few levels (7-bit weights where
    ``reduce_range`` is on). Per-channel PTQ of the same model is the control.
    QAT trains with the same per-tensor fake-quant and is scored as the exported
    QDQ graph on ONNX Runtime.
    """
    name = "mnist1d-dw"
    torch.manual_seed(0)
    handle, data, train_s = trained("mnist1d", DepthwiseConv1dNet(width=16), work, epochs=epochs, label=name)
    common = dict(allow_slower=True, max_accuracy_drop=1.0, mixed_precision=False, samples=256, encoding="qdq-u8")
    per_channel = quantize(handle, StaticConfig(**common), data=data, out_dir=work / f"{name}-ptq-pc")
    ptq = quantize(handle, StaticConfig(per_channel=False, **common), data=data, out_dir=work / f"{name}-ptq")
    qat = quantize(handle, QATConfig(per_channel=False, epochs=qat_epochs, lr=1e-3, **common), data=data,
                   out_dir=work / f"{name}-qat")
    ptq_drop, qat_drop, pc_drop = 100 * ptq.accuracy_drop, 100 * qat.accuracy_drop, 100 * per_channel.accuracy_drop
    sim = qat.details.get("torch_sim_metric", float("nan"))
    rr = ptq.details.get("reduce_range")
    setting = f"per-tensor weights ({'7' if rr else '8'}-bit, reduce_range={rr}), minmax, qdq-u8"
    RESULTS["details"][name] = {"float_acc": ptq.float_metric, "ptq_per_tensor_acc": ptq.quant_metric,
                                "ptq_per_channel_acc": per_channel.quant_metric, "qat_acc": qat.quant_metric,
                                "qat_torch_sim_acc": sim, "qat_sim_gap": qat.details.get("sim_gap"),
                                "reduce_range": rr, "train_seconds": train_s, "epochs": epochs,
                                "qat_epochs": qat_epochs, "qat_lr": 1e-3}
    print(f"# {name}: depthwise-separable CNN (width 16) trained {epochs} epochs in {train_s:.0f}s; "
          f"float {100 * ptq.float_metric:.2f}%, static INT8 per-channel {100 * per_channel.quant_metric:.2f}%, "
          f"per-tensor {100 * ptq.quant_metric:.2f}%, QAT per-tensor ({qat_epochs} epochs, lr 1e-3) "
          f"{100 * qat.quant_metric:.2f}% (torch sim {100 * sim:.2f}%); {len(data.val.x)} test samples", flush=True)
    claim(f"{name} static INT8 drop, per-channel weights (control; points)", pc_drop, None, unit=" pts")
    claim(f"{name} static INT8 drop, {setting} (points)", ptq_drop, None, unit=" pts",
          note="PTQ costs > 0.5 points" if ptq_drop > 0.5 else "within 0.5 points: this run has nothing to recover")
    claim(f"{name} QAT INT8 drop, same per-tensor setting, exported QDQ graph on ORT (points)", qat_drop, None,
          unit=" pts")
    if ptq_drop > 0.5:
        claim(f"{name} QAT recovers share of the per-tensor PTQ drop", (ptq_drop - qat_drop) / ptq_drop, 0.5, unit="")
    claim(f"{name} exported QAT INT8 vs its torch simulation (points)", 100 * qat.details.get("sim_gap", float("nan")),
          None, unit=" pts")

SECTIONS = ("minilm", "mnist1d", "digits", "mnist1d-dw", "resnet18", "mobilenet_v2", "resnet50")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="resnet18 + short runs only")
    ap.add_argument("--only", default="", help=f"comma-separated sections to run, of: {', '.join(SECTIONS)}")
    ap.add_argument("--out", default=str(ROOT / "bench-out" / "quantize.json"))
    args = ap.parse_args()
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        ap.error(f"--only: unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    torch.set_num_threads(THREADS)
    t0 = time.time()
    cpu = cpu_features()
    RESULTS["cpu"] = {"vnni": cpu.vnni, "avx512": cpu.avx512, "avx512_bf16": cpu.avx512_bf16, "amx": cpu.amx}
    RESULTS["section_seconds"] = {}
    print(f"# CPU: vnni={cpu.vnni} avx512={cpu.avx512} avx512_bf16={cpu.avx512_bf16} amx={cpu.amx}; "
          f"threads={THREADS}, batch 1", flush=True)
    quick = args.quick
    with tempfile.TemporaryDirectory(prefix="bench-quant-") as tmp:
        work = Path(tmp)
        vision = ["resnet18"] if quick else ["resnet18", "mobilenet_v2", "resnet50"]
        jobs: list[tuple[str, Any]] = [("minilm", lambda: bench_minilm(work, max_seconds=10 if quick else 30,
                                                                        limit=32 if quick else 10_000))]
        for n in ("mnist1d", "digits"):
            jobs.append((n, lambda n=n: bench_accuracy(n, work, epochs=3 if quick else (40 if n == "mnist1d" else 15),
                                                       qat_epochs=1 if quick else 3)))
        jobs.append(("mnist1d-dw", lambda: bench_per_tensor(work, epochs=3 if quick else 15, qat_epochs=1 if quick else 3)))
        jobs += [(n, lambda n=n: bench_vision(n, work, calib=8 if quick else 32, max_seconds=10 if quick else 30,
                                              goals=n == "resnet18"))
                 for n in vision]
        if only:
            jobs = [(label, job) for label, job in jobs if label in only]
        failed = []
        for label, job in jobs:
            started = time.perf_counter()
            try:
                job()
            except Exception:  # one broken section must not hide the others' numbers
                failed.append(label)
                print(f"# {label} FAILED:\n{traceback.format_exc()}", flush=True)
            RESULTS["section_seconds"][label] = time.perf_counter() - started
            print(f"# {label}: section took {RESULTS['section_seconds'][label]:.0f}s", flush=True)
            _write(args.out)
    RESULTS["seconds"] = time.time() - t0
    RESULTS["quick"] = quick
    RESULTS["only"] = only
    _write(args.out)
    print(f"# wrote {args.out} in {RESULTS['seconds']:.0f}s", flush=True)
    if failed:
        sys.exit(1)


def _write(path: str) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(RESULTS, indent=2, default=float))


if __name__ == "__main__":
    main()
