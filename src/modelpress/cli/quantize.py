"""`modelpress quantize`: INT8 / FP16 / BF16 with a measured encoding, an accuracy budget and a speed guard."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from modelpress.bench.report import speed_words

_HELP = """Quantize MODEL and write an artifact directory.

Every run measures the result against the float model on the same backend:
accuracy on the validation split (or agreement with the float model when the
data has no labels) must stay within --max-accuracy-drop, and the result must
be faster, or the command exits non-zero (unless --allow-slower).

Example:

  modelpress quantize torchvision:resnet18 --data synthetic:3x224x224 --out r18-int8

  modelpress quantize model.onnx --data digits --mode static --calibration entropy --out q --json
"""


def register(app: typer.Typer) -> None:
    """Add the `quantize` command to ``app``."""
    app.command("quantize", help=_HELP)(quantize_command)


def quantize_command(
    model: str = typer.Argument(..., help="Model spec: an .onnx file, an artifact dir, torchvision:NAME, hf:DIR, ..."),
    data: str | None = typer.Option(None, "--data", help="Data spec (digits, mnist1d, npz:PATH, ...); "
                                    "calibration and validation splits come from it."),
    out: Path = typer.Option(..., "--out", help="Artifact directory to write (replaced atomically)."),
    mode: str = typer.Option("static", "--mode", help="static | dynamic | qat | fp16 | bf16"),
    calibration: str = typer.Option("minmax", "--calibration", help="static/qat: minmax | percentile | entropy"),
    percentile: float = typer.Option(99.999, "--percentile", help="Percentile for --calibration percentile."),
    samples: int = typer.Option(128, "--samples", help="Calibration samples drawn from the calibration split."),
    per_channel: bool = typer.Option(True, "--per-channel/--per-tensor", help="Weight scales per channel or per tensor."),
    activation_symmetric: bool = typer.Option(False, "--activation-symmetric", help="Symmetric activation ranges."),
    encoding: str = typer.Option("auto", "--encoding", help="auto (measured) | qdq-u8 | qdq-s8 | qop-u8 | qop-s8"),
    keep_float: list[str] = typer.Option([], "--keep-float", help="Node name to leave in float (repeatable)."),
    mixed_precision: bool = typer.Option(True, "--mixed-precision/--no-mixed-precision",
                                         help="Leave the fewest sensitive layers in float when the budget fails."),
    sensitivity: bool = typer.Option(False, "--sensitivity", help="Also write a per-layer sensitivity plot."),
    max_accuracy_drop: float = typer.Option(0.01, "--max-accuracy-drop",
                                            help="Largest allowed drop (0.01 = 1 point, or 0.99 agreement/cosine)."),
    allow_slower: bool = typer.Option(False, "--allow-slower", help="Keep a result that is not faster than float."),
    backend: str = typer.Option("onnxruntime", "--backend", help="onnxruntime | openvino (where it is measured)."),
    threads: int = typer.Option(2, "--threads", help="Intra-op threads for measuring."),
    epochs: int = typer.Option(3, "--epochs", help="qat: training epochs."),
    lr: float = typer.Option(1e-3, "--lr", help="qat: learning rate."),
    device: str = typer.Option("cuda", "--device", help="fp16: cuda | cpu"),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from modelpress.compress.quantize import parse_config, quantize

    common = {"kind": mode, "max_accuracy_drop": max_accuracy_drop, "allow_slower": allow_slower,
              "threads": threads}
    if mode in ("static", "qat"):
        common.update(calibration=calibration, percentile=percentile, samples=samples, per_channel=per_channel,
                      activation_symmetric=activation_symmetric, encoding=encoding, keep_float=tuple(keep_float),
                      mixed_precision=mixed_precision, backend=backend)
    if mode == "qat":
        common.update(epochs=epochs, lr=lr)
    if mode == "dynamic":
        common.update(per_channel=per_channel, keep_float=tuple(keep_float), backend=backend)
    if mode == "fp16":
        common.update(device=device, backend=backend)
    cfg = parse_config(common)
    dataset = _load_data(data) if data else None
    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console,
                  transient=True, disable=as_json or not console.is_terminal) as bar:
        task = bar.add_task("quantize", total=1.0)
        result = quantize(model, cfg, data=dataset, out_dir=out, sensitivity=sensitivity,
                          progress=lambda stage, frac: bar.update(task, description=stage, completed=frac))
    summary = result.to_dict() | {"out_dir": str(result.out_dir)}
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=str))
        return
    for c in result.candidates:
        mark = "*" if c.name == result.chosen else " "
        typer.echo(f"{mark} {c.name:<16} {c.latency_ms:8.2f} ms  {result.metric} {c.metric:.4f}  drop {c.drop:+.4f}"
                   + ("" if c.meets_budget else "  (over budget)"))
    typer.echo(f"float {result.float_ms:.2f} ms -> {result.chosen} {result.quant_ms:.2f} ms "
               f"({speed_words(result.speedup)}) on {result.backend}; {result.metric} "
               f"{result.float_metric:.4f} -> {result.quant_metric:.4f}; wrote {result.out_dir}")


def _load_data(spec: str):  # noqa: ANN202 - Dataset, imported lazily
    from modelpress.sources.data import load_data

    return load_data(spec)
