"""Registry + router with real ONNX Runtime sessions: register, resolve by alias, shadow, canary, history."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from modelpress.registry import PolicyRecorder, Registry, policy_history


def _artifact(module: torch.nn.Module, out: Path, *, accuracy: float) -> Path:
    from modelpress.artifact import write_artifact
    from modelpress.export.onnx import export_onnx
    from modelpress.sources.models import ModelHandle, TensorSpec

    inputs = (TensorSpec("input", ("batch", 64)),)
    handle = ModelHandle("tiny-mlp", inputs, ("logits",), "classification", module)
    onnx_path = out.parent / f"{out.name}.onnx"
    export_onnx(handle, onnx_path)
    bare = ModelHandle("tiny-mlp", inputs, ("logits",), "classification", onnx_path=onnx_path)
    return write_artifact(out, handle=bare, manifest={"metrics": {"accuracy": accuracy}})


@pytest.mark.slow
def test_registered_versions_serve_through_shadow_and_canary(tmp_path: Path, tiny_mlp, monkeypatch: pytest.MonkeyPatch) -> None:
    from modelpress.runtime import load_session
    from modelpress.serve.router import CanaryPolicy, Router, ShadowPolicy
    from modelpress.sources.models import load_model

    candidate = copy.deepcopy(tiny_mlp)
    with torch.no_grad():  # a candidate whose answers differ on a visible share of inputs
        candidate[-1].weight.add_(torch.randn_like(candidate[-1].weight) * 0.3)
    url = f"sqlite:///{tmp_path / 'reg' / 'registry.db'}"
    monkeypatch.setenv("MODELPRESS_REGISTRY", url)
    registry = Registry(url)
    registry.register("tiny", _artifact(tiny_mlp, tmp_path / "a", accuracy=0.9))
    registry.register("tiny", _artifact(candidate, tmp_path / "b", accuracy=0.8), parents=["tiny@v1"], recipe={"noise": 0.3})
    registry.set_alias("tiny", "production", 1)
    registry.set_alias("tiny", "candidate", 2)

    # the spec registry:NAME@ALIAS loads the verified stored artifact
    stable_handle = load_model("registry:tiny@production")
    assert stable_handle.onnx_path == registry.path("tiny@v1") / "model.onnx"
    sessions = {"v1": load_session(stable_handle), "v2": load_session(registry.load("tiny@candidate"))}

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 64)).astype(np.float32)
    expected = {v: s.run({"input": x})[0] for v, s in sessions.items()}
    true_disagreement = float(np.mean(expected["v1"].argmax(1) != expected["v2"].argmax(1)))
    assert 0.05 < true_disagreement < 0.6

    router = Router(on_event=PolicyRecorder(registry), seed=0)
    router.add_model("tiny", "v1", by="ops")
    router.set_policy("tiny", ShadowPolicy("v1", "v2", share=1.0), by="alice", reason="compare v2")
    for i in range(400):
        decision = router.route("tiny", key=f"caller-{i}")
        answer = sessions[decision.primary].run({"input": x[i : i + 1]})[0]
        shadow = sessions[decision.shadow].run({"input": x[i : i + 1]})[0]
        router.record(decision, latency_s=0.001)
        router.record_shadow(decision, answer, shadow)
        np.testing.assert_allclose(answer, expected["v1"][i : i + 1], rtol=1e-5, atol=1e-5)  # the client got v1
    stats = router.snapshot("tiny")["shadow"]
    assert stats["top1_agreement"] == pytest.approx(1 - np.mean(expected["v1"][:400].argmax(1) != expected["v2"][:400].argmax(1)))
    assert stats["max_abs_diff"] == pytest.approx(float(np.max(np.abs(expected["v1"][:400] - expected["v2"][:400]))), rel=1e-4)

    canary = CanaryPolicy("v1", "v2", gate=None)
    router.set_policy("tiny", canary, by="alice", reason="canary v2")
    for i in range(len(x)):
        decision = router.route("tiny")
        answer = sessions[decision.primary].run({"input": x[i : i + 1]})[0]
        router.record(decision, latency_s=0.001)
        if decision.shadow is not None:
            router.record_shadow(decision, answer, sessions[decision.shadow].run({"input": x[i : i + 1]})[0])
        if canary.state != "running":
            break
    assert canary.state == "rolled_back" and "disagreement shown worse" in canary.reason
    assert router.policy("tiny").as_dict() == {"kind": "single", "version": "v1"}

    history = policy_history(registry, "tiny")
    assert [c.action for c in history] == ["add", "set_policy", "set_policy", "canary_rollback"]
    assert history[-1].by == "canary-gate" and history[-1].previous["kind"] == "canary"
    assert registry.lineage("tiny@candidate")["ancestors"][0]["recipe"] == {"noise": 0.3}
