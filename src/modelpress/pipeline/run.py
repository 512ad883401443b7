"""Run a recipe: baseline, stages (resumable), gate with back-off, artifact and report.

Run directory layout (``--work-dir``, default ``runs/<recipe name>/``)::

    baseline-<hash>/          the float model, exported (an artifact dir)
    stages/<i>-<kind>-<hash>/ one finished stage each, written atomically
    cache/                    what stages measured once per input model (sensitivity rankings)
    scratch/                  stage temporaries (removed when a stage finishes)
    result.json               the last run's rounds and verdict

Each stage's hash chains the baseline's hash and every stage config up to it,
so ``resume=True`` reuses exactly the finished stages a recipe still asks for.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelpress.errors import ConfigError, GateError
from modelpress.pipeline.gate import Measurement, Verdict, backoff, eval_split, judge, measure_speed, quality, reference_outputs
from modelpress.pipeline.recipe import Recipe, stable_hash
from modelpress.pipeline.stages import StageContext, ensure_onnx, get_stage, jsonable
from modelpress.sources.data import split_hash

if TYPE_CHECKING:
    from modelpress.sources.data import Dataset
    from modelpress.sources.models import ModelHandle

log = logging.getLogger(__name__)
Progress = Callable[[str], None]
STATE = "state.json"


@dataclass
class StageRecord:
    """One stage as run (or reused) in one round."""

    index: int
    kind: str
    config: dict[str, Any]
    hash: str
    directory: str
    resumed: bool
    seconds: float
    report: dict[str, Any]


@dataclass
class Round:
    """One attempt: its stages, the candidate's measurement and the verdict."""

    index: int
    backoff_step: str | None
    stages: list[StageRecord]
    candidate: Measurement | None = None
    verdict: Verdict | None = None
    error: str | None = None
    handle: Any = None  # the candidate ModelHandle, not serialised

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index, "backoff_step": self.backoff_step,
            "stages": [jsonable(s) for s in self.stages],
            "candidate": jsonable(self.candidate), "verdict": self.verdict.to_json() if self.verdict else None, "error": self.error,
        }


@dataclass
class RunResult:
    """What :func:`run_recipe` did."""

    recipe: Recipe
    passed: bool
    artifact: Path | None
    baseline: Measurement
    torch_latency: dict[str, Any] | None
    rounds: list[Round]
    best: int | None
    work_dir: Path
    wall_s: float
    data_hash: str = ""
    calib_hash: str = ""
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        if self.passed:
            return f"passed in round {self.best + 1} of {len(self.rounds)}"
        return f"failed: no round met the budget after {len(self.rounds)} round(s)"

    def to_json(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe.name, "passed": self.passed, "verdict": self.verdict, "artifact": str(self.artifact) if self.artifact else None,
            "baseline": jsonable(self.baseline), "torch_latency": self.torch_latency, "best_round": self.best,
            "rounds": [r.to_json() for r in self.rounds], "work_dir": str(self.work_dir), "wall_s": self.wall_s,
            "data_hash": self.data_hash, "calib_hash": self.calib_hash,
        }


# --------------------------------------------------------------------------- state on disk


def _handle_meta(handle: ModelHandle) -> dict[str, Any]:
    return {"spec": handle.spec, "inputs": [s.to_json() for s in handle.inputs], "outputs": list(handle.outputs), "task": handle.task,
            "precision": handle.precision, "tokenizer_dir": str(handle.tokenizer_dir) if handle.tokenizer_dir else None}


def save_state(directory: Path, handle: ModelHandle, report: dict[str, Any], key: str) -> None:
    """Write a finished stage atomically: a temp sibling, then one rename."""
    from modelpress.artifact import write_artifact
    from modelpress.sources.models import save_checkpoint

    meta = {"hash": key, "handle": _handle_meta(handle), "report": report}
    if handle.onnx_path is not None:
        write_artifact(directory, handle=handle, manifest={"stage_state": meta})
        return
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp-"))
    try:
        save_checkpoint(handle, tmp)
        (tmp / STATE).write_text(json.dumps(meta, indent=2, default=str))
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_state(directory: Path) -> tuple[ModelHandle, dict[str, Any]]:
    """Load a finished stage written by :func:`save_state`."""
    from modelpress.artifact import MANIFEST, load_artifact, read_manifest
    from modelpress.sources.models import TensorSpec, load_checkpoint

    if (directory / MANIFEST).is_file():
        meta = read_manifest(directory)["stage_state"]
        handle = load_artifact(directory)
    else:
        meta = json.loads((directory / STATE).read_text())
        handle = load_checkpoint(directory)
    h = meta["handle"]
    handle.spec, handle.task, handle.precision = h["spec"], h["task"], h["precision"]
    handle.inputs = tuple(TensorSpec.from_json(s) for s in h["inputs"])
    handle.outputs = tuple(h["outputs"])
    handle.tokenizer_dir = Path(h["tokenizer_dir"]) if h["tokenizer_dir"] else None
    return handle, meta["report"]


