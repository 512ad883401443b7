"""`modelpress prune`: remove channels, heads or weights, and write an artifact."""

from __future__ import annotations

from pathlib import Path

import typer

from modelpress.cli.common import console, progress_bar, split_list, status, write_json


def prune(
    model: str = typer.Argument(..., help="Model spec: torchvision:NAME, hf:DIR, python:pkg.mod:factory, torch:PATH, an artifact dir."),
    out: Path = typer.Option(..., "--out", "-o", help="Artifact directory to write (model.onnx, checkpoint, manifest, channels.png)."),
    method: str = typer.Option("structured", "--method", help="structured (remove channels/heads), unstructured (zero weights) or 2:4 (CUDA)."),
    ratio: float = typer.Option(None, "--ratio", help="Fraction of channels (or FFN width) to remove, in [0, 1). Default 0.5."),
    macs_fraction: float = typer.Option(None, "--macs-fraction", help="Target: keep at most this fraction of the MACs (searches the ratio)."),
    max_macs: float = typer.Option(None, "--max-macs", help="Target: at most this many MACs per sample (searches the ratio)."),
    latency_ms: float = typer.Option(None, "--latency-ms", help="Target: measured latency at batch 1 in ms on --latency-backend (searches the ratio)."),
    latency_backend: str = typer.Option("torch", "--latency-backend", help="Where --latency-ms is measured: torch (eager), onnxruntime or openvino (each candidate exported to ONNX and timed there)."),
    importance: str = typer.Option("l1", "--importance", help="l1, l2, bn-gamma, taylor (needs --data) or random."),
    scope: str = typer.Option("per-layer", "--scope", help="Rank channels per-layer or global."),
    round_to: str = typer.Option(None, "--round-to", help="Keep channel counts a multiple of N (e.g. 8), or auto."),
    head_ratio: float = typer.Option(0.0, "--head-ratio", help="Fraction of attention heads to remove (BERT-style encoders)."),
    ignore: str = typer.Option(None, "--ignore", help="Comma-separated module names never pruned (e.g. features.0,fc)."),
    steps: int = typer.Option(1, "--steps", help="Prune in N steps, fine-tuning between them."),
    sparsity: float = typer.Option(None, "--sparsity", help="With --method unstructured: fraction of weights zeroed."),
    data: str = typer.Option(None, "--data", help="Labelled data (digits, mnist1d, npz:PATH, ...) for Taylor, accuracy and fine-tuning."),
    finetune_epochs: int = typer.Option(0, "--finetune-epochs", help="Epochs of fine-tuning after each step (needs --data)."),
    threads: int = typer.Option(2, "--threads", help="CPU threads for pruning, latency search and fine-tuning."),
    json_out: str = typer.Option(None, "--json", help="Write the prune report as JSON to FILE (- for stdout)."),
) -> None:
    """Prune a model (channels, FFN width, attention heads, or weights) and write an artifact.

    Example:

        modelpress prune torchvision:resnet18 --ratio 0.5 --round-to 8 --out artifacts/resnet18-p50

        modelpress prune torchvision:resnet18 --latency-ms 8 --latency-backend onnxruntime --out artifacts/r18-8ms
    """
    import tempfile

    import torch

    from modelpress.artifact import write_artifact
    from modelpress.compress.prune import (
        PruneConfig,
        SemiStructuredConfig,
        UnstructuredPruneConfig,
        plot_channels,
        prune_model,
    )
    from modelpress.errors import ConfigError
    from modelpress.export.onnx import export_onnx
    from modelpress.sources.data import load_data
    from modelpress.sources.models import load_model

    torch.set_num_threads(threads)
    method = split_list(method, option="--method", allowed=("structured", "unstructured", "2:4"))[0]
    ignored = tuple(split_list(ignore, option="--ignore")) if ignore else ()
    if method == "unstructured":
        if sparsity is None:
            raise ConfigError("--method unstructured needs --sparsity (fraction of weights zeroed, e.g. 0.8)")
        config = UnstructuredPruneConfig(sparsity=sparsity, ignore=ignored)
    elif method == "2:4":
        config = SemiStructuredConfig(ignore=ignored)
    else:
        targets = [t for t in (ratio, macs_fraction, max_macs, latency_ms) if t is not None]
        if len(targets) > 1:
            raise ConfigError("give one target: --ratio, --macs-fraction, --max-macs or --latency-ms")
        target = None
        if macs_fraction is not None or max_macs is not None:
            target = {"kind": "macs", "fraction": macs_fraction, "max_macs": max_macs}
        elif latency_ms is not None:
            target = {"kind": "latency", "max_ms": latency_ms, "threads": threads, "backend": latency_backend}
        rounded: int | str | None = None
        if round_to is not None:
            rounded = round_to if round_to == "auto" else _positive_int(round_to, "--round-to")
        config = PruneConfig(
            ratio=ratio, target=target, importance=importance.replace("-", "_"), scope=scope.replace("-", "_"),
            round_to=rounded, head_ratio=head_ratio, ignore=ignored, steps=steps,
        )
    with status(f"loading {model}"):
        handle = load_model(model)
        dataset = load_data(data) if data else None
    total = config.steps if isinstance(config, PruneConfig) else 1
    with progress_bar(f"pruning {model}", total=total) as advance:
        done = 0

        def on_step(line: str) -> None:
            nonlocal done
            if line.startswith("step "):
                done += 1
                advance(done / total)

        pruned, report = prune_model(handle, config, data=dataset, finetune_epochs=finetune_epochs, progress=on_step)
    with tempfile.TemporaryDirectory() as tmp, status("exporting the pruned model to ONNX"):
        exported = export_onnx(pruned, Path(tmp) / "model.onnx")
        extra = {}
        if report.layers:
            extra["channels.png"] = plot_channels(report, Path(tmp) / "channels.png", title=f"{model}: channels kept")
        manifest = {
            "stage": "prune",
            "parent": handle.spec,
            "prune": {"config": config.model_dump(mode="json"), "report": _summary(report)},
            "export": exported.to_json(),
        }
        write_artifact(out, handle=pruned.with_onnx(exported.path), manifest=manifest, extra_files=extra)
    if json_out:
        write_json({**report.to_dict(), "artifact": str(out)}, json_out)
    _print(report, model, out)


