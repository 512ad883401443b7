"""`modelpress bench`: models × backends × batch sizes, side by side in one run."""

from __future__ import annotations

from pathlib import Path

import typer

from modelpress.cli.common import console, int_list, progress_bar, split_list, status


def bench(
    models: list[str] = typer.Argument(..., help="Model specs or artifact directories to measure."),
    backend: str = typer.Option("onnxruntime,openvino,torch", "--backend", "-b", help="Comma-separated backends."),
    batch: str = typer.Option("1", "--batch", help="Comma-separated batch sizes, e.g. 1,8."),
    threads: int = typer.Option(2, "--threads", help="Intra-op threads per backend."),
    seq_len: int = typer.Option(128, "--seq-len", help="Sequence length for text models."),
    max_seconds: float = typer.Option(60.0, "--max-seconds", help="Time budget for the timed rounds."),
    target_ci: float = typer.Option(0.02, "--target-ci", help="Stop when every median's 95% CI half-width is within this share of it."),
    json_out: Path = typer.Option(None, "--json", help="Write the results as JSON to FILE."),
    plot_out: Path = typer.Option(None, "--plot", help="Write a PNG plot of latencies to FILE."),
) -> None:
    """Measure latency (p50/p90/p99 with a 95% CI), throughput, memory, size, params and MACs.

    Cases are timed round-robin so machine drift hits all alike. The first
    model on the first backend is the speedup baseline.

    Example:

        modelpress bench torchvision:resnet18 artifacts/resnet18-int8 --backend onnxruntime,torch --batch 1,8
    """
    from modelpress.bench.measure import BenchConfig, BenchEntry
    from modelpress.bench.measure import bench as run_bench
    from modelpress.bench.report import bench_table, plot, write_json
    from modelpress.export.onnx import export_onnx
    from modelpress.runtime import BACKENDS
    from modelpress.sources.models import load_model

    backends = split_list(backend, option="--backend", allowed=tuple(BACKENDS))
    config = BenchConfig(batch_sizes=int_list(batch, option="--batch"), threads=threads, seq_len=seq_len, max_seconds=max_seconds, target_rel_ci=target_ci)
    entries = []
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for i, spec in enumerate(models):
            with status(f"loading {spec}"):
                handle = load_model(spec)
                if handle.onnx_path is None and any(b != "torch" for b in backends):
                    handle = handle.with_onnx(export_onnx(handle, Path(tmp) / f"m{i}.onnx").path)
            entries.append(BenchEntry(Path(spec).name if Path(spec).is_dir() else spec, handle))
        with progress_bar("measuring") as progress:
            result = run_bench(entries, backends, config, progress=progress)
    console.print(bench_table(result, baseline=(entries[0].label, backends[0])))
    if json_out:
        write_json(result, json_out)
        console.print(f"JSON: {json_out}")
    if plot_out:
        plot(result, plot_out)
        console.print(f"plot: {plot_out}")


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
