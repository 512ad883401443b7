"""Foundation benchmark: resnet18 and mobilenet_v2 on every backend, batch 1 and 8, 2 threads.

Prints the bench table and writes bench-out/foundation.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    from rich.console import Console

    from modelpress.bench.measure import BenchConfig, BenchEntry, bench
    from modelpress.bench.report import bench_table, write_json
    from modelpress.export.onnx import export_onnx
    from modelpress.runtime import available_backends
    from modelpress.sources.models import load_model

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short budget, batch 1 only")
    args = parser.parse_args()
    backends = [b for b in ("torch", "onnxruntime", "openvino") if b in available_backends()]
    entries = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("resnet18", "mobilenet_v2"):
            handle = load_model(f"torchvision:{name}")
            handle = handle.with_onnx(export_onnx(handle, Path(tmp) / f"{name}.onnx").path)
            entries.append(BenchEntry(name, handle))
        config = BenchConfig(batch_sizes=(1,) if args.quick else (1, 8), threads=2, max_seconds=20 if args.quick else 240)
        result = bench(entries, backends, config)
    console = Console(width=170)
    console.print(bench_table(result, baseline=("resnet18", "torch")))
    for entry in entries:
        for batch in config.batch_sizes:
            torch_ms = result.case(entry.label, "torch", batch).latency.p50_ms
            for backend in backends[1:]:
                case = result.case(entry.label, backend, batch)
                print(f"{entry.label} batch {batch}: {backend} p50 {case.latency.p50_ms:.2f} ms vs torch {torch_ms:.2f} ms -> {torch_ms / case.latency.p50_ms:.2f}x")
    write_json(result, Path("bench-out/foundation.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
