"""``--search``: try many stage combinations and report the accuracy / latency / size Pareto front.

Trials (prune ratio × quantization mode × distillation on/off) run on a local
process pool (spawn) or as Ray Tune trials on a Ray cluster. Each trial builds
and scores its artifact on the target backend; latency is then measured for
all of them side by side in this process, interleaved, so the front compares
like with like on one machine.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from modelpress.pipeline.recipe import Recipe

log = logging.getLogger(__name__)


@dataclass
class TrialResult:
    """One searched configuration, as measured."""

    name: str
    stages: list[dict[str, Any]]
    metric: float | None = None
    accuracy_drop: float | None = None
    size_mb: float | None = None
    latency_ms: float | None = None
    directory: str | None = None
    seconds: float = 0.0
    error: str | None = None
    pareto: bool = False


@dataclass
class SearchResult:
    """All trials, the front, and where results were written."""

    recipe: str
    backend: str
    baseline: dict[str, Any]
    trials: list[TrialResult]
    engine: str
    wall_s: float
    report: Path | None = None
    json_path: Path | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def front(self) -> list[TrialResult]:
        return [t for t in self.trials if t.pareto]

    def to_json(self) -> dict[str, Any]:
        points = [asdict(t) for t in self.trials]
        return {"recipe": self.recipe, "backend": self.backend, "engine": self.engine, "wall_s": self.wall_s, "baseline": self.baseline,
                "points": points, "front": [t.name for t in self.front], "report": str(self.report) if self.report else None}


def grid(recipe: Recipe) -> list[tuple[str, list[dict[str, Any]]]]:
    """Expand the recipe's search space into named stage lists."""
    space = recipe.search
    out = []
    for ratio, quant, kd in itertools.product(space.prune_ratios, space.quantize, space.distill):
        stages: list[dict[str, Any]] = []
        parts = []
        if kd:
            stages.append({"kind": "distill", "student_ratio": 0.5, "train": {"epochs": max(space.finetune_epochs, 1)}})
            parts.append("kd")
        if ratio > 0:
            stages.append({"kind": "prune", "method": "structured", "ratio": ratio})
            if space.finetune_epochs:
                stages.append({"kind": "finetune", "epochs": space.finetune_epochs})
            parts.append(f"p{ratio:g}")
        if quant != "none":
            stages.append({"kind": "quantize", "mode": quant, "allow_slower": True, "max_accuracy_drop": 1.0} if quant != "fastest" else {"kind": "quantize", "mode": quant})
            parts.append(quant)
        out.append(("+".join(parts) or "float", stages))
    return out


def pareto(trials: list[TrialResult]) -> None:
    """Mark the trials no other trial beats on metric, latency and size at once."""
    ok = [t for t in trials if t.error is None and t.metric is not None and t.latency_ms is not None]
    for t in ok:
        t.pareto = not any(
            o is not t and o.metric >= t.metric and o.latency_ms <= t.latency_ms and o.size_mb <= t.size_mb  # type: ignore[operator]
            and (o.metric > t.metric or o.latency_ms < t.latency_ms or o.size_mb < t.size_mb)  # type: ignore[operator]
            for o in ok
        )