def _positive_int(text: str, option: str) -> int:
    from modelpress.errors import ConfigError

    try:
        value = int(text)
    except ValueError as err:
        raise ConfigError(f"{option} must be a positive integer such as 8, or auto; got {text!r}") from err
    if value < 1:
        raise ConfigError(f"{option} must be a positive integer such as 8, or auto; got {text!r}")
    return value


def _summary(report) -> dict:  # noqa: ANN001 - PruneReport, imported lazily
    data = report.to_dict()
    data.pop("attrs", None)  # already in the checkpoint's architecture.json
    return data


def _print(report, model: str, out: Path) -> None:  # noqa: ANN001
    if report.method == "unstructured":
        s = report.sparsity
        console.print(
            f"[green]pruned[/green] {model} -> {out}: {100 * s.sparsity:.1f}% of weights zero; "
            f"{s.dense_bytes / 1e6:.2f} MB dense, {s.compressed_bytes / 1e6:.2f} MB compressed "
            "(saves storage, not CPU time)"
        )
        return
    if report.method == "semi_structured_2_4":
        console.print(f"[green]pruned[/green] {model} -> {out}: 2:4 sparsity on {len(report.converted_layers)} Linear layers")
        return
    line = (
        f"[green]pruned[/green] {model} -> {out}: ratio {report.ratio:.3f}, "
        f"MACs {report.macs_before / 1e6:.1f}M -> {report.macs_after / 1e6:.1f}M ({100 * report.mac_reduction:.0f}% fewer), "
        f"params {report.params_before / 1e6:.2f}M -> {report.params_after / 1e6:.2f}M"
    )
    if report.latency_ms_after is not None:
        backend = report.latency_backend or "torch"
        line += f", {backend} latency {report.latency_ms_before:.2f} -> {report.latency_ms_after:.2f} ms"
    if report.steps and report.steps[-1].metric_finetuned is not None:
        line += f", accuracy after fine-tuning {report.steps[-1].metric_finetuned:.3f}"
    elif report.steps and report.steps[-1].metric_pruned is not None:
        line += f", accuracy {report.steps[-1].metric_pruned:.3f}"
    console.print(line)


def register(app: typer.Typer) -> None:
    app.command("prune")(prune)
