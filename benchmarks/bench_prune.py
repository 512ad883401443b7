"""Pruning benchmarks: measured speedups, accuracy after fine-tuning, and the torchvision zoo sweep.

Usage:
    python benchmarks/bench_prune.py [--quick] [--only resnet18,zoo,minilm,mnist1d]

Claims (batch 1, 2 threads, measured side by side in one run):
- resnet18: pruned 50% (rounded to 8) vs unpruned PyTorch eager; pruned + INT8 (modelpress quantize, static,
  encoding chosen by measurement) in ONNX Runtime vs unpruned eager.
- zoo: every torchvision classification model pruned 30% -> forward -> ONNX export -> output-shape check.
- minilm: 50% of FFN width and a third of the heads removed: speedup, and embedding cosine to the unpruned model
  on held-out sentences before and after a short recovery (distilling toward the unpruned embeddings).
- mnist1d: a CNN with 50% fewer MACs, fine-tuned, within 1 point of the unpruned accuracy.

Prints one line per claim and writes bench-out/prune.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench-out" / "prune.json"
THREADS = 2
QUICK_ZOO = ["resnet18", "mobilenet_v2", "densenet121", "efficientnet_b0", "shufflenet_v2_x1_0", "squeezenet1_1",
             "regnet_x_400mf", "mnasnet0_5", "googlenet", "convnext_tiny", "vit_b_32", "swin_t"]
# run last: the heaviest architectures (minutes each on 2 cores), so a deadline cuts the fewest models
HEAVY_LAST = ("swin", "maxvit", "vit_", "regnet_y_128gf", "regnet_y_32gf", "regnet_x_32gf", "regnet_y_16gf",
              "regnet_x_16gf", "efficientnet_b7", "efficientnet_b6", "efficientnet_b5", "efficientnet_v2_l",
              "efficientnet_v2_m", "convnext_large", "convnext_base", "resnext101", "wide_resnet101", "vgg")
# input sizes tried in order: small first, the architecture's own size where it needs one
SIZES = (64, 224, 299)


def interleaved_ms(fns: dict[str, Any], *, seconds: float, min_reps: int = 20) -> dict[str, float]:
    """Time several callables round-robin (so machine noise hits all alike); return median ms each."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up
        for _ in range(3):
            fn()
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or min(len(t) for t in times.values()) < min_reps:
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def ort_session(path: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    # no busy-waiting after a run: spinning ORT threads would steal the 2 cores from torch
    # while the two are timed round-robin
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def quantize_int8(pruned: Any, work: Path, *, calib: int) -> Any:
    """Static INT8 with modelpress's own quantizer: the encoding is chosen by measurement on ONNX Runtime.

    The weights are random, so agreement with FP32 is reported, not gated (as in bench_quantize's vision part).
    """
    from types import SimpleNamespace

    import numpy as np

    from modelpress.compress.quantize import StaticConfig, quantize
    from modelpress.sources.data import Split

    rng = np.random.default_rng(0)
    data = SimpleNamespace(calib=Split(rng.standard_normal((calib, 3, 224, 224), dtype=np.float32)),
                           val=Split(rng.standard_normal((16, 3, 224, 224), dtype=np.float32)), train=None)
    return quantize(pruned, StaticConfig(samples=calib, allow_slower=True, mixed_precision=False, max_accuracy_drop=1.0,
                                         val_samples=16, threads=THREADS), data=data, out_dir=work / "pruned-int8")


def bench_resnet18(quick: bool) -> dict[str, Any]:
    import numpy as np
    import torch

    from modelpress.compress.prune import PruneConfig, prune_model
    from modelpress.export.onnx import ExportConfig, export_onnx
    from modelpress.sources.models import load_model

    base = load_model("torchvision:resnet18")
    pruned, report = prune_model(base, PruneConfig(ratio=0.5, round_to=8))
    x = torch.randn(1, 3, 224, 224)
    with tempfile.TemporaryDirectory() as tmp:
        exported = export_onnx(pruned, Path(tmp) / "pruned.onnx", ExportConfig(check=True))
        quantized = quantize_int8(pruned.with_onnx(exported.path), Path(tmp), calib=8 if quick else 32)
        sessions = {"fp32": ort_session(exported.path), "int8": ort_session(quantized.onnx_path)}
        feed = {"input": x.numpy()}
        with torch.inference_mode():
            fns = {
                "torch_fp32_unpruned": lambda: base.module(x),
                "torch_fp32_pruned": lambda: pruned.module(x),
                "ort_fp32_pruned": lambda: sessions["fp32"].run(None, feed),
                "ort_int8_pruned": lambda: sessions["int8"].run(None, feed),
            }
            ms = interleaved_ms(fns, seconds=5 if quick else 20)
        with torch.no_grad():
            ref = pruned.module(x).numpy()
        agree = float(np.corrcoef(sessions["int8"].run(None, feed)[0].ravel(), ref.ravel())[0, 1])
    result = {
        "gmacs_before": report.macs_before / 1e9, "gmacs_after": report.macs_after / 1e9,
        "params_before": report.params_before, "params_after": report.params_after,
        "latency_ms": ms,
        "speedup_torch_pruned": ms["torch_fp32_unpruned"] / ms["torch_fp32_pruned"],
        "speedup_int8_ort_vs_unpruned_torch": ms["torch_fp32_unpruned"] / ms["ort_int8_pruned"],
        "int8_output_correlation_to_pruned_fp32": agree,
        "int8_encoding": quantized.chosen, "int8_candidates_ms": quantized.details.get("timings_ms"),
    }
    print(f"resnet18 prune 50% (round_to 8): {result['gmacs_before']:.2f} -> {result['gmacs_after']:.2f} GMACs; "
          f"torch eager {ms['torch_fp32_unpruned']:.1f} ms -> {ms['torch_fp32_pruned']:.1f} ms = "
          f"{result['speedup_torch_pruned']:.2f}x (claim >= 2.5x)", flush=True)
    print(f"resnet18 pruned + INT8 ORT {ms['ort_int8_pruned']:.2f} ms vs unpruned torch FP32 eager "
          f"{ms['torch_fp32_unpruned']:.1f} ms = {result['speedup_int8_ort_vs_unpruned_torch']:.1f}x (claim >= 10x); "
          f"pruned FP32 ORT {ms['ort_fp32_pruned']:.2f} ms; INT8 ({quantized.chosen}, chosen by measurement) output "
          f"correlation {agree:.4f}", flush=True)
    return result


def zoo_one(name: str) -> dict[str, Any]:
    """Prune one torchvision model 30%, run it, export it, check output shapes; return the outcome."""
    import numpy as np
    import torch

    from modelpress.compress.prune import PruneConfig, prune_model
    from modelpress.export.onnx import ExportConfig, export_onnx
    from modelpress.sources.models import load_model

    torch.set_num_threads(THREADS)
    stage = "load"
    out: dict[str, Any] = {"model": name}
    try:
        handle = size = None
        for size in SIZES:  # the smallest input the architecture accepts (not a pruning question)
            handle = load_model(f"torchvision:{name}?input_size={size}")
            try:
                with torch.no_grad():
                    want = tuple(handle.module(*handle.torch_inputs(batch=1)).shape)
                break
            except Exception:  # noqa: BLE001 - too small for this architecture; try the next size
                handle = None
        if handle is None:
            raise RuntimeError(f"unpruned model runs at none of the sizes {SIZES}")
        out["input_size"] = size
        stage = "prune"
        pruned, report = prune_model(handle, PruneConfig(ratio=0.3))
        out.update(macs_before=report.macs_before, macs_after=report.macs_after,
                   params_before=report.params_before, params_after=report.params_after)
        stage = "forward"
        inputs = pruned.example_inputs(batch=2)
        with torch.no_grad():
            got = tuple(pruned.module(*(torch.from_numpy(v) for v in inputs.values())).shape)
        if got != (2, *want[1:]):
            raise RuntimeError(f"pruned output shape {got}, expected {(2, *want[1:])}")
        stage = "onnx export"
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "m.onnx"
            try:  # torchscript is quick; the dynamo exporter is the fallback
                exported = export_onnx(pruned, path, ExportConfig(exporter="torchscript", check=False, optimize=False))
            except Exception:  # noqa: BLE001
                exported = export_onnx(pruned, path, ExportConfig(exporter="dynamo", check=False, optimize=False))
            out["exporter"] = exported.exporter
            stage = "onnxruntime shape check"
            onnx_out = ort_session(exported.path).run(None, inputs)[0]
            if tuple(onnx_out.shape) != got:
                raise RuntimeError(f"ONNX output shape {onnx_out.shape} != torch {got}")
            if not np.isfinite(onnx_out).all():
                raise RuntimeError("ONNX output has non-finite values")
        out["ok"] = True
    except Exception as err:  # noqa: BLE001 - every failure is a result to report
        out.update(ok=False, stage=stage, cause=f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}")
        out["traceback_tail"] = traceback.format_exc().splitlines()[-4:]
    return out


def bench_zoo(quick: bool, timeout_s: int = 600) -> dict[str, Any]:
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if quick:
        names = [n for n in QUICK_ZOO if n in names]
    names = sorted(names, key=lambda n: next((i for i, h in enumerate(HEAVY_LAST) if n.startswith(h)), -1))
    results = []
    partial = ROOT / "bench-out" / "prune_zoo_partial.jsonl"
    partial.parent.mkdir(exist_ok=True)
    partial.write_text("")
    for name in names:
        started = time.perf_counter()
        try:  # one process per model: a crash or a leak in one cannot take the sweep down
            proc = subprocess.run([sys.executable, __file__, "--zoo-one", name], capture_output=True, text=True,
                                  timeout=timeout_s, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            result = json.loads(lines[-1]) if lines else {
                "model": name, "ok": False, "stage": "process", "cause": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"}
        except subprocess.TimeoutExpired:
            result = {"model": name, "ok": False, "stage": "timeout", "cause": f"took over {timeout_s}s"}
        result["seconds"] = round(time.perf_counter() - started, 1)
        results.append(result)
        with partial.open("a") as fh:
            fh.write(json.dumps(result) + "\n")
        status = "ok" if result["ok"] else f"FAIL at {result['stage']}: {result['cause']}"
        print(f"  zoo {name}: {status} ({result['seconds']}s)", flush=True)
    passed = sum(r["ok"] for r in results)
    print(f"zoo sweep: {passed}/{len(results)} torchvision classification models pass prune 30% -> forward -> ONNX -> "
          f"shape check ({100 * passed / len(results):.1f}%, goal >= 95%)", flush=True)
    for r in results:
        if not r["ok"]:
            print(f"  failure {r['model']}: {r['stage']}: {r['cause']}", flush=True)
    return {"passed": passed, "total": len(results), "models": results}


def bench_minilm(quick: bool) -> dict[str, Any]:
    """Prune MiniLM, then recover it by distilling toward the unpruned encoder's sentence embeddings.

    The sentences are split once: the recovery trains on the first part and every cosine is
    reported on the held-out rest (never on training sentences). The recovery runs on the
    training engine through ``make_finetune`` with a cosine loss on the embeddings.
    """
    import torch

    from modelpress.compress.prune import PruneConfig, make_finetune, prune_model
    from modelpress.sources.data import model_inputs
    from modelpress.sources.models import load_model

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    base = load_model("hf:minilm")
    pruned, report = prune_model(base, PruneConfig(ratio=0.5, head_ratio=1 / 3))
    layer = pruned.module.encoder.encoder.layer[0]
    sentences = [s.strip() for s in (ROOT / "benchmarks/data/sentences.txt").read_text().splitlines() if s.strip()]
    held_out, train_sentences = sentences[::3], [s for i, s in enumerate(sentences) if i % 3]

    def tensors(texts: list[str]) -> tuple[torch.Tensor, ...]:
        return tuple(torch.from_numpy(v) for v in model_inputs(base, texts).values())

    def cosines(texts: list[str]) -> torch.Tensor:
        args = tensors(texts)
        with torch.inference_mode():
            return torch.nn.functional.cosine_similarity(base.module(*args), pruned.module(*args), dim=-1)

    cos_before = cosines(held_out)
    # the unpruned encoder's embeddings are the targets; one padding length for all training sentences
    train_args = tensors(train_sentences)
    with torch.inference_mode():
        targets = base.module(*train_args).clone()
    size = 16
    batches = [(tuple(t[i:i + size] for t in train_args), targets[i:i + size]) for i in range(0, len(targets), size)]

    def cosine_loss(output: Any, target: torch.Tensor) -> torch.Tensor:
        return 1 - torch.nn.functional.cosine_similarity(output, target, dim=-1).mean()

    epochs = 3 if quick else 8
    started = time.perf_counter()
    make_finetune(batches, [], epochs=epochs, lr=1e-4, loss_fn=cosine_loss)(pruned.module)
    recovery_s = time.perf_counter() - started
    pruned.module.eval()
    cos_after = cosines(held_out)
    with torch.inference_mode():
        one_args = tensors(["Pruning removes channels and attention heads from a sentence encoder."])
        ms = interleaved_ms({"unpruned": lambda: base.module(*one_args), "pruned": lambda: pruned.module(*one_args)},
                            seconds=5 if quick else 15)
    result = {
        "heads_per_layer": [12, layer.attention.self.num_attention_heads],
        "ffn_width": [1536, layer.intermediate.dense.out_features],
        "macs_before": report.macs_before, "macs_after": report.macs_after,
        "latency_ms": ms, "speedup": ms["unpruned"] / ms["pruned"],
        "sentences_train": len(train_sentences), "sentences_held_out": len(held_out),
        "recovery": {"epochs": epochs, "lr": 1e-4, "loss": "1 - cosine to the unpruned embedding", "seconds": recovery_s},
        "cosine_mean_before_recovery": float(cos_before.mean()), "cosine_min_before_recovery": float(cos_before.min()),
        "cosine_mean": float(cos_after.mean()), "cosine_min": float(cos_after.min()),
    }
    print(f"minilm: heads 12 -> {result['heads_per_layer'][1]}, FFN 1536 -> {result['ffn_width'][1]}; "
          f"MACs {report.macs_before / 1e6:.1f}M -> {report.macs_after / 1e6:.1f}M; torch latency "
          f"{ms['unpruned']:.2f} -> {ms['pruned']:.2f} ms = {result['speedup']:.2f}x", flush=True)
    print(f"minilm embedding cosine to unpruned on {len(held_out)} held-out sentences: mean "
          f"{result['cosine_mean_before_recovery']:.3f} (min {result['cosine_min_before_recovery']:.3f}) pruned -> "
          f"{result['cosine_mean']:.3f} (min {result['cosine_min']:.3f}) after {epochs} epochs of embedding distillation "
          f"on {len(train_sentences)} other sentences ({recovery_s:.0f} s)", flush=True)
    return result


def bench_mnist1d(quick: bool) -> dict[str, Any]:
    import numpy as np
    import torch

    from modelpress.compress.prune import MacsTarget, PruneConfig, accuracy, make_finetune, prune_
    from modelpress.sources.data import load_data
    from modelpress.testing import Conv1dNet

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    data = load_data("mnist1d")

    def batches(split: Any, size: int, shuffle: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
        order = np.random.default_rng(0).permutation(len(split.y)) if shuffle else np.arange(len(split.y))
        x = torch.from_numpy(np.asarray(split.x, dtype=np.float32)).reshape(len(split.y), 1, -1)[order]
        y = torch.from_numpy(split.y)[order]
        return [(x[i:i + size], y[i:i + size]) for i in range(0, len(y), size)]

    train, test = batches(data.train, 64, True), batches(data.eval_split, 256, False)
    model = Conv1dNet(width=64)
    epochs = 8 if quick else 30
    train_fn = make_finetune(train, test, epochs=1, lr=3e-3)
    for _ in range(epochs):
        base_acc = train_fn(model)
    x = train[0][0][:1]
    pruned = copy.deepcopy(model)
    ft_epochs = 3 if quick else 10
    report = prune_(pruned, PruneConfig(target=MacsTarget(fraction=0.5), importance="l1", round_to=8),
                    example_inputs=x)
    acc_pruned = accuracy(pruned, test)
    tuned = make_finetune(train, test, epochs=1, lr=1e-3)
    best = acc_pruned
    for _ in range(ft_epochs):
        best = max(best, tuned(pruned))
    final = accuracy(pruned, test)
    result = {
        "accuracy_unpruned": base_acc, "accuracy_pruned_no_finetune": acc_pruned, "accuracy_finetuned": final,
        "macs_before": report.macs_before, "macs_after": report.macs_after, "mac_reduction": report.mac_reduction,
        "ratio": report.ratio, "drop_points": 100 * (base_acc - final), "n_test": sum(len(y) for _, y in test),
    }
    print(f"mnist1d Conv1dNet: MACs {report.macs_before / 1e6:.2f}M -> {report.macs_after / 1e6:.2f}M "
          f"({100 * report.mac_reduction:.0f}% fewer, claim >= 50%); accuracy {100 * base_acc:.1f}% -> "
          f"{100 * acc_pruned:.1f}% pruned -> {100 * final:.1f}% after {ft_epochs} fine-tuning epochs "
          f"(drop {result['drop_points']:.1f} points, claim <= 1)", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short smoke run (a zoo subset, fewer epochs)")
    parser.add_argument("--only", default="resnet18,minilm,mnist1d,zoo", help="comma-separated parts to run")
    parser.add_argument("--out", type=Path, default=OUT, help="JSON file to update (default bench-out/prune.json)")
    parser.add_argument("--zoo-one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    if args.zoo_one:
        print(json.dumps(zoo_one(args.zoo_one)), flush=True)
        return 0
    import torch

    torch.set_num_threads(THREADS)
    parts = {"resnet18": bench_resnet18, "minilm": bench_minilm, "mnist1d": bench_mnist1d, "zoo": bench_zoo}
    out: Path = args.out
    results: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    failed = False
    for name in args.only.split(","):
        try:
            results[name] = parts[name](args.quick)
        except Exception as err:  # noqa: BLE001 - report and go on with the other claims
            failed = True
            results[name] = {"error": f"{type(err).__name__}: {err}"}
            print(f"{name}: ERROR {type(err).__name__}: {err}", flush=True)
            traceback.print_exc()
        results["quick"] = args.quick
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(results, indent=2, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
