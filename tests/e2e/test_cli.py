"""Drive the `modelpress` command as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

COMMANDS = ["demo", "compress", "finetune", "prune", "distill", "quantize", "export", "eval", "bench", "advise", "registry", "serve", "rollout", "loadtest", "report"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "modelpress.cli.main", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_top_level_help_lists_commands():
    result = run("--help")
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command):
    result = run(command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Example" in result.stdout and f"modelpress {command}" in result.stdout


def test_bad_spec_is_one_line_and_exit_2(tmp_path):
    result = run("export", "torchvision:nope_net", "--out", str(tmp_path / "x"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "torchvision has no model 'nope_net'" in result.stderr
    assert not (tmp_path / "x").exists()


def test_bad_backend_list(tmp_path):
    result = run("bench", "python:modelpress.testing:DigitsNet", "--backend", "onnxruntime,tvm")
    assert result.returncode == 2 and "unknown value(s) tvm" in result.stderr


@pytest.mark.slow
def test_export_then_bench_the_artifact(tmp_path):
    out = tmp_path / "digits"
    result = run("export", "python:modelpress.testing:DigitsNet", "--out", str(out), "--json", str(tmp_path / "e.json"))
    assert result.returncode == 0, result.stderr
    assert (out / "model.onnx").is_file() and json.loads((tmp_path / "e.json").read_text())["max_abs_error"] < 1e-4
    result = run("bench", str(out), "--backend", "onnxruntime,torch", "--batch", "1,2", "--max-seconds", "2", "--json", str(tmp_path / "b.json"))
    assert result.returncode == 0, result.stderr
    cases = json.loads((tmp_path / "b.json").read_text())["cases"]
    assert {(c["backend"], c["batch"]) for c in cases} == {("onnxruntime", 1), ("onnxruntime", 2), ("torch", 1), ("torch", 2)}
    assert "p50 ms" in result.stdout


def test_typer_exit_code_reaches_the_shell():
    code = (
        "import sys, typer\n"
        "from modelpress.cli import main as m\n"
        "@m.app.command('fail-for-test')\n"
        "def _f() -> None:\n"
        "    raise typer.Exit(3)\n"
        "sys.argv = ['modelpress', 'fail-for-test']\n"
        "m.main()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 3
