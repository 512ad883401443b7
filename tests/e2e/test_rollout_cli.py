"""`modelpress serve --registry` and `modelpress rollout ...` as an operator runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

import modelpress
from modelpress.serve.testing import ServerProcess, free_port, linear_model, write_test_artifact

SRC = str(Path(modelpress.__file__).resolve().parents[1])
TOKEN = "e2e-admin-token"


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]), "COLUMNS": "200", **extra}


def cli(*args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    env = _env(MODELPRESS_ADMIN_TOKEN=token) if token else {k: v for k, v in _env().items() if k != "MODELPRESS_ADMIN_TOKEN"}
    return subprocess.run([sys.executable, "-m", "modelpress.cli.main", *args], capture_output=True, text=True, env=env, timeout=300)


def test_rollout_help_has_examples():
    result = cli("rollout", "--help")
    assert result.returncode == 0
    for command in ("status", "split", "shadow", "canary", "promote", "rollback"):
        assert command in result.stdout
        sub = cli("rollout", command, "--help")
        assert sub.returncode == 0 and f"modelpress rollout {command}" in sub.stdout


def test_rollout_against_no_server_is_one_line_exit_2():
    result = cli("rollout", "status", "--server", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "cannot reach the server" in result.stderr


@pytest.fixture
def registry_server(tmp_path):
    from modelpress.registry import Registry

    url = f"sqlite:///{tmp_path / 'registry.db'}"
    registry = Registry(url)
    for seed in (1, 2):
        linear_model(tmp_path / f"m{seed}.onnx", seed=seed)
        registry.register("lin", write_test_artifact(tmp_path / f"art{seed}", tmp_path / f"m{seed}.onnx"))
    registry.set_alias("lin", "production", 1, reason="first")
    registry.close()
    with ServerProcess("--registry", url, "--model", "lin@production", "--admin-token", TOKEN, "--no-access-log") as server:
        yield server.url, url


def infer(server: str, caller: str) -> str:
    x = np.ones((1, 4), np.float32)
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": x.ravel().tolist()}]}
    r = httpx.post(f"{server}/v2/models/lin/infer", json=body, headers={"X-Caller-Id": caller}, timeout=30)
    r.raise_for_status()
    return r.json()["model_version"]


@pytest.mark.slow
def test_serve_from_the_registry_and_roll_out_with_the_cli(registry_server):
    server, url = registry_server
    status = json.loads(cli("rollout", "status", "lin", "--server", server, "--json").stdout)
    assert status["policy"] == {"kind": "single", "version": "1"}

    refused = cli("rollout", "rollback", "lin", "--server", server, token="wrong")
    assert refused.returncode == 2 and "refused (401)" in refused.stderr

    loaded = cli("rollout", "load", "lin", "--ref", "lin@v2", "--server", server, "--json")
    assert loaded.returncode == 0, loaded.stderr
    assert json.loads(loaded.stdout)["loaded"] == "2"  # the registry's number, as `serve --model` names versions

    split = cli("rollout", "split", "lin", "1=0.5", "2=0.5", "--server", server, "--reason", "half", "--by", "ops")
    assert split.returncode == 0, split.stderr
    assert {infer(server, f"c{i}") for i in range(40)} == {"1", "2"}

    shadow = cli("rollout", "shadow", "lin", "2", "--primary", "1", "--share", "1", "--server", server, "--json")
    assert json.loads(shadow.stdout)["status"]["policy"]["kind"] == "shadow"
    assert {infer(server, f"c{i}") for i in range(10)} == {"1"}

    canary = cli("rollout", "canary", "lin", "2", "--stable", "1", "--steps", "0.1,1", "--server", server, "--json")
    assert canary.returncode == 0, canary.stderr
    assert json.loads(canary.stdout)["status"]["canary"]["state"] == "running"
    shown = cli("rollout", "status", "--server", server)
    assert "canary: running, step 1/2" in shown.stdout

    promoted = json.loads(cli("rollout", "promote", "lin", "--server", server, "--json").stdout)
    assert promoted["status"]["policy"] == {"kind": "single", "version": "2"}
    assert infer(server, "anyone") == "2"
    rolled = cli("rollout", "rollback", "lin", "--server", server, "--reason", "p99 regression")
    assert rolled.returncode == 0 and "rollback: lin now" in rolled.stdout
    assert infer(server, "anyone") == "1"

    # the history reaches the registry from the server's background writer
    deadline = time.monotonic() + 10
    while True:
        history = json.loads(cli("registry", "history", "lin", "--registry", url, "--json").stdout)
        actions = [e["action"] for e in history["policies"]]
        if actions[-1:] == ["rollback"] or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert actions[-5:] == ["set_policy", "set_policy", "set_policy", "promote", "rollback"]
