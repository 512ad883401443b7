"""`modelpress finetune`: fine-tune a model on labelled data and write an artifact."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from modelpress.cli.common import console, err_console, status, write_json
from modelpress.errors import ConfigError

if TYPE_CHECKING:
    from modelpress.sources.data import Dataset
    from modelpress.sources.models import ModelHandle
    from modelpress.train.finetune import FinetuneConfig, FinetuneReport, ProgressEvent


def read_config_file(path: Path | None) -> dict[str, Any]:
    """Read a JSON or YAML config file into a dict (empty when ``path`` is None)."""
    if path is None:
        return {}
    if not path.is_file():
        raise ConfigError(f"--config: no such file {path}")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as err:  # yaml and json raise different types
        raise ConfigError(f"--config: {path} is not valid {path.suffix.lstrip('.') or 'JSON'}: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"--config: {path} must hold a mapping of config fields; got {type(data).__name__}")
    return data


def parse_freeze(value: str | None) -> dict[str, Any] | None:
    """Turn ``none``, ``head``, ``head:fc``, ``last-n:2`` or ``pattern:GLOB,GLOB`` into a freeze config dict."""
    if value is None:
        return None
    kind, _, arg = value.partition(":")
    if kind == "none":
        return {"kind": "none"}
    if kind == "head":
        return {"kind": "head", "head": arg or None}
    if kind == "last-n":
        try:
            return {"kind": "last_n", "n": int(arg)}
        except ValueError as err:
            raise ConfigError(f"--freeze last-n:N needs an integer N; got {value!r}") from err
    if kind == "pattern" and arg:
        return {"kind": "pattern", "patterns": [p for p in arg.split(",") if p]}
    raise ConfigError(f"--freeze must be none, head[:MODULE], last-n:N or pattern:GLOB[,GLOB]; got {value!r}")


def build_finetune_config(base: dict[str, Any], flags: dict[str, Any]) -> FinetuneConfig:
    """Merge flags (those not None) over a config dict and validate it."""
    from pydantic import ValidationError

    from modelpress.train.finetune import FinetuneConfig, config_error

    data = dict(base)
    optimizer = dict(data.get("optimizer") or {})
    schedule = dict(data.get("schedule") or {})
    if flags.get("optimizer"):
        optimizer = {"kind": flags["optimizer"], **({"lr": optimizer["lr"]} if "lr" in optimizer else {})}
    if flags.get("lr") is not None:
        optimizer = {"kind": "adamw", **optimizer, "lr": flags["lr"]}
    if flags.get("schedule"):
        schedule = {"kind": flags["schedule"]}
    if flags.get("warmup_epochs") is not None:
        schedule = {"kind": "cosine", **schedule, "warmup_epochs": flags["warmup_epochs"]}
    if optimizer:
        data["optimizer"] = optimizer
    if schedule:
        data["schedule"] = schedule
    if flags.get("patience") is not None:
        data["early_stopping"] = {**(data.get("early_stopping") or {}), "patience": flags["patience"]}
    for key in ("epochs", "batch_size", "amp", "grad_clip_norm", "seed", "device", "checkpoint_dir", "resume", "freeze"):
        if flags.get(key) is not None:
            data[key] = flags[key]
    try:
        return FinetuneConfig.model_validate(data)
    except ValidationError as err:
        raise config_error(err, "finetune config") from err


@contextlib.contextmanager
def training_progress(description: str) -> Iterator[Callable[[ProgressEvent], None]]:
    """Show a rich progress bar over all steps with the running loss and the last validation metric."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    quiet = not sys.stderr.isatty() and os.environ.get("MODELPRESS_PROGRESS") != "1"
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("epoch {task.fields[epoch]}  loss {task.fields[loss]}  val {task.fields[metric]}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=True, disable=quiet) as bar:
        task = bar.add_task(description, total=None, epoch="-", loss="-", metric="-")

        def update(event: ProgressEvent) -> None:
            metric = "-" if event.val_metric is None else f"{event.metric} {event.val_metric:.4f}"
            bar.update(task, total=event.epochs * event.steps, completed=event.epoch * event.steps + event.step,
                       epoch=f"{event.epoch + 1}/{event.epochs}", loss=f"{event.loss:.4f}", metric=metric)

        yield update


def load_training_inputs(model: str, data: str, seed: int, threads: int | None = None) -> tuple[ModelHandle, Dataset]:
    """Load a model with a torch module and labelled tensor data, or raise a one-line error."""
    import torch

    from modelpress.sources.data import load_data
    from modelpress.sources.models import load_model

    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads must be >= 1; got {threads}")
        torch.set_num_threads(threads)

    with status(f"loading {model}"):
        handle = load_model(model)
    if handle.module is None:
        raise ConfigError(f"{model} has no torch module to train (an ONNX-only model); give a torch model or an artifact with a checkpoint")
    with status(f"loading {data}"):
        dataset = load_data(data, seed=seed)
    if dataset.kind != "tensor" or not dataset.labelled:
        raise ConfigError(f"--data {data}: training needs labelled tensor data (a {dataset.kind} set, labelled={dataset.labelled})")
    return handle, dataset


def accuracy_on(module: Any, split: Any) -> float:
    """Top-1 accuracy of a torch module on a labelled split."""
    import torch

    from modelpress.train.finetune import evaluate_model

    return evaluate_model(module, torch.from_numpy(split.x), torch.from_numpy(split.y))[1]


def write_trained_artifact(out: Path, handle: ModelHandle, module: Any, manifest: dict[str, Any]) -> None:
    """Export the trained module to ONNX (checked against torch) and write the artifact directory."""
    import tempfile

    from modelpress.artifact import write_artifact
    from modelpress.export.onnx import export_onnx

    trained = handle.with_module(module)
    with tempfile.TemporaryDirectory() as tmp, status("exporting to ONNX"):
        export = export_onnx(trained, Path(tmp) / "model.onnx")
        write_artifact(out, handle=trained.with_onnx(export.path), manifest={**manifest, "export": export.to_json()})


def print_summary(verb: str, out: Path, before: float, after: float, report: FinetuneReport) -> None:
    """Print the one-line result of a training command."""
    best = f", best epoch {report.best_epoch + 1}" if report.best_epoch is not None else ""
    console.print(
        f"[green]{verb}[/green] -> {out}  accuracy {before:.4f} -> {after:.4f} ({(after - before) * 100:+.2f} points)"
        f"  {len(report.history)} epochs{best}, {report.samples_per_s:.0f} samples/s, amp {report.amp}"
    )


def finetune(
    model: str = typer.Argument(..., help="Model spec: torchvision:NAME, python:pkg.mod:factory, torch:PATH, an artifact dir."),
    data: str = typer.Option(..., "--data", "-d", help="Labelled data: digits, mnist1d, npz:PATH, imagefolder:DIR, python:pkg.mod:fn."),
    out: Path = typer.Option(..., "--out", "-o", help="Artifact directory to write."),
    config_file: Path = typer.Option(None, "--config", help="JSON/YAML file of FinetuneConfig fields; flags override it."),
    epochs: int = typer.Option(None, "--epochs", help="Epochs to train (default 10)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Training batch size (default 64)."),
    lr: float = typer.Option(None, "--lr", help="Base learning rate."),
    optimizer: str = typer.Option(None, "--optimizer", help="adamw (default) or sgd."),
    schedule: str = typer.Option(None, "--schedule", help="cosine (default), sgdr or constant."),
    warmup_epochs: float = typer.Option(None, "--warmup-epochs", help="Linear warm-up length in epochs."),
    freeze: str = typer.Option(None, "--freeze", help="none, head[:MODULE], last-n:N or pattern:GLOB[,GLOB] (frozen parameters)."),
    patience: int = typer.Option(None, "--patience", help="Early stopping: epochs without validation improvement."),
    amp: str = typer.Option(None, "--amp", help="off, auto, bf16 or fp16 (CUDA)."),
    grad_clip: float = typer.Option(None, "--grad-clip", help="Clip the gradient norm to this value."),
    seed: int = typer.Option(None, "--seed", help="Seed for data order, augmentation and initialisation."),
    threads: int = typer.Option(None, "--threads", help="CPU threads torch may use (default: all cores)."),
    checkpoint_dir: Path = typer.Option(None, "--checkpoint-dir", help="Write a resumable checkpoint here after every epoch."),
    resume: bool = typer.Option(None, "--resume/--no-resume", help="Continue from --checkpoint-dir's checkpoint."),
    json_out: str = typer.Option(None, "--json", help="Write the training report as JSON to FILE (- for stdout)."),
) -> None:
    """Fine-tune a model on labelled data (freeze modes, schedules, early stopping, AMP) and write an artifact.

    Example:

        modelpress finetune python:modelpress.testing:Conv1dNet?shape=1x40 --data mnist1d --epochs 20 --out runs/ft
    """
    from modelpress.train.finetune import finetune_

    flags = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "optimizer": optimizer, "schedule": schedule,
             "warmup_epochs": warmup_epochs, "freeze": parse_freeze(freeze), "patience": patience, "amp": amp,
             "grad_clip_norm": grad_clip, "seed": seed, "checkpoint_dir": checkpoint_dir, "resume": resume}
    config = build_finetune_config(read_config_file(config_file), flags)
    handle, dataset = load_training_inputs(model, data, config.seed, threads)
    module = handle.module
    evaluation = dataset.eval_split
    before = accuracy_on(module, evaluation)
    with training_progress(f"fine-tuning {model}") as progress:
        report = finetune_(module, dataset.train, dataset.val, config, progress=progress)
    after = accuracy_on(module, evaluation)
    manifest = {
        "stage": "finetune", "parent": model, "config": config.model_dump(mode="json"),
        "data": {"spec": data, "content_hash": dataset.content_hash}, "seed": config.seed,
        "metrics": {"accuracy_before": before, "accuracy_after": after}, "finetune": report.to_dict(),
    }
    write_trained_artifact(out, handle, module, manifest)
    if json_out:
        write_json({"artifact": str(out), "accuracy_before": before, "accuracy_after": after, **report.to_dict()}, json_out)
    print_summary("fine-tuned", out, before, after, report)


def register(app: typer.Typer) -> None:
    app.command("finetune")(finetune)
