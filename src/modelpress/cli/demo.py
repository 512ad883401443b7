"""`modelpress demo`: the main job on built-in data, in about a minute on 2 cores."""

from __future__ import annotations

import tempfile
from pathlib import Path

import typer

from modelpress.cli.common import console, progress_bar, status


def _train_digits(seed: int, epochs: int):  # noqa: ANN202 - returns (handle, dataset)
    """Train DigitsNet on the digits train split (a plain loop: seconds)."""
    import torch

    from modelpress.sources.data import iter_batches, load_data
    from modelpress.sources.models import load_model

    torch.manual_seed(seed)
    data = load_data("digits", seed=seed)
    handle = load_model("python:modelpress.testing:DigitsNet")
    model = handle.module
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    with progress_bar(f"training DigitsNet on digits ({epochs} epochs)") as progress:
        for epoch in range(epochs):
            model.train()
            for x, y in iter_batches(data.train, 64, shuffle=True, seed=seed + epoch):
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
                loss.backward()
                optimizer.step()
            progress((epoch + 1) / epochs)
    model.eval()
    return handle, data


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Where to write the artifact and results."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    epochs: int = typer.Option(15, "--epochs", help="Training epochs."),
    max_seconds: float = typer.Option(20.0, "--max-seconds", help="Time budget for the benchmark."),
) -> None:
    """Train a small CNN on scikit-learn's digits, export it to ONNX, check it, and bench it.

    Measures accuracy on the held-out test split with PyTorch, ONNX Runtime and
    OpenVINO, then latency side by side on all three.

    Example:

        modelpress demo --out runs/demo
    """
    from rich.table import Table

    from modelpress.artifact import write_artifact
    from modelpress.bench.measure import BenchConfig, BenchEntry, bench
    from modelpress.bench.report import bench_table, write_json
    from modelpress.export.onnx import export_onnx
    from modelpress.runtime import RuntimeOptions, available_backends, load_session
    from modelpress.runtime.evaluate import evaluate

    handle, data = _train_digits(seed, epochs)
    with tempfile.TemporaryDirectory() as tmp, status("exporting to ONNX and checking against torch"):
        report = export_onnx(handle, Path(tmp) / "model.onnx")
        artifact = write_artifact(out / "digits-cnn", handle=handle.with_onnx(report.path), manifest={"stage": "demo", "data": data.spec, "data_hash": data.content_hash, "export": report.to_json()})
    handle = handle.with_onnx(artifact / "model.onnx")
    backends = [b for b in ("torch", "onnxruntime", "openvino") if b in available_backends()]
    quality = Table(title=f"accuracy on the digits test split ({len(data.eval_split)} images)")
    quality.add_column("backend")
    quality.add_column("accuracy", justify="right")
    for backend in backends:
        session = load_session(handle, backend, RuntimeOptions(threads=2))
        q = evaluate(session, handle, data.eval_split)
        quality.add_row(backend, f"{q.value * 100:.2f}%")
    console.print(f"exported: {artifact}/model.onnx (max abs error vs torch {report.max_abs_error:.2e})")
    console.print(quality)
    with progress_bar("benchmarking") as progress:
        result = bench([BenchEntry("digits-cnn", handle)], backends, BenchConfig(batch_sizes=(1, 32), max_seconds=max_seconds), progress=progress)
    console.print(bench_table(result, baseline=("digits-cnn", "torch")))
    write_json(result, out / "bench.json")
    console.print(f"artifact: {artifact}   bench JSON: {out / 'bench.json'}")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
