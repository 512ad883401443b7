"""RolloutControl's parts: live stats, the background history writer, loading by registry reference."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from starlette.testclient import TestClient

from modelpress.serve.app import create_app
from modelpress.serve.config import ServeConfig
from modelpress.serve.management import install_rollout
from modelpress.serve.rollout import BackgroundRecorder, LiveStats
from modelpress.serve.router import Router
from modelpress.serve.testing import linear_model, write_test_artifact


def test_live_stats_window_percentiles_and_errors(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr("modelpress.serve.rollout.time.monotonic", lambda: now[0])
    stats = LiveStats(window_s=10.0)
    stats.add("m", "v1", 5.0, ok=True)  # falls out of the window below
    now[0] += 20
    for ms in range(1, 101):
        stats.add("m", "v1", ms / 1000, ok=True)
    stats.add("m", "v1", None, ok=False)
    summary = stats.summary("m", "v1")
    assert summary["qps"] == pytest.approx(101 / 10)
    assert summary["errors"] == 1
    assert summary["p50_ms"] == pytest.approx(50.5)
    assert summary["p99_ms"] == pytest.approx(99.01)
    assert stats.summary("m", "v9") == {"qps": 0.0, "errors": 0, "p50_ms": None, "p99_ms": None}


def test_background_recorder_never_blocks_the_change():
    release = threading.Event()
    written = []

    def slow_write(event):
        release.wait(5)
        if event.action == "switch":
            written.append("boom")
            raise RuntimeError("database is locked")
        written.append(event.action)

    recorder = BackgroundRecorder(slow_write)
    router = Router(on_event=recorder)
    router.add_model("m", "v1")
    started = time.perf_counter()
    router.switch("m", "v2")
    router.rollback("m")
    took = time.perf_counter() - started
    assert took < 0.5  # the writer is stuck in release.wait(); the changes were not
    assert router.policy("m").as_dict() == {"kind": "single", "version": "v1"}
    release.set()
    recorder.close()
    # a failing write is logged and skipped; the writer goes on with the next event
    assert written == ["add", "boom", "rollback"]


def test_serve_and_load_by_registry_reference(tmp_path):
    from modelpress.registry import Registry

    registry = Registry(f"sqlite:///{tmp_path / 'reg.db'}")
    weights = {}
    for seed in (1, 2):
        weights[seed] = linear_model(tmp_path / f"m{seed}.onnx", seed=seed)
        registry.register("lin", write_test_artifact(tmp_path / f"a{seed}", tmp_path / f"m{seed}.onnx"))
    registry.set_alias("lin", "production", 1)
    from modelpress.serve.server import load_runners

    config = ServeConfig(access_log=False, registry=f"sqlite:///{tmp_path / 'reg.db'}", registry_models=("lin@production",))
    runners = load_runners(config)
    assert [(r.name, r.version) for r in runners] == [("lin", "1")]
    app = create_app(runners, config, rollout=False)
    install_rollout(app, token="t", registry=registry)
    auth = {"Authorization": "Bearer t"}
    x = np.ones((1, 4), np.float32)
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": x.ravel().tolist()}]}
    with TestClient(app) as client:
        r = client.post("/management/models/lin/versions", json={"ref": "2", "switch": True, "by": "ci"}, headers=auth)
        assert r.status_code == 200, r.text
        assert r.json()["loaded"] == "2"
        out = client.post("/v2/models/lin/infer", json=body).json()
        w, b = weights[2]
        assert out["model_version"] == "2"
        np.testing.assert_allclose(np.array(out["outputs"][0]["data"]), (x @ w + b).ravel(), rtol=1e-5)
        missing = client.post("/management/models/lin/versions", json={"ref": "lin@v7"}, headers=auth)
        assert missing.status_code == 404 and "v7" in missing.json()["error"]
        both = client.post("/management/models/lin/versions", json={"ref": "2", "artifact_dir": "/x"}, headers=auth)
        assert both.status_code == 400 and "exactly one" in both.json()["error"]
        assert client.get("/management/models/lin/history").status_code == 200
    # the writer is a background thread; leaving the client shut the server down, which flushed it
    from modelpress.registry import policy_history

    assert [(h.action, h.by) for h in policy_history(registry, "lin")][-1] == ("switch", "ci")


def test_loading_by_reference_needs_a_registry(tmp_path):
    linear_model(tmp_path / "m.onnx")
    from modelpress.serve.runner import load_runner

    art = write_test_artifact(tmp_path / "a", tmp_path / "m.onnx")
    app = create_app([load_runner("lin", "v1", art)], ServeConfig(access_log=False, token="t"))
    with TestClient(app) as client:
        r = client.post("/management/models/lin/versions", json={"ref": "lin@v2"}, headers={"Authorization": "Bearer t"})
        assert r.status_code == 400 and "--registry" in r.json()["error"]
        assert client.get("/management/models/lin/history").status_code == 404


def test_router_promote_keeps_the_old_version_as_rollback_target():
    from modelpress.errors import ConfigError
    from modelpress.serve.router import ABSplit, ShadowPolicy

    router = Router()
    router.add_model("m", ShadowPolicy("v1", "v2", share=0.5))
    event = router.promote("m", by="ops", reason="agreement 99.9%")
    assert (event.action, event.policy, event.previous["kind"]) == ("promote", {"kind": "single", "version": "v2"}, "shadow")
    assert router.warm_versions("m") == {"v1", "v2"}
    assert router.rollback("m").policy == {"kind": "single", "version": "v1"}

    router.set_policy("m", ABSplit({"v1": 0.5, "v2": 0.5}))
    with pytest.raises(ConfigError, match="needs `version`, one of v1, v2"):
        router.promote("m")
    router.promote("m", "v2")
    assert router.rollback("m").policy["kind"] == "ab"  # a split's rollback target is the split itself
    router.set_policy("m", ShadowPolicy("v1", "v2"))
    with pytest.raises(ConfigError, match="is not the candidate"):
        router.promote("m", "v1")
    assert router.policy("m").kind == "shadow"
