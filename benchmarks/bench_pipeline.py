"""Benchmark the pipeline: the mnist1d mobile preset end to end, and a search, local pool vs Ray.

Usage: python benchmarks/bench_pipeline.py [--quick] [--no-ray]
Prints one line per measured claim and writes bench-out/pipeline.json.

Claims (issue 6):
- mnist1d mobile preset: accuracy drop <= 1 point, >= 5x faster on ONNX Runtime than
  PyTorch FP32 eager (batch 1, 2 threads, measured side by side), >= 4x smaller; wall time.
- a search over >= 8 configurations: the Pareto front, and local pool vs Ray wall time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

RECIPE = """\
name: bench-mnist1d-mobile
model: python:modelpress.testing:Conv1dNet?width=64
data: mnist1d
pretrain: {{epochs: {epochs}, batch_size: 128, optimizer: {{kind: adamw, lr: 0.003}}}}
preset: mobile
stages:
  - {{kind: finetune, epochs: {ft}, batch_size: 128, optimizer: {{kind: adamw, lr: 0.003}}}}
target: {{backend: onnxruntime, threads: 2, batch: 1}}
budget: {{max_accuracy_drop: 0.01}}
gate: {{max_rounds: 2, bench_seconds: {bench}}}
search: {{prune_ratios: [0, 0.25, 0.5, 0.75], quantize: [none, static], finetune_epochs: {search_ft}, workers: 2}}
"""


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer epochs, shorter timing")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray search")
    parser.add_argument("--no-search", action="store_true", help="only the mobile preset run")
    args = parser.parse_args()

    from modelpress.pipeline.recipe import recipe_from_text
    from modelpress.pipeline.run import run_recipe
    from modelpress.pipeline.search import run_search

    epochs, ft, search_ft, bench = (6, 2, 0, 3) if args.quick else (30, 8, 2, 8)
    recipe = recipe_from_text(RECIPE.format(epochs=epochs, ft=ft, search_ft=search_ft, bench=bench), source="bench recipe")
    out: dict[str, object] = {"quick": args.quick}
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        result = run_recipe(recipe, work_dir=Path(tmp) / "mobile", write_report=True, progress=lambda m: print(f"  .. {m}", file=sys.stderr))
        wall = time.perf_counter() - started
        rnd = result.rounds[result.best] if result.best is not None else result.rounds[-1]
        v = rnd.verdict
        if v is None:
            print(f"mnist1d mobile preset: FAILED ({rnd.error}) wall {wall:.0f}s")
            out["mobile"] = {"error": rnd.error, "wall_s": wall}
        else:
            ok = lambda c: "PASS" if c else "FAIL"  # noqa: E731
            print(f"mnist1d mobile: float {result.baseline.value * 100:.2f}% -> artifact {rnd.candidate.value * 100:.2f}% on onnxruntime: "
                  f"drop {v.accuracy_drop * 100:.2f} pts (claim <= 1.00) {ok(v.accuracy_drop <= 0.01 + 1e-9)}")
            print(f"mnist1d mobile: speedup vs PyTorch FP32 eager {v.speedup_vs_torch:.2f}x (claim >= 5x) {ok((v.speedup_vs_torch or 0) >= 5)}; "
                  f"vs float ONNX Runtime {v.speedup:.2f}x (p50 {rnd.candidate.p50_ms:.4f} ms vs {result.baseline.p50_ms:.4f} ms vs torch {result.torch_latency['p50_ms']:.4f} ms)")
            print(f"mnist1d mobile: {v.size_ratio:.2f}x smaller model.onnx ({result.baseline.size_mb * 1024:.1f} KiB -> {rnd.candidate.size_mb * 1024:.1f} KiB) "
                  f"(claim >= 4x) {ok(v.size_ratio >= 4)}")
            print(f"mnist1d mobile: whole run (train, prune, fine-tune, INT8, gate x{len(result.rounds)}, report) wall {wall:.0f}s; verdict: {result.verdict}")
            out["mobile"] = {"baseline": result.baseline.value, "artifact": rnd.candidate.value, "accuracy_drop": v.accuracy_drop, "speedup_vs_torch": v.speedup_vs_torch,
                             "speedup_vs_float": v.speedup, "size_ratio": v.size_ratio, "wall_s": wall, "rounds": len(result.rounds), "passed": result.passed}
        if not args.no_search:
            engines = ["local"] + ([] if args.no_ray else ["ray"])
            for engine in engines:
                started = time.perf_counter()
                found = run_search(recipe, work_dir=Path(tmp) / f"search-{engine}", ray_address="local" if engine == "ray" else None,
                                   bench_seconds=bench * 2, progress=lambda m: print(f"  .. {m}", file=sys.stderr))
                wall = time.perf_counter() - started
                ok_trials = [t for t in found.trials if t.error is None]
                front = ", ".join(f"{t.name} ({t.metric * 100:.1f}%, {t.latency_ms:.4f} ms, {t.size_mb * 1024:.1f} KiB)" for t in found.front)
                print(f"search ({engine}): {len(ok_trials)}/{len(found.trials)} configurations, trials {found.extras['trials_s']:.0f}s, wall {wall:.0f}s; Pareto front: {front}")
                out[f"search_{engine}"] = {**found.to_json(), "wall_s": wall, "trials_s": found.extras["trials_s"]}
            if "search_ray" in out:
                a, b = out["search_local"]["trials_s"], out["search_ray"]["trials_s"]  # type: ignore[index]
                print(f"search: Ray / local pool trial wall time {b / a:.2f}x ({b:.0f}s vs {a:.0f}s, both 2 workers on this machine)")
    path = Path("bench-out/pipeline.json")
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
