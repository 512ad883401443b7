"""`modelpress distill`: train a student from one or more teachers and write an artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from modelpress.cli.common import status, write_json
from modelpress.cli.finetune import (
    accuracy_on, build_finetune_config, load_training_inputs, parse_freeze, print_summary, read_config_file, training_progress,
    write_trained_artifact,
)
from modelpress.errors import ConfigError


def _layer_pairs(values: list[str] | None, option: str) -> list[dict[str, Any]]:
    pairs = []
    for value in values or []:
        student, sep, teacher = value.partition("=")
        if not sep or not student or not teacher:
            raise ConfigError(f"{option} must be STUDENT_LAYER=TEACHER_LAYER (e.g. features.3=features.3); got {value!r}")
        pairs.append({"student": student, "teacher": teacher})
    return pairs


def distill(
    student: str = typer.Argument(..., help="Student model spec (torch): python:pkg.mod:factory, torchvision:NAME, torch:PATH, an artifact dir."),
    teacher: list[str] = typer.Option(..., "--teacher", "-t", help="Teacher model spec; repeat for several. onnx:PATH runs in ONNX Runtime."),
    teacher_weight: list[float] = typer.Option(None, "--teacher-weight", help="Relative weight of each teacher, in --teacher order."),
    data: str = typer.Option(..., "--data", "-d", help="Labelled data: digits, mnist1d, npz:PATH, imagefolder:DIR, python:pkg.mod:fn."),
    out: Path = typer.Option(..., "--out", "-o", help="Artifact directory to write."),
    config_file: Path = typer.Option(None, "--config", help="JSON/YAML file of DistillConfig fields (training under `train`); flags override it."),
    temperature: float = typer.Option(None, "--temperature", help="Softening temperature T (default 2)."),
    temperature_final: float = typer.Option(None, "--temperature-final", help="Anneal T linearly to this by the last epoch."),
    alpha: float = typer.Option(None, "--alpha", help="Weight of the teacher (soft) loss in [0, 1]; the rest goes to the labels."),
    feature: list[str] = typer.Option(None, "--feature", help="Hint loss STUDENT_LAYER=TEACHER_LAYER (adapters added when widths differ); repeatable."),
    attention: list[str] = typer.Option(None, "--attention", help="Attention transfer STUDENT_LAYER=TEACHER_LAYER; repeatable."),
    epochs: int = typer.Option(None, "--epochs", help="Epochs to train (default 10)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Training batch size (default 64)."),
    lr: float = typer.Option(None, "--lr", help="Base learning rate."),
    optimizer: str = typer.Option(None, "--optimizer", help="adamw (default) or sgd."),
    schedule: str = typer.Option(None, "--schedule", help="cosine (default), sgdr or constant."),
    freeze: str = typer.Option(None, "--freeze", help="none, head[:MODULE], last-n:N or pattern:GLOB[,GLOB] on the student."),
    patience: int = typer.Option(None, "--patience", help="Early stopping: epochs without validation improvement."),
    amp: str = typer.Option(None, "--amp", help="off, auto, bf16 or fp16 (CUDA)."),
    seed: int = typer.Option(None, "--seed", help="Seed for data order and initialisation."),
    threads: int = typer.Option(None, "--threads", help="CPU threads torch may use (default: all cores)."),
    json_out: str = typer.Option(None, "--json", help="Write the distillation report as JSON to FILE (- for stdout)."),
) -> None:
    """Distill one or more teachers into a student (soft KL x T^2, hints, attention transfer) and write an artifact.

    Example:

        modelpress distill python:mymodels:small?shape=1x40 --teacher runs/teacher --data mnist1d --out runs/student
    """
    from pydantic import ValidationError

    from modelpress.compress.distill import DistillConfig, distill_
    from modelpress.sources.models import load_model
    from modelpress.train.finetune import config_error

    base = read_config_file(config_file)
    train_flags = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "optimizer": optimizer, "schedule": schedule,
                   "freeze": parse_freeze(freeze), "patience": patience, "amp": amp, "seed": seed}
    train = build_finetune_config(base.pop("train", {}) or {}, train_flags)
    data_cfg: dict[str, Any] = {**base, "train": train.model_dump()}
    for key, value in (("temperature", temperature), ("temperature_final", temperature_final), ("alpha", alpha)):
        if value is not None:
            data_cfg[key] = value
    if teacher_weight:
        data_cfg["teacher_weights"] = list(teacher_weight)
    if feature:
        data_cfg["features"] = _layer_pairs(feature, "--feature")
    if attention:
        data_cfg["attention"] = _layer_pairs(attention, "--attention")
    try:
        config = DistillConfig.model_validate(data_cfg)
    except ValidationError as err:
        raise config_error(err, "distill config") from err
    if config.teacher_weights is not None and len(config.teacher_weights) != len(teacher):
        raise ConfigError(f"--teacher-weight: {len(teacher)} teachers but {len(config.teacher_weights)} weights")

    handle, dataset = load_training_inputs(student, data, config.train.seed, threads)
    teachers = []
    for spec in teacher:
        with status(f"loading teacher {spec}"):
            teachers.append(load_model(spec))
    evaluation = dataset.eval_split
    module = handle.module
    before = accuracy_on(module, evaluation)
    with training_progress(f"distilling into {student}") as progress:
        report = distill_(module, teachers, dataset.train, dataset.val, config, progress=progress)
    after = accuracy_on(module, evaluation)
    manifest = {
        "stage": "distill", "parent": student, "teachers": list(teacher), "config": config.model_dump(mode="json"),
        "data": {"spec": data, "content_hash": dataset.content_hash}, "seed": config.train.seed,
        "metrics": {"accuracy_before": before, "accuracy_after": after, "teacher_val_accuracy": report.teacher_accuracy},
        "distill": report.to_dict(),
    }
    write_trained_artifact(out, handle, module, manifest)
    if json_out:
        write_json({"artifact": str(out), "accuracy_before": before, "accuracy_after": after, **report.to_dict()}, json_out)
    print_summary("distilled", out, before, after, report.finetune)


def register(app: typer.Typer) -> None:
    app.command("distill")(distill)
