"""`modelpress demo`: the whole road on built-in data in a few minutes on 2 cores.

Train a 1-D CNN on MNIST-1D, compress it with the mobile preset (structured
prune 50% + fine-tune + static INT8), gate the exported artifact on ONNX
Runtime against the float model, benchmark it, and write the report.
"""

from __future__ import annotations

from pathlib import Path

import typer

from modelpress.cli.common import console, err_console, write_json

DEMO_RECIPE = """\
name: demo-mnist1d
model: python:modelpress.testing:Conv1dNet?width=64
data: mnist1d
seed: {seed}
pretrain: {{epochs: {epochs}, batch_size: 128, optimizer: {{kind: adamw, lr: 0.003}}}}
preset: mobile
stages:
  - {{kind: finetune, epochs: {finetune_epochs}, batch_size: 128, optimizer: {{kind: adamw, lr: 0.003}}}}
target: {{backend: onnxruntime, device: cpu, threads: 2, batch: 1}}
budget: {{max_accuracy_drop: 0.01}}
gate: {{max_rounds: 2, bench_seconds: {bench_seconds}}}
"""


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Run directory; the artifact goes to OUT/artifact."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    epochs: int = typer.Option(30, "--epochs", help="Epochs to train the float CNN."),
    finetune_epochs: int = typer.Option(8, "--finetune-epochs", help="Epochs of fine-tuning after pruning."),
    bench_seconds: float = typer.Option(5.0, "--bench-seconds", help="Time budget of each side-by-side latency measurement."),
    resume: bool = typer.Option(False, "--resume", help="Reuse the finished stages of an interrupted demo."),
    register: bool = typer.Option(True, "--register/--no-register", help="Register the artifact as demo-mnist1d in the local registry."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Train a CNN on MNIST-1D, compress it with the mobile preset, verify, benchmark and report it.

    Everything runs locally on built-in data (nothing downloads). The float
    model and the INT8 artifact are scored the same way on ONNX Runtime; the
    gate backs off if the accuracy drop exceeds 1 point.

    Example:

        modelpress demo --out runs/demo
    """
    from modelpress.cli.compress import before_after_table, register_result
    from modelpress.pipeline.recipe import recipe_from_text
    from modelpress.pipeline.run import run_recipe

    recipe = recipe_from_text(
        DEMO_RECIPE.format(seed=seed, epochs=epochs, finetune_epochs=finetune_epochs, bench_seconds=bench_seconds), source="demo recipe"
    )
    result = run_recipe(recipe, work_dir=out, out=out / "artifact", resume=resume, progress=lambda m: err_console.print(f"[dim]{m}[/dim]"))
    registered = register_result(result, "demo-mnist1d") if register and result.passed else None
    if json_out:
        write_json({**result.to_json(), "registered": registered}, "-")
        return
    console.print(before_after_table(result))
    console.print(f"wall time {result.wall_s:.0f}s")
    if result.artifact:
        console.print(f"artifact: {result.artifact}\nreport:   {result.artifact / 'report.html'}")
        if registered:
            console.print(f"registered: {registered}")
    else:
        console.print(f"the gate failed every round; details in {out / 'result.json'}")
        # SystemExit, not typer.Exit: the CLI runs click with standalone_mode=False, which
        # turns typer.Exit into a return value the entry point drops
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