def _clean_temporaries(work: Path) -> None:
    """Remove what a killed run left half-written (temp dirs never renamed into place)."""
    for parent in (work, work / "stages"):
        if parent.is_dir():
            for p in parent.iterdir():
                if p.name.startswith(".") and (".tmp-" in p.name or ".old-" in p.name):
                    shutil.rmtree(p, ignore_errors=True)
    shutil.rmtree(work / "scratch", ignore_errors=True)


# --------------------------------------------------------------------------- baseline and stages


def _baseline(recipe: Recipe, data: Dataset, work: Path, resume: bool, say: Progress) -> tuple[ModelHandle, dict[str, Any]]:
    """Load the model, pre-train it when the recipe says so, export it: the float baseline."""
    from modelpress.sources.models import load_model

    key = recipe.base_hash()
    directory = work / f"baseline-{key[:12]}"
    if resume and directory.is_dir():
        say("baseline: reusing the finished float model")
        return load_state(directory)
    _seed(recipe.seed)  # a factory's random initial weights are part of the baseline
    handle = load_model(recipe.model)
    if recipe.task is not None:
        handle.task = recipe.task
    report: dict[str, Any] = {}
    if recipe.pretrain is not None:
        say("baseline: training the float model")
        ctx = StageContext(data=data, target=recipe.target, budget=recipe.budget, seed=recipe.seed, work_dir=work / "scratch" / "pretrain", progress=say)
        _seed(recipe.seed)
        out = get_stage("finetune").run(handle, {"kind": "finetune", **recipe.pretrain}, ctx)
        handle, report = out.handle, {"pretrain": out.report}
    say("baseline: exporting the float model")
    handle = ensure_onnx(handle, work / "scratch" / "baseline.onnx", recipe.export)
    save_state(directory, handle, report, key)
    return load_state(directory)


