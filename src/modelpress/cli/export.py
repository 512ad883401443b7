"""`modelpress export`: torch → ONNX artifact, checked against torch."""

from __future__ import annotations

from pathlib import Path

import typer

from modelpress.cli.common import console, status, write_json


def export(
    model: str = typer.Argument(..., help="Model spec: torchvision:NAME, hf:DIR, python:pkg.mod:factory, torch:PATH, an artifact dir."),
    out: Path = typer.Option(..., "--out", "-o", help="Artifact directory to write."),
    opset: int = typer.Option(18, "--opset", help="ONNX opset (13-23)."),
    exporter: str = typer.Option("auto", "--exporter", help="auto, dynamo or torchscript."),
    atol: float = typer.Option(1e-4, "--atol", help="Absolute tolerance of the numerical check."),
    rtol: float = typer.Option(1e-3, "--rtol", help="Relative tolerance of the numerical check."),
    no_check: bool = typer.Option(False, "--no-check", help="Skip comparing ONNX Runtime's outputs with torch's."),
    json_out: str = typer.Option(None, "--json", help="Write the export report as JSON to FILE (- for stdout)."),
) -> None:
    """Export a model to an ONNX artifact with a dynamic batch axis, checked against torch.

    Example:

        modelpress export torchvision:resnet18 --out artifacts/resnet18
    """
    import tempfile

    from modelpress.artifact import write_artifact
    from modelpress.export.onnx import ExportConfig, export_onnx
    from modelpress.sources.models import load_model

    config = ExportConfig(opset=opset, exporter=exporter, atol=atol, rtol=rtol, check=not no_check)  # type: ignore[arg-type]
    with status(f"loading {model}"):
        handle = load_model(model)
    with tempfile.TemporaryDirectory() as tmp, status(f"exporting {model} to ONNX"):
        report = export_onnx(handle, Path(tmp) / "model.onnx", config)
        write_artifact(out, handle=handle.with_onnx(report.path), manifest={"stage": "export", "export": report.to_json()})
    if json_out:
        write_json({**report.to_json(), "artifact": str(out)}, json_out)
    console.print(
        f"[green]exported[/green] {model} -> {out}/model.onnx  ({report.exporter}, opset {report.opset}, "
        f"max abs error {report.max_abs_error if report.max_abs_error is not None else 'unchecked'})"
    )


def register(app: typer.Typer) -> None:
    app.command("export")(export)
