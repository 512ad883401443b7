"""Serving benchmark: served vs in-process throughput, batching on vs off, batcher overhead, errors.

Server (a `modelpress serve` subprocess) and load generator (this process)
share the machine, so the claims are ratios measured side by side in one run.
Prints one line per claim and writes bench-out/serve.json.

    python benchmarks/bench_serve.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from modelpress.serve.testing import ServerProcess
    from modelpress.sources.models import ModelHandle

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench-out"
MODELS = OUT / "serve-models"


def log(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- models


def _artifact(name: str, what: str, build: Callable[[Path], tuple[ModelHandle, Path]]) -> Path:
    """Return the model dir of artifact ``name``, built once by ``build(tmp) -> (handle, onnx file)`` and then reused."""
    from modelpress.artifact import write_artifact

    model_dir = MODELS / name
    if (model_dir / name / "manifest.json").is_file():
        return model_dir
    log(f"building {what}")
    with tempfile.TemporaryDirectory() as tmp:
        handle, onnx_path = build(Path(tmp))
        handle.module = None
        write_artifact(model_dir / name, handle=handle.with_onnx(onnx_path), manifest={"benchmark": "bench_serve"})
    return model_dir


def resnet18_int8() -> Path:
    """Export torchvision resnet18 (random weights) and quantize it statically (QDQ, per-channel, QUInt8)."""

    def build(tmp: Path) -> tuple[ModelHandle, Path]:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        from modelpress.export.onnx import export_onnx
        from modelpress.sources.models import load_model

        handle = load_model("torchvision:resnet18")
        fp32 = export_onnx(handle, tmp / "fp32.onnx").path
        pre = tmp / "pre.onnx"
        quant_pre_process(str(fp32), str(pre))
        rng = np.random.default_rng(0)

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.batches = iter([{"input": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)} for _ in range(16)])

            def get_next(self):
                return next(self.batches, None)

        q = tmp / "int8.onnx"
        quantize_static(
            str(pre), str(q), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        )
        handle.precision = "int8"
        return handle, q

    return _artifact("resnet18", "resnet18 INT8 (export + quant_pre_process + quantize_static)", build)


def mnist1d_cnn() -> Path:
    """Export the small mnist1d Conv1dNet (random weights is fine for speed)."""

    def build(tmp: Path) -> tuple[ModelHandle, Path]:
        from modelpress.export.onnx import export_onnx
        from modelpress.sources.models import ModelHandle, TensorSpec
        from modelpress.testing import Conv1dNet

        handle = ModelHandle("python:modelpress.testing:Conv1dNet", (TensorSpec("input", ("batch", 1, 40), "float32"),), ("logits",), "classification", Conv1dNet().eval())
        return handle, export_onnx(handle, tmp / "m.onnx").path

    return _artifact("mnist1d", "mnist1d CNN", build)


def minilm() -> Path:
    """Export the bundled all-MiniLM-L6-v2 sentence encoder (FP32)."""

    def build(tmp: Path) -> tuple[ModelHandle, Path]:
        from modelpress.export.onnx import export_onnx
        from modelpress.sources.models import load_model

        handle = load_model("hf:minilm")
        return handle, export_onnx(handle, tmp / "m.onnx").path

    return _artifact("minilm", "MiniLM", build)


# ---------------------------------------------------------------- measuring


class InProcess:
    """Session.run at batch 1 and 8 with 2 threads, in this process (no server, no HTTP)."""

    def __init__(self, model_dir: Path, name: str) -> None:
        from modelpress.artifact import load_artifact
        from modelpress.runtime import load_session
        from modelpress.runtime.base import RuntimeOptions

        handle = load_artifact(model_dir / name, with_module=False)
        self.session = load_session(handle, "onnxruntime", RuntimeOptions(threads=2))
        self.inputs = {b: handle.example_inputs(b) for b in (1, 8)}
        self.rows = {1: 0, 8: 0}
        self.seconds = {1: 0.0, 8: 0.0}
        for x in self.inputs.values():
            for _ in range(3):
                self.session.run(x)

    def measure(self, seconds: float) -> None:
        """Run each batch size for ``seconds / 2`` and add to the totals."""
        for batch, x in self.inputs.items():
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < seconds / 2:
                self.session.run(x)
                self.rows[batch] += batch
            self.seconds[batch] += time.perf_counter() - t0

    def throughput(self) -> dict[str, float]:
        """Return rows per second per batch size."""
        return {f"batch{b}": self.rows[b] / self.seconds[b] for b in self.rows}


def server(model_dir: Path, *flags: str) -> ServerProcess:
    """Return `modelpress serve` on ``model_dir`` in a subprocess (2 threads, no access log), not started yet."""
    from modelpress.serve.testing import ServerProcess

    return ServerProcess("--model-dir", str(model_dir), "--threads", "2", "--no-access-log", *flags)


def load(url: str, model: str, *, concurrency: int = 32, duration: float, warmup: float = 1.0, seq_len=(16, 16), malformed: float = 0.0):
    from modelpress.serve.loadtest import LoadConfig, run_load

    cfg = LoadConfig(url=url, model=model, concurrency=concurrency, duration_s=duration, warmup_s=warmup, payload="binary",
                     seq_len=seq_len, malformed_share=malformed)
    return asyncio.run(run_load(cfg))


def interleaved(model_dir: Path, model: str, variants: dict[str, list[str]], *, rounds: int, seconds: float, between=None, **kw):
    """Load each server variant in turn, ``rounds`` times, so machine drift hits all alike; merge per variant."""
    from modelpress.serve.loadtest import LoadReport

    servers = {label: server(model_dir, *flags) for label, flags in variants.items()}
    parts: dict[str, list] = {label: [] for label in variants}
    try:
        for srv in servers.values():  # all load their models at once, then each is waited for
            srv.start()
        for srv in servers.values():
            srv.wait_ready()
        for r in range(rounds):
            if between is not None:
                between(seconds)
            for label, srv in servers.items():
                parts[label].append(load(srv.url, model, duration=seconds, warmup=1.0 if r == 0 else 0.3, **kw))
    finally:
        for srv in servers.values():
            srv.stop()
    merged = {label: LoadReport.merge(p) for label, p in parts.items()}
    for label, rep in merged.items():
        log(f"{model} {label}: {rep.summary()}")
    return merged


def batcher_overhead(model_dir: Path, name: str, n: int) -> dict[str, float]:
    """p50 of a direct Session.run vs the same call through the batcher (concurrency 1, in-process)."""
    from modelpress.serve.batcher import BatchPolicy, DynamicBatcher
    from modelpress.serve.server import load_runners
    from modelpress.serve.config import ServeConfig

    runner = load_runners(ServeConfig.parse({"model_dir": str(model_dir), "default_model": {"threads": 1}}))[0]
    x = runner.example_inputs(1)

    async def go():
        b = DynamicBatcher(runner.run, BatchPolicy(max_batch_size=8), pad=runner.pad_specs())
        b.start()
        direct, batched = [], []
        for _ in range(50):
            runner.run_sync(x)
            await b.submit(x)
        for _ in range(n):
            t0 = time.perf_counter()
            runner.run_sync(x)
            t1 = time.perf_counter()
            await b.submit(x)
            t2 = time.perf_counter()
            direct.append(t1 - t0)
            batched.append(t2 - t1)
        await b.close()
        return float(np.median(direct)) * 1000, float(np.median(batched)) * 1000

    d, b = asyncio.run(go())
    runner.close()
    return {"direct_p50_ms": d, "batcher_p50_ms": b, "overhead_ms": b - d}


def metrics_cost_us(n: int = 20000) -> float:
    """Microseconds the metrics add to one request (counter + 4 histograms)."""
    from modelpress.serve.metrics import ServerMetrics

    vm = ServerMetrics().for_version("m", "1", depth=lambda: 0, in_flight=lambda: 0)
    t0 = time.perf_counter()
    for _ in range(n):
        vm.request(200)
        vm.queue.observe(0.001)
        vm.compute.observe(0.005)
        vm.total.observe(0.006)
        vm.on_batch(4, 4)
    return (time.perf_counter() - t0) / n * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs (smoke test, numbers are noisy)")
    args = parser.parse_args()
    q = args.quick
    long_s, mid_s, sat_s = (4.0, 3.0, 4.0) if q else (30.0, 15.0, 60.0)
    MODELS.mkdir(parents=True, exist_ok=True)
    results: dict[str, object] = {"quick": q}
    lines: list[str] = []

    def claim(text: str) -> None:
        lines.append(text)
        print(text, flush=True)

    rn, m1, ml = resnet18_int8(), mnist1d_cnn(), minilm()
    rounds = 1 if q else 3

    # 1. the limit is the model: served throughput vs the best in-process throughput,
    #    and batching on vs off; in-process and both servers take turns each round
    inproc = InProcess(rn, "resnet18")
    rs = interleaved(rn, "resnet18", {"batching": ["--max-batch-size", "8"], "off": ["--no-batching"]},
                     rounds=rounds, seconds=long_s / rounds, between=inproc.measure)
    ip = inproc.throughput()
    best_ip = max(ip.values())
    on, off = rs["batching"], rs["off"]
    ratio = on.throughput_rps / best_ip
    results["resnet18"] = {"in_process": ip, "batching": on.as_dict(), "no_batching": off.as_dict()}
    claim(f"resnet18 INT8 served/in-process throughput: {on.throughput_rps:.1f} / {best_ip:.1f} img/s = {ratio:.2f} (goal >= 0.80; in-process batch1 {ip['batch1']:.1f}, batch8 {ip['batch8']:.1f} img/s)")
    claim(
        f"resnet18 batching on/off c=32: {on.throughput_rps / off.throughput_rps:.2f}x throughput, "
        f"p99 {on.p99_ms:.1f} vs {off.p99_ms:.1f} ms (goal >= 1.1x, p99 not worse)"
    )

    # 2. batching on vs off: small CNN (per-call overhead dominates)
    ms = interleaved(m1, "mnist1d", {"batching": ["--max-batch-size", "32"], "off": ["--no-batching"]}, rounds=rounds, seconds=mid_s / rounds)
    on1, off1 = ms["batching"], ms["off"]
    results["mnist1d"] = {"batching": on1.as_dict(), "no_batching": off1.as_dict()}
    claim(
        f"mnist1d CNN batching on/off c=32: {on1.throughput_rps / off1.throughput_rps:.2f}x throughput "
        f"({on1.throughput_rps:.0f} vs {off1.throughput_rps:.0f} req/s), p99 {on1.p99_ms:.1f} vs {off1.p99_ms:.1f} ms"
    )

    # 3. MiniLM with mixed sentence lengths: padding decides
    mixed = (8, 96)
    variants = {
        "pad": ["--max-batch-size", "8", "--padding", "pad"],
        "bucket": ["--max-batch-size", "8", "--padding", "bucket"],
        "off": ["--no-batching"],
    }
    mm = interleaved(ml, "minilm", variants, rounds=rounds, seconds=mid_s / rounds, seq_len=mixed)
    pad, bucket, offm = mm["pad"], mm["bucket"], mm["off"]
    results["minilm"] = {"pad": pad.as_dict(), "bucket": bucket.as_dict(), "no_batching": offm.as_dict()}
    best = max((pad, "pad"), (bucket, "bucket"), key=lambda t: t[0].throughput_rps)
    claim(
        f"MiniLM lengths {mixed[0]}-{mixed[1]} batching on/off c=32: pad {pad.throughput_rps / offm.throughput_rps:.2f}x, "
        f"bucket {bucket.throughput_rps / offm.throughput_rps:.2f}x ({best[1]} p99 {best[0].p99_ms:.0f} vs {offm.p99_ms:.0f} ms off)"
    )

    # 4. batcher overhead at concurrency 1
    ov = batcher_overhead(m1, "mnist1d", 300 if q else 3000)
    results["batcher_overhead"] = ov
    claim(f"batcher overhead at c=1 (mnist1d, in-process): p50 {ov['batcher_p50_ms']:.3f} vs direct {ov['direct_p50_ms']:.3f} ms = +{ov['overhead_ms']:.3f} ms (goal <= 0.3)")

    # 5. metrics cost
    cost = metrics_cost_us()
    per_request_us = 1e6 / on1.throughput_rps if on1.throughput_rps else float("nan")
    results["metrics_cost_us"] = cost
    claim(f"metrics cost: {cost:.1f} us per request = {cost / per_request_us * 100:.1f}% of the server's time per request at mnist1d saturation ({per_request_us:.0f} us)")

    # 6. errors at saturation and under 10% malformed traffic
    sat = interleaved(rn, "resnet18", {"sat": ["--max-batch-size", "8"]}, rounds=1, seconds=sat_s, concurrency=64)["sat"]
    bad = interleaved(m1, "mnist1d", {"malformed": ["--max-batch-size", "32"]}, rounds=1, seconds=mid_s, malformed=0.1)["malformed"]
    results["saturation"] = sat.as_dict()
    results["malformed"] = bad.as_dict()
    claim(f"saturation resnet18 c=64 for {sat_s:.0f} s: {sat.errors} errors of {sat.requests} requests, status {json.dumps(sat.status_counts)}")
    claim(
        f"10% malformed mnist1d c=32 for {mid_s:.0f} s: {bad.errors} errors, {bad.malformed_rejected}/{bad.malformed_sent} malformed answered 4xx, "
        f"{bad.throughput_rps:.0f} good req/s ({bad.throughput_rps / on1.throughput_rps:.2f} of clean)"
    )
    results["lines"] = lines
    OUT.mkdir(exist_ok=True)
    (OUT / "serve.json").write_text(json.dumps(results, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
