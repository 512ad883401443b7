"""`modelpress compress / eval / report / demo` from the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FAKES = ROOT / "tests" / "unit" / "pipeline"
ENV = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{FAKES}"}


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "modelpress.cli.main", *args], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=600)


@pytest.mark.parametrize("command", ["compress", "demo", "eval", "report"])
def test_help_has_an_example(command):
    res = _cli(command, "--help")
    assert res.returncode == 0, res.stderr
    assert "Example" in res.stdout and f"modelpress {command}" in res.stdout


def test_invalid_recipe_is_one_clear_error_with_exit_2(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("name: x\nmodel: m\ndata: d\ntarget:\n  threads: two\nstages:\n  - kind: export\n    opset: 5\n")
    res = _cli("compress", str(recipe))
    assert res.returncode == 2
    assert f"{recipe} line 5: `target.threads`" in res.stderr
    assert f"{recipe} line 8: `stages[0].opset`" in res.stderr and "greater than or equal to 13" in res.stderr
    assert "Traceback" not in res.stderr


RECIPE = """
name: cli-fake
plugins: [pipeline_fakes_plugin]
model: python:pipeline_fakes:trained_digits_linear
data: digits
export: {{exporter: torchscript, check: false}}
gate: {{max_rounds: 0, bench_seconds: 0.3}}
budget: {{max_accuracy_drop: {drop}}}
stages: [{{kind: prune, ratio: 0.1}}]
"""


@pytest.mark.slow
def test_compress_eval_report_round_trip(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(drop=0.05))
    res = _cli("compress", str(recipe), "--work-dir", str(tmp_path / "run"), "--out", str(tmp_path / "art"))
    assert res.returncode == 0, res.stderr
    assert "passed in round 1" in res.stdout and "report:" in res.stdout and "× smaller" in res.stdout
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    after = manifest["metrics"]["after"]["value"]

    res = _cli("eval", str(tmp_path / "art"), "--data", "digits", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["value"] == pytest.approx(after)  # same split, same backend, same number

    res = _cli("report", str(tmp_path / "art"), "--out", str(tmp_path / "again.html"))
    assert res.returncode == 0, res.stderr
    assert "data:image/png;base64," in (tmp_path / "again.html").read_text()

    recipe.write_text(RECIPE.format(drop=0.0))
    res = _cli("compress", str(recipe), "--work-dir", str(tmp_path / "run2"), "--json")
    assert res.returncode == 1
    body = json.loads(res.stdout)
    assert body["passed"] is False and body["artifact"] is None and "dropped" in body["rounds"][0]["verdict"]["reasons"][0]
