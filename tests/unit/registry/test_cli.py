"""`modelpress registry ...` end to end through the CLI app."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import modelpress
from modelpress.cli.main import app


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    url = f"sqlite:///{tmp_path / 'cli-reg' / 'registry.db'}"
    monkeypatch.setenv("MODELPRESS_REGISTRY", url)
    runner = CliRunner()

    def invoke(*args: str) -> str:
        result = runner.invoke(app, ["registry", *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    invoke.url = url  # type: ignore[attr-defined]
    return invoke


def test_register_ls_show_alias_rollback_diff_lineage_gc(cli, artifact_factory) -> None:
    first = json.loads(cli("register", "tiny", str(artifact_factory(0)), "--metadata", '{"metrics": {"accuracy": 0.9}}', "--alias", "production", "--json"))
    second = json.loads(cli("register", "tiny", str(artifact_factory(1)), "--parent", "tiny@v1", "--json"))
    assert (first["version"], second["version"]) == (1, 2)
    assert first["aliases"] == ["production"]

    models = json.loads(cli("ls", "--json"))
    assert models == [{**models[0], "name": "tiny", "versions": 2, "latest": 2, "aliases": {"production": 1}}]
    assert "tiny" in cli("ls") and "production" in cli("ls", "tiny")

    cli("alias", "tiny", "production", "v2", "--reason", "faster", "--by", "alice")
    assert json.loads(cli("show", "tiny@production", "--json"))["version"] == 2
    assert "rolled back to v1" in cli("rollback", "tiny", "--reason", "slow p99")
    history = json.loads(cli("alias", "tiny", "production", "--history", "--json"))
    assert [(h["old_version"], h["new_version"], h["reason"]) for h in history] == [
        (None, 1, "registered"), (1, 2, "faster"), (2, 1, "slow p99"),
    ]

    diff = json.loads(cli("diff", "tiny@v1", "tiny@v2", "--json"))
    assert diff["metadata"]["metrics.accuracy"] == {"a": 0.9, "b": None}
    lineage = json.loads(cli("lineage", "tiny@v2", "--json"))
    assert lineage["ancestors"][0]["parent"] == "tiny@v1"
    shown = json.loads(cli("show", "tiny@v1", "--json"))
    assert Path(shown["path"]).is_dir()
    assert json.loads(cli("gc", "--dry-run", "--json"))["orphan_blobs"] == []
    assert "alias history of tiny" in cli("history", "tiny")


def test_a_user_error_is_one_line_and_exit_2(tmp_path: Path, artifact_factory) -> None:
    url = f"sqlite:///{tmp_path / 'reg.db'}"
    env = {**os.environ, "PYTHONPATH": str(Path(modelpress.__file__).resolve().parents[1]), "MODELPRESS_REGISTRY": url}
    proc = subprocess.run(
        [sys.executable, "-m", "modelpress.cli.main", "registry", "show", "ghost@production"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: no model 'ghost' in the registry " + url + "; known: none."]
