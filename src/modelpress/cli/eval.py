"""`modelpress eval MODEL --data SPEC`: score a model or artifact on a backend."""

from __future__ import annotations

import typer

from modelpress.cli.common import console, write_json


def eval_command(
    model: str = typer.Argument(..., help="Model spec or artifact directory."),
    data: str = typer.Option(..., "--data", "-d", help="Data spec: digits, mnist1d, npz:PATH, ..."),
    backend: str = typer.Option("onnxruntime", "--backend", "-b", help="onnxruntime, openvino, torch or tensorrt."),
    threads: int = typer.Option(2, "--threads", help="Intra-op threads."),
    reference: str = typer.Option(None, "--reference", help="Model to compare with (agreement / cosine) when data has no labels."),
    samples: int = typer.Option(None, "--samples", help="Score only the first N rows of the evaluation split."),
    seed: int = typer.Option(0, "--seed", help="Data split seed."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Measure a model's quality on the held-out split with one backend.

    Labelled data gives accuracy; unlabelled data gives agreement with
    --reference; embedding models give cosine similarity to --reference.

    Example:

        modelpress eval runs/mnist1d-mobile/artifact --data mnist1d --backend onnxruntime
    """
    import tempfile
    from pathlib import Path

    from modelpress.pipeline.stages import ensure_onnx
    from modelpress.runtime import RuntimeOptions, load_session
    from modelpress.runtime.evaluate import evaluate, predict
    from modelpress.sources.data import load_data
    from modelpress.sources.models import load_model

    dataset = load_data(data, seed=seed)
    split = dataset.eval_split
    if samples:
        split = split.take(slice(0, samples))
    options = RuntimeOptions(threads=threads)
    with tempfile.TemporaryDirectory() as tmp:
        handle = load_model(model)
        if backend != "torch":
            handle = ensure_onnx(handle, Path(tmp) / "model.onnx")
        ref = None
        if reference:
            ref_handle = ensure_onnx(load_model(reference), Path(tmp) / "reference.onnx") if backend != "torch" else load_model(reference)
            ref = predict(load_session(ref_handle, backend, options), ref_handle, split.x)
        report = evaluate(load_session(handle, backend, options), handle, split, reference=ref)
    if json_out:
        write_json({"model": model, "data": data, **report.to_json()}, "-")
    else:
        console.print(f"{report.metric} {report.value * 100:.2f}% on {report.samples} samples ({report.backend}, {model})")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
