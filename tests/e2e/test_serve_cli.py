"""`modelpress serve` and `modelpress loadtest` as a user runs them, with SIGTERM at the end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import modelpress
from modelpress.serve.testing import free_port, linear_model, write_test_artifact

SRC = str(Path(modelpress.__file__).resolve().parents[1])


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]), "COLUMNS": "200"}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "modelpress.cli.main", *args], capture_output=True, text=True, env=_env(), timeout=300)


@pytest.mark.parametrize("command", ["serve", "loadtest"])
def test_help_has_an_example(command):
    result = cli(command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Example" in result.stdout and f"modelpress {command}" in result.stdout


def test_serve_with_an_empty_model_dir_is_one_line_exit_2(tmp_path):
    result = cli("serve", "--model-dir", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "holds no artifact directory" in result.stderr


def test_serve_with_a_bad_flag_value_names_it(tmp_path):
    result = cli("serve", "--model-dir", str(tmp_path), "--padding", "sideways")
    assert result.returncode == 2 and "padding" in result.stderr


@pytest.mark.slow
def test_serve_loadtest_and_sigterm_drain(tmp_path):
    linear_model(tmp_path / "lin.onnx")
    write_test_artifact(tmp_path / "models" / "lin", tmp_path / "lin.onnx")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # stderr to a file: an undrained pipe would fill up with access-log lines
    err_file = (tmp_path / "server.err").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelpress.cli.main", "serve", "--model-dir", str(tmp_path / "models"), "--port", str(port), "--max-batch-size", "4"],
        env=_env(), stdout=subprocess.DEVNULL, stderr=err_file, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        for payload in ("json", "binary"):
            result = cli("loadtest", url, "--model", "lin", "--concurrency", "4", "--duration", "1", "--warmup", "0.2", "--payload", payload, "--json")
            assert result.returncode == 0, result.stderr
            report = json.loads(result.stdout)
            assert report["errors"] == 0 and report["ok"] > 10 and report["p50_ms"] <= report["p99_ms"]
        result = cli("loadtest", url, "--model", "lin", "--rate", "50", "--duration", "1", "--warmup", "0")
        assert result.returncode == 0 and "open loop 50 req/s" in result.stdout and "p99" in result.stdout
        result = cli("loadtest", url, "--model", "ghost", "--duration", "1")
        assert result.returncode == 2 and "unknown model 'ghost'" in result.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        err_file.close()
    err = (tmp_path / "server.err").read_text()
    # uvicorn drains, shuts the lifespan down, then re-raises SIGTERM so the exit status tells why it stopped
    assert proc.returncode in (0, -signal.SIGTERM), err[-2000:]
    assert "Traceback" not in err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert lines and all({"request_id", "status", "ms", "path"} <= set(line) for line in lines)
    assert any(line["path"] == "/v2/models/lin/infer" and line["status"] == 200 for line in lines)
