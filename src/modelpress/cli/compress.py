"""`modelpress compress RECIPE.yaml`: run a recipe end to end, gated on the target."""

from __future__ import annotations

from pathlib import Path

import typer

from modelpress.cli.common import console, err_console, write_json


def before_after_table(result):  # noqa: ANN001, ANN201 - rich Table of a RunResult
    """The before/after table every pipeline command prints."""
    from rich.table import Table

    from modelpress.bench.report import speed_words

    table = Table(title=f"{result.recipe.name}: {result.verdict}")
    for col in ("", "float", "artifact", "change"):
        table.add_column(col, justify="left" if not col else "right")
    base = result.baseline
    rnd = result.rounds[result.best] if result.best is not None else (result.rounds[-1] if result.rounds else None)
    cand, verdict = (rnd.candidate, rnd.verdict) if rnd else (None, None)
    fmt = lambda v, d=3: "–" if v is None else f"{v:.{d}f}"  # noqa: E731
    table.add_row(f"{base.metric} on {base.backend}", fmt(base.value * 100, 2) + "%", fmt(cand.value * 100, 2) + "%" if cand else "–",
                  f"{-verdict.accuracy_drop * 100:+.2f} pts" if verdict else "–")
    table.add_row("p50 latency ms", fmt(base.p50_ms), fmt(cand.p50_ms) if cand else "–", speed_words(verdict.speedup) if verdict else "–")
    torch_p50 = result.torch_latency["p50_ms"] if result.torch_latency else None
    table.add_row("p50 ms, PyTorch FP32 eager", fmt(torch_p50), "", speed_words(verdict.speedup_vs_torch) if verdict else "–")
    table.add_row("model.onnx MB", fmt(base.size_mb, 4), fmt(cand.size_mb, 4) if cand else "–", f"{fmt(verdict.size_ratio, 2)}× smaller" if verdict else "–")
    return table


def register_result(result, name: str) -> str:  # noqa: ANN001 - a RunResult
    """Register a passed run's artifact in the model registry; return ``NAME@vN``."""
    from modelpress.registry.store import open_registry

    rnd = result.rounds[result.best]
    metrics = {"metric": rnd.candidate.metric, "value": rnd.candidate.value, "baseline": result.baseline.value, **rnd.verdict.to_json()}
    version = open_registry().register(name, result.artifact, metadata={"metrics": metrics, "data_hash": result.data_hash}, recipe=result.recipe.to_json())
    return f"{name}@v{version.number}"


def compress(
    recipe_path: Path = typer.Argument(..., metavar="RECIPE.yaml", help="The recipe: model, data, target, budget, stages (or a preset)."),
    out: Path = typer.Option(None, "--out", "-o", help="Artifact directory (default: <work-dir>/artifact)."),
    work_dir: Path = typer.Option(None, "--work-dir", help="Run directory for stage checkpoints (default: runs/<recipe name>)."),
    resume: bool = typer.Option(False, "--resume", help="Restart from the last finished stage of an interrupted run."),
    search: bool = typer.Option(False, "--search", help="Explore the recipe's `search` grid and report the Pareto front."),
    ray: str = typer.Option(None, "--ray", help="Run search trials as Ray Tune trials on this cluster (ADDRESS or auto)."),
    workers: int = typer.Option(None, "--workers", help="Local process-pool size for --search (default: the recipe's search.workers)."),
    register_as: str = typer.Option(None, "--register", help="Register the artifact in the model registry under this name when it passes."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Compress a model as RECIPE.yaml says, verify the exported artifact on the target, write it.

    The gate scores the artifact and the float model the same way on the
    target backend; when the budget is missed it backs off (less pruning, more
    layers in float, QAT instead of PTQ) for at most gate.max_rounds rounds.

    Example:

        modelpress compress examples/mnist1d-mobile.yaml --out runs/mnist1d-int8
    """
    from modelpress.cli.common import progress_bar
    from modelpress.pipeline.recipe import load_recipe

    recipe = load_recipe(recipe_path)
    if search or ray:
        from modelpress.pipeline.search import run_search, search_table

        with progress_bar(f"searching {recipe.name}") as _:
            found = run_search(recipe, work_dir=work_dir, out=out, ray_address=ray, workers=workers, progress=lambda m: err_console.print(f"[dim]{m}[/dim]"))
        if json_out:
            write_json(found.to_json(), "-")
            return
        console.print(search_table(found))
        console.print(f"report: {found.report}   results: {found.json_path}")
        return
    from modelpress.pipeline.run import run_recipe

    result = run_recipe(recipe, work_dir=work_dir, out=out, resume=resume, progress=lambda m: err_console.print(f"[dim]{m}[/dim]"))
    registered = register_result(result, register_as) if register_as and result.passed else None
    if json_out:
        write_json({**result.to_json(), "registered": registered}, "-")
    else:
        console.print(before_after_table(result))
        if registered:
            console.print(f"registered: {registered}")
        if result.artifact:
            console.print(f"artifact: {result.artifact}   report: {result.artifact / 'report.html'}")
        else:
            console.print(f"no artifact met the budget; rounds are in {result.work_dir / 'result.json'}")
    if not result.passed:
        # SystemExit, not typer.Exit: the CLI runs click with standalone_mode=False, which
        # turns typer.Exit into a return value the entry point drops
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("compress")(compress)