def run_trial(recipe_json: dict[str, Any], name: str, stages: list[dict[str, Any]], work: str, base_dir: str) -> dict[str, Any]:
    """Build and score one configuration (runs in a worker process or a Ray trial)."""
    import importlib

    from modelpress.pipeline.gate import eval_split, quality, reference_outputs
    from modelpress.pipeline.recipe import Recipe
    from modelpress.pipeline.run import load_state, run_stages
    from modelpress.pipeline.stages import get_stage
    from modelpress.sources.data import load_data

    started = time.perf_counter()
    recipe = Recipe.model_validate(recipe_json)
    for plugin in recipe.plugins:
        importlib.import_module(plugin)
    try:
        normalised = [get_stage(s["kind"]).validate(s) for s in stages]
        data = load_data(recipe.data, seed=recipe.seed)
        base, _ = load_state(Path(base_dir))
        split = eval_split(data, recipe.gate)
        reference = reference_outputs(base, split, recipe.target)
        base_q = quality(base, split, recipe.target, reference, "float")
        handle, records = run_stages(recipe.with_stages(normalised), normalised, base, data, Path(work) / name, resume=True, say=lambda m: log.info("%s: %s", name, m))
        q = quality(handle, split, recipe.target, reference, name)
        final = Path(handle.onnx_path).parent  # type: ignore[arg-type]
        return {"name": name, "stages": normalised, "metric": q.value, "accuracy_drop": base_q.value - q.value, "size_mb": q.size_mb,
                "directory": str(final), "seconds": time.perf_counter() - started, "error": None}
    except Exception as err:  # noqa: BLE001 - a failed trial is a result to report, not a reason to stop the search
        log.warning("trial %s failed: %s", name, err)
        return {"name": name, "stages": stages, "error": f"{type(err).__name__}: {err}", "seconds": time.perf_counter() - started}


def _local(jobs: list[tuple[str, list[dict[str, Any]]]], args: tuple[dict[str, Any], str, str], workers: int, say: Callable[[str], None]) -> list[dict[str, Any]]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    out = []
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(run_trial, args[0], name, stages, args[1], args[2]) for name, stages in jobs]
        for fut in as_completed(futures):
            res = fut.result()
            say(f"trial {res['name']}: " + (res["error"] or f"metric {res['metric']:.4f}"))
            out.append(res)
    return out


def _ray(jobs: list[tuple[str, list[dict[str, Any]]]], args: tuple[dict[str, Any], str, str], address: str, workers: int, say: Callable[[str], None]) -> list[dict[str, Any]]:
    try:
        import ray
        from ray import tune
    except ImportError as err:
        from modelpress.errors import MissingDependencyError

        raise MissingDependencyError("ray[tune]", "--ray", "ray") from err
    if not ray.is_initialized():
        ray.init(address=None if address == "local" else address, ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
    by_name = {name: stages for name, stages in jobs}
    recipe_json, work, base_dir = args

    def trainable(config: dict[str, Any]) -> None:
        name = config["trial"]
        tune.report({"result": json.dumps(run_trial(recipe_json, name, by_name[name], work, base_dir))})

    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space={"trial": tune.grid_search(list(by_name))},
        tune_config=tune.TuneConfig(max_concurrent_trials=workers),
        run_config=tune.RunConfig(name="modelpress-search", storage_path=str(Path(work).resolve() / "ray"), verbose=0),
    )
    grid_result = tuner.fit()
    out = []
    for res in grid_result:
        if res.error is not None:
            out.append({"name": res.config["trial"], "stages": by_name[res.config["trial"]], "error": str(res.error)})
        else:
            out.append(json.loads(res.metrics["result"]))
        say(f"trial {out[-1]['name']}: " + (out[-1].get("error") or f"metric {out[-1]['metric']:.4f}"))
    return out