def _seed(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_stages(
    recipe: Recipe, stages: list[dict[str, Any]], base: ModelHandle, data: Dataset, work: Path, *,
    resume: bool, say: Progress, made: set[str] | None = None,
) -> tuple[ModelHandle, list[StageRecord]]:
    """Run ``stages`` on the baseline; export at the end.

    A finished stage is reused when ``resume`` is set or when this run made it
    (``made``: hashes finished in earlier rounds, e.g. a prune a later round keeps).
    """
    made = made if made is not None else set()
    key = recipe.base_hash()
    handle = base
    records: list[StageRecord] = []
    for i, config in enumerate(stages):
        parent, key = key, stable_hash({"parent": key, "stage": config})
        kind = config["kind"]
        directory = work / "stages" / f"{i}-{kind}-{key[:12]}"
        started = time.perf_counter()
        if (resume or key in made) and directory.is_dir():
            say(f"stage {i + 1}/{len(stages)} {kind}: finished earlier, reusing it")
            handle, report = load_state(directory)
            records.append(StageRecord(i, kind, config, key, str(directory), True, 0.0, report))
            continue
        say(f"stage {i + 1}/{len(stages)} {kind}")
        scratch = work / "scratch" / f"{i}-{kind}"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        ctx = StageContext(data=data, target=recipe.target, budget=recipe.budget, seed=recipe.seed + i, work_dir=scratch, teacher=base, progress=say,
                           export=recipe.export, cache_dir=work / "cache", input_key=parent)
        _seed(recipe.seed + i)
        out = get_stage(kind).run(handle, config, ctx)
        save_state(directory, out.handle, out.report, key)
        handle, report = load_state(directory)
        shutil.rmtree(scratch, ignore_errors=True)
        made.add(key)
        records.append(StageRecord(i, kind, config, key, str(directory), False, time.perf_counter() - started, report))
    final = work / "stages" / f"final-{key[:12]}"
    if handle.onnx_path is None:
        if (resume or key in made) and final.is_dir():
            handle, _ = load_state(final)
        else:
            handle = ensure_onnx(handle, work / "scratch" / "final.onnx", recipe.export)
            save_state(final, handle, {}, key)
            made.add(key)
            handle, _ = load_state(final)
    return handle, records


# --------------------------------------------------------------------------- the whole run


def run_recipe(
    recipe: Recipe,
    *,
    work_dir: Path | str | None = None,
    out: Path | str | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    write_report: bool = True,
) -> RunResult:
    """Compress as ``recipe`` says, gate the result on the target, write the artifact.

    Args:
        work_dir: the run directory (default ``runs/<recipe name>``).
        out: where the final artifact goes (default ``<work_dir>/artifact``).
        resume: reuse finished stages (and the baseline) whose recipe hash matches.
        progress: called with one line of text per step.

    Returns:
        The rounds, the verdict and the artifact (None when no round met the budget).
    """
    from modelpress.sources.data import load_data

    say = progress or (lambda msg: log.info("%s", msg))
    started = time.perf_counter()
    work = Path(work_dir) if work_dir is not None else Path("runs") / recipe.name
    work.mkdir(parents=True, exist_ok=True)
    _clean_temporaries(work)
    data = load_data(recipe.data, seed=recipe.seed)
    calib_hash = split_hash(data.calib)
    base, _ = _baseline(recipe, data, work, resume, say)
    split = eval_split(data, recipe.gate)
    reference = reference_outputs(base, split, recipe.target)
    base_m = quality(base, split, recipe.target, reference, "float")

    rounds: list[Round] = []
    stages = list(recipe.stages)
    done_steps: list[str] = []
    step: str | None = None
    best: int | None = None
    torch_latency = None
    made: set[str] = set()
    for r in range(recipe.gate.max_rounds + 1):
        say(f"round {r + 1}: {', '.join(s['kind'] for s in stages)}" + (f" (backed off: {step})" if step else ""))
        rnd = Round(r, step, [])
        try:
            cand, rnd.stages = run_stages(recipe, stages, base, data, work, resume=resume, say=say, made=made)
            rnd.handle = cand
            say(f"round {r + 1}: gate: evaluating and timing on {recipe.target.backend}")
            rnd.candidate = quality(cand, split, recipe.target, reference, "candidate")
            speed = measure_speed(base, {"candidate": cand}, recipe.target, recipe.gate.bench_seconds)
            base_m.latency = speed.get("float")
            rnd.candidate.latency = speed.get("candidate")
            torch_latency = speed.get("float@torch")
            rnd.verdict = judge(base_m, rnd.candidate, torch_latency, recipe.budget)
        except GateError as err:  # a verb's own guard (no variant met its budget, slower than float)
            rnd.error = str(err)
        rounds.append(rnd)
        if rnd.verdict is not None and rnd.verdict.passed:
            best = r
            say(f"round {r + 1}: passed")
            break
        say(f"round {r + 1}: failed: {rnd.error or '; '.join(rnd.verdict.reasons)}")  # type: ignore[union-attr]
        nxt = backoff(stages, done_steps, float_rounds=recipe.gate.float_rounds, last=[s.report for s in rnd.stages] or None)
        if nxt is None:
            say("no back-off step left")
            break
        stages, step = nxt
        done_steps.append(step)
    result = RunResult(recipe, best is not None, None, base_m, torch_latency, rounds, best, work, 0.0, data.content_hash, calib_hash)
    result.extras["float_handle"] = base
    if best is not None:
        say("writing the artifact")
        result.artifact = write_run_artifact(result, Path(out) if out is not None else work / "artifact", write_report=write_report)
    result.wall_s = time.perf_counter() - started
    (work / "result.json").write_text(json.dumps(result.to_json(), indent=2, default=str))
    return result


def build_manifest(result: RunResult) -> dict[str, Any]:
    """The manifest fields a pipeline artifact records beyond write_artifact's own."""
    from modelpress.artifact import environment_info

    rnd = result.rounds[result.best] if result.best is not None else None
    return {
        "environment": environment_info(),
        "kind": "modelpress-artifact",
        "stage": "pipeline",
        "recipe": result.recipe.to_json(),
        "recipe_hash": stable_hash(result.recipe.to_json()),
        "lineage": {
            "model": result.recipe.model,
            "baseline_hash": result.recipe.base_hash(),
            "stages": [{"kind": s.kind, "config": s.config, "hash": s.hash, "report": s.report} for s in (rnd.stages if rnd else [])],
            "backoff_step": rnd.backoff_step if rnd else None,
        },
        "data": {"spec": result.recipe.data, "content_hash": result.data_hash, "calibration_hash": result.calib_hash},
        "seeds": {"recipe": result.recipe.seed, "stages": [result.recipe.seed + s.index for s in (rnd.stages if rnd else [])]},
        "metrics": {
            "before": jsonable(result.baseline),
            "after": jsonable(rnd.candidate) if rnd else None,
            "torch_fp32_latency": result.torch_latency,
            "verdict": rnd.verdict.to_json() if rnd and rnd.verdict else None,
        },
        "target": result.recipe.target.model_dump(),
        "budget": result.recipe.budget.model_dump(),
        "gate_rounds": [r.to_json() for r in result.rounds],
    }


def write_run_artifact(result: RunResult, out: Path, *, write_report: bool = True) -> Path:
    """Write the best round's model as an artifact with manifest.json and report.html."""
    from modelpress.artifact import write_artifact

    if result.best is None:
        raise ConfigError("no round met the budget; there is no artifact to write")
    handle = result.rounds[result.best].handle
    manifest = build_manifest(result)
    with tempfile.TemporaryDirectory() as tmp:
        extra: dict[str, Path] = {}
        if write_report:
            from modelpress.pipeline.report_html import render_report

            path = Path(tmp) / "report.html"
            path.write_text(render_report(manifest, result.extras.get("search")))
            extra["report.html"] = path
        return write_artifact(out, handle=handle, manifest=manifest, extra_files=extra)