def run_search(
    recipe: Recipe,
    *,
    work_dir: Path | str | None = None,
    out: Path | str | None = None,
    ray_address: str | None = None,
    workers: int | None = None,
    bench_seconds: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> SearchResult:
    """Run every configuration of ``recipe.search``, time them side by side, mark the Pareto front.

    Args:
        ray_address: run trials on Ray (an address, ``auto``, or ``local`` for a fresh local instance);
            None uses a local process pool.
        workers: concurrent trials (default ``recipe.search.workers``).
    """
    from modelpress.pipeline.gate import eval_split, measure_speed, quality, reference_outputs
    from modelpress.pipeline.report_html import pareto_plot
    from modelpress.pipeline.run import _baseline, _clean_temporaries, load_state
    from modelpress.sources.data import load_data

    say = progress or (lambda m: log.info("%s", m))
    started = time.perf_counter()
    work = Path(work_dir) if work_dir is not None else Path("runs") / f"{recipe.name}-search"
    work.mkdir(parents=True, exist_ok=True)
    _clean_temporaries(work)
    data = load_data(recipe.data, seed=recipe.seed)
    _baseline(recipe, data, work, True, say)
    base_dir = work / f"baseline-{recipe.base_hash()[:12]}"
    jobs = grid(recipe)
    say(f"search: {len(jobs)} configurations on {'Ray ' + ray_address if ray_address else 'a local process pool'}")
    args = (recipe.model_dump(mode="json"), str(work / "trials"), str(base_dir))
    n = workers or recipe.search.workers
    trial_started = time.perf_counter()
    raw = _ray(jobs, args, ray_address, n, say) if ray_address else _local(jobs, args, n, say)
    trials_s = time.perf_counter() - trial_started
    order = {name: i for i, (name, _) in enumerate(jobs)}
    trials = sorted((TrialResult(**{k: v for k, v in r.items() if k in TrialResult.__dataclass_fields__}) for r in raw), key=lambda t: order[t.name])
    base, _ = load_state(base_dir)
    split = eval_split(data, recipe.gate)
    base_q = quality(base, split, recipe.target, reference_outputs(base, split, recipe.target), "float")
    handles = {t.name: load_state(Path(t.directory))[0] for t in trials if t.error is None and t.directory}
    say(f"search: timing {len(handles)} artifacts side by side on {recipe.target.backend}")
    speed = measure_speed(base, handles, recipe.target, bench_seconds or max(recipe.gate.bench_seconds, 2.0 * len(handles)))
    for t in trials:
        if t.name in speed:
            t.latency_ms = speed[t.name]["p50_ms"]
    pareto(trials)
    baseline = {"metric": base_q.value, "size_mb": base_q.size_mb, "latency_ms": (speed.get("float") or {}).get("p50_ms"),
                "torch_latency_ms": (speed.get("float@torch") or {}).get("p50_ms")}
    result = SearchResult(recipe.name, recipe.target.backend, baseline, trials, f"ray:{ray_address}" if ray_address else f"local:{n}", time.perf_counter() - started)
    result.extras["trials_s"] = trials_s
    target = Path(out) if out is not None else work
    target.mkdir(parents=True, exist_ok=True)
    body = result.to_json()
    body["trials_s"] = trials_s
    result.json_path = target / "search.json"
    result.json_path.write_text(json.dumps(body, indent=2, default=str))
    result.report = target / "search.html"
    from modelpress.pipeline.report_html import render_search

    result.report.write_text(render_search(body, pareto_plot(body["points"])))
    return result


def search_table(result: SearchResult):  # noqa: ANN201 - a rich Table
    """The search results as a table, front first."""
    from rich.table import Table

    table = Table(title=f"{result.recipe}: {len(result.trials)} configurations on {result.backend} ({result.engine}, {result.wall_s:.0f}s); ★ = Pareto front")
    for col in ("config", "metric %", "drop pts", "p50 ms", "MB", ""):
        table.add_column(col, justify="left" if col == "config" else "right")
    b = result.baseline
    table.add_row("float (baseline)", f"{b['metric'] * 100:.2f}", "0.00", f"{b['latency_ms'] or float('nan'):.4f}", f"{b['size_mb']:.4f}", "")
    for t in sorted(result.trials, key=lambda t: (not t.pareto, t.latency_ms or 1e9)):
        if t.error:
            table.add_row(t.name, "", "", "", "", f"failed: {t.error[:60]}")
            continue
        table.add_row(t.name, f"{t.metric * 100:.2f}", f"{t.accuracy_drop * 100:.2f}", f"{t.latency_ms:.4f}" if t.latency_ms else "–", f"{t.size_mb:.4f}", "★" if t.pareto else "")
    return table
