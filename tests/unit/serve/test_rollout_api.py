"""The management API over Starlette's test client: auth, every policy, shadow, canary, history."""

from __future__ import annotations

import time

import numpy as np
import pytest
from starlette.testclient import TestClient

from modelpress.serve.app import create_app
from modelpress.serve.config import ServeConfig
from modelpress.serve.management import install_rollout
from modelpress.serve.rollout import RolloutOptions
from modelpress.serve.runner import ModelRunner
from modelpress.serve.testing import OrtSession, linear_model, write_test_artifact

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# A gate that decides within a few dozen requests, for tests (defaults need hundreds).
FAST_GATE = {
    "alpha": 0.05, "beta": 0.05, "latency": None,
    "disagreement": {"p0": 0.05, "p1": 0.5}, "error_rate": {"p0": 0.05, "p1": 0.5},
}


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("lin")
    weights = {}
    for name, seed in (("a", 1), ("b", 2)):
        weights[name] = linear_model(d / f"{name}.onnx", seed=seed)
    return d, weights


def runner(onnx_files, version: str, which: str) -> ModelRunner:
    path = onnx_files[0] / f"{which}.onnx"
    session = OrtSession(path)
    return ModelRunner("lin", version, [session], session.input_meta())


def make_client(onnx_files, *, token: str | None = TOKEN, versions=(("v1", "a"), ("v2", "b")), registry=None) -> TestClient:
    app = create_app([runner(onnx_files, v, w) for v, w in versions], ServeConfig(access_log=False), rollout=False)
    install_rollout(app, token=token, registry=registry, options=RolloutOptions(shadow_max_queue=10_000))
    return TestClient(app)


@pytest.fixture
def client(onnx_files):
    with make_client(onnx_files) as c:
        c.post("/management/models/lin/switch", json={"version": "v1"}, headers=AUTH).raise_for_status()
        yield c


def infer(client: TestClient, x: np.ndarray, *, caller: str | None = None) -> dict:
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
    headers = {"X-Caller-Id": caller} if caller is not None else {}
    response = client.post("/v2/models/lin/infer", json=body, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def logits(doc: dict) -> np.ndarray:
    out = doc["outputs"][0]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


WRITES = [
    ("/management/models/lin/switch", {"version": "v2"}),
    ("/management/models/lin/split", {"weights": {"v1": 0.5, "v2": 0.5}}),
    ("/management/models/lin/shadow", {"candidate": "v2"}),
    ("/management/models/lin/canary", {"candidate": "v2"}),
    ("/management/models/lin/promote", {}),
    ("/management/models/lin/rollback", {}),
    ("/management/models/lin/policy", {"policy": {"kind": "single", "version": "v2"}}),
    ("/management/models/lin/versions", {"version": "v9", "artifact_dir": "/nowhere"}),
]


@pytest.mark.parametrize(("path", "body"), WRITES)
def test_writes_need_the_token(client, path, body):
    before = client.get("/management/models/lin").json()["policy"]
    assert client.post(path, json=body).status_code == 401
    assert client.post(path, json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.post(path, json=body, headers={"Authorization": TOKEN}).status_code == 401  # no "Bearer"
    assert client.get("/management/models/lin").json()["policy"] == before
    assert client.delete("/management/models/lin/versions/v2").status_code == 401


@pytest.mark.parametrize("token", [None, ""])
def test_without_a_token_writes_are_disabled_and_reads_open(onnx_files, token):
    with make_client(onnx_files, token=token) as c:
        refused = c.post("/management/models/lin/switch", json={"version": "v1"}, headers=AUTH)
        assert refused.status_code == 403
        assert c.post("/management/models/lin/switch", json={"version": "v1"}, headers={"Authorization": "Bearer "}).status_code == 403
        assert "disabled" in refused.json()["error"]
        status = c.get("/management/status")
        assert status.status_code == 200
        assert status.json()["models"][0]["policy"] == {"kind": "single", "version": "v2"}
        assert c.get("/management/models/lin").status_code == 200


def test_bad_bodies_name_the_field(client):
    r = client.post("/management/models/lin/split", json={"weights": {"v1": 1}, "wieghts": 2}, headers=AUTH)
    assert r.status_code == 400 and "wieghts" in r.json()["error"]
    r = client.post("/management/models/lin/shadow", json={"candidate": "v2", "share": 1.5}, headers=AUTH)
    assert r.status_code == 400 and "share" in r.json()["error"]
    r = client.post("/management/models/lin/policy", json={"policy": {"kind": "canary", "stable": "v1", "candidate": "v2", "gate": {"alpha": 0.7}}}, headers=AUTH)
    assert r.status_code == 400 and "gate.alpha" in r.json()["error"]
    r = client.post("/management/models/lin/split", json={"weights": {"v1": 0.5, "v7": 0.5}}, headers=AUTH)
    assert r.status_code == 404 and "'v7'" in r.json()["error"]
    assert client.post("/management/models/nope/switch", json={"version": "v1"}, headers=AUTH).status_code == 404


def test_switch_and_rollback_take_effect_for_the_next_request(client, onnx_files):
    x = np.ones((3, 4), np.float32)
    w, b = onnx_files[1]["b"]
    r = client.post("/management/models/lin/switch", json={"version": "v2", "reason": "test"}, headers=AUTH)
    assert r.status_code == 200 and r.json()["event"]["action"] == "switch"
    doc = infer(client, x)
    assert doc["model_version"] == "v2"
    np.testing.assert_allclose(logits(doc), x @ w + b, rtol=1e-5)
    r = client.post("/management/models/lin/rollback", json={}, headers=AUTH)
    assert r.json()["event"]["policy"] == {"kind": "single", "version": "v1"}
    assert r.json()["took_ms"] < 1000
    assert all(infer(client, x)["model_version"] == "v1" for _ in range(5))
    assert client.get("/management/models/lin").json()["versions"]["v2"]["warm"] is True


def test_ab_split_is_sticky_per_caller_and_close_to_the_weights(client):
    r = client.post("/management/models/lin/split", json={"weights": {"v1": 0.7, "v2": 0.3}}, headers=AUTH)
    assert r.json()["status"]["split"] == {"v1": 0.7, "v2": 0.3}
    x = np.zeros((1, 4), np.float32)
    first = {f"c{i}": infer(client, x, caller=f"c{i}")["model_version"] for i in range(200)}
    again = {f"c{i}": infer(client, x, caller=f"c{i}")["model_version"] for i in range(0, 200, 10)}
    assert all(first[k] == v for k, v in again.items())
    share_v2 = sum(v == "v2" for v in first.values()) / len(first)
    assert 0.2 < share_v2 < 0.4


def test_shadow_never_changes_the_clients_answer(client, onnx_files):
    x = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)
    wa, ba = onnx_files[1]["a"]
    r = client.post("/management/models/lin/shadow", json={"candidate": "v2", "share": 1.0}, headers=AUTH)
    assert r.status_code == 200
    for _ in range(30):
        doc = infer(client, x)
        assert doc["model_version"] == "v1"
        np.testing.assert_allclose(logits(doc), x @ wa + ba, rtol=1e-5)
    deadline = time.monotonic() + 5
    while (stats := client.get("/management/models/lin").json()["shadow"])["requests"] < 30 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert stats["requests"] == 30 and stats["errors"] == 0
    # v2 has other weights, so the comparison must see differences
    assert stats["max_abs_diff"] > 0.1
    assert stats["top1_agreement"] is not None and stats["top1_agreement"] < 1.0


def test_shadow_is_shed_when_the_queue_is_long(onnx_files):
    app = create_app([runner(onnx_files, "v1", "a"), runner(onnx_files, "v2", "b")], ServeConfig(access_log=False), rollout=False)
    control = install_rollout(app, token=TOKEN, options=RolloutOptions(shadow_max_queue=-1))
    with TestClient(app) as c:
        c.post("/management/models/lin/shadow", json={"candidate": "v2", "primary": "v1", "share": 1.0}, headers=AUTH).raise_for_status()
        for _ in range(10):
            assert infer(c, np.ones((1, 4), np.float32))["model_version"] == "v1"
        assert control.shadow_shed == 10 and control.shadow_runs == 0


def test_canary_of_an_identical_candidate_promotes_itself(onnx_files):
    with make_client(onnx_files, versions=(("v1", "a"), ("v2", "a"))) as c:
        c.post("/management/models/lin/switch", json={"version": "v1"}, headers=AUTH).raise_for_status()
        body = {"candidate": "v2", "steps": [0.5, 1.0], "min_samples_per_step": 5, "max_samples": 500, "gate": FAST_GATE}
        r = c.post("/management/models/lin/canary", json=body, headers=AUTH)
        assert r.status_code == 200 and r.json()["status"]["canary"]["state"] == "running"
        x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
        for i in range(300):
            infer(c, x, caller=f"u{i}")
            if c.get("/management/models/lin").json()["policy"]["kind"] == "single":
                break
        status = c.get("/management/models/lin").json()
        assert status["policy"] == {"kind": "single", "version": "v2"}
        assert status["previous"] == {"kind": "single", "version": "v1"}
        assert infer(c, x)["model_version"] == "v2"


def test_canary_of_a_disagreeing_candidate_rolls_back_by_itself(client):
    body = {"candidate": "v2", "steps": [0.5, 1.0], "min_samples_per_step": 50, "max_samples": 500, "gate": FAST_GATE}
    assert client.post("/management/models/lin/canary", json=body, headers=AUTH).status_code == 200
    x = np.random.default_rng(2).standard_normal((8, 4)).astype(np.float32)
    for i in range(300):
        infer(client, x, caller=f"u{i}")
        if client.get("/management/models/lin").json()["policy"]["kind"] == "single":
            break
    status = client.get("/management/models/lin").json()
    assert status["policy"] == {"kind": "single", "version": "v1"}
    assert all(infer(client, x, caller=f"u{i}")["model_version"] == "v1" for i in range(20))


def test_promote_and_rollback_of_a_canary_by_hand(client):
    assert client.post("/management/models/lin/canary", json={"candidate": "v2"}, headers=AUTH).status_code == 200
    r = client.post("/management/models/lin/promote", json={"reason": "looks good"}, headers=AUTH)
    assert r.json()["event"]["action"] == "promote"
    assert r.json()["status"]["policy"] == {"kind": "single", "version": "v2"}
    r = client.post("/management/models/lin/rollback", json={}, headers=AUTH)
    assert r.json()["status"]["policy"] == {"kind": "single", "version": "v1"}
    r = client.post("/management/models/lin/promote", json={}, headers=AUTH)
    assert r.status_code == 400 and "no candidate" in r.json()["error"]


def test_load_from_an_artifact_dir_then_unload(client, onnx_files, tmp_path):
    artifact = write_test_artifact(tmp_path / "art", onnx_files[0] / "b.onnx")
    r = client.post("/management/models/lin/versions", json={"version": "v3", "artifact_dir": str(artifact), "switch": True}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["status"]["policy"] == {"kind": "single", "version": "v3"}
    assert infer(client, np.ones((1, 4), np.float32))["model_version"] == "v3"
    again = client.post("/management/models/lin/versions", json={"version": "v3", "artifact_dir": str(artifact)}, headers=AUTH)
    assert again.status_code == 400 and "already" in again.json()["error"]
    # v1 is the rollback target, so it stays loaded; v2 left the warm set and was retired
    assert client.delete("/management/models/lin/versions/v1", headers=AUTH).status_code == 409
    assert wait_for_versions(client, {"v1", "v3"})
    # a version loaded for later and never routed to can be unloaded by hand
    client.post("/management/models/lin/versions", json={"version": "v4", "artifact_dir": str(artifact)}, headers=AUTH).raise_for_status()
    assert client.get("/management/models/lin").json()["versions"]["v4"]["routed"] is False
    assert client.delete("/management/models/lin/versions/v4", headers=AUTH).status_code == 200
    assert set(client.get("/management/models/lin").json()["versions"]) == {"v1", "v3"}


def wait_for_versions(client: TestClient, expected: set[str]) -> bool:
    deadline = time.monotonic() + 5
    while set(client.get("/management/models/lin").json()["versions"]) != expected:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_a_version_leaving_the_warm_set_is_unloaded(client):
    client.post("/management/models/lin/switch", json={"version": "v2"}, headers=AUTH).raise_for_status()
    # v1 is still warm as the rollback target; a split of v2 alone pushes it out
    client.post("/management/models/lin/split", json={"weights": {"v2": 1.0}}, headers=AUTH).raise_for_status()
    assert wait_for_versions(client, {"v2"})


def test_policy_changes_are_recorded_in_the_registry(onnx_files, tmp_path):
    from modelpress.registry import Registry, policy_history

    registry = Registry(f"sqlite:///{tmp_path / 'reg.db'}")
    with make_client(onnx_files, registry=registry) as c:
        c.post("/management/models/lin/switch", json={"version": "v1", "by": "alice", "reason": "pin"}, headers=AUTH).raise_for_status()
        c.post("/management/models/lin/split", json={"weights": {"v1": 0.9, "v2": 0.1}}, headers=AUTH).raise_for_status()
        c.post("/management/models/lin/rollback", json={"reason": "oops"}, headers=AUTH).raise_for_status()
    # leaving the client shut the server down, which writes out the queued history
    actions = [(h.action, h.by, h.reason) for h in policy_history(registry, "lin")]
    assert actions[1:] == [("switch", "alice", "pin"), ("set_policy", "api", ""), ("rollback", "api", "oops")]
    assert actions[0][0] == "add"


def test_dashboard_files_are_served(client):
    page = client.get("/dashboard/")
    assert page.status_code == 200 and "/dashboard/dashboard.js" in page.text
    assert "refresh" in client.get("/dashboard/dashboard.js").text
    assert client.get("/dashboard/dashboard.css").headers["content-type"].startswith("text/css")
    assert client.get("/dashboard/../app.py").status_code == 404
    assert client.get("/dashboard", follow_redirects=False).status_code == 307


class FailingSession(OrtSession):
    """An ONNX Runtime session that raises once ``failing`` is set (after the runner's warm-up probe)."""

    failing = False

    def run(self, inputs):
        if self.failing:
            raise RuntimeError("candidate crashed")
        return super().run(inputs)


def test_canary_rolls_back_on_candidate_errors_and_clients_see_only_those(onnx_files):
    good = OrtSession(onnx_files[0] / "a.onnx")
    bad = FailingSession(onnx_files[0] / "a.onnx")
    runners = [ModelRunner("lin", "v1", [good], good.input_meta()), ModelRunner("lin", "v2", [bad], bad.input_meta())]
    bad.failing = True
    app = create_app(runners, ServeConfig(access_log=False), rollout=False)
    install_rollout(app, token=TOKEN)
    gate = {**FAST_GATE, "disagreement": None}
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [0.0] * 4}]}
    with TestClient(app) as c:
        c.post("/management/models/lin/switch", json={"version": "v1"}, headers=AUTH).raise_for_status()
        r = c.post("/management/models/lin/canary", json={"candidate": "v2", "steps": [0.5, 1.0], "gate": gate, "compare": False}, headers=AUTH)
        assert r.status_code == 200, r.text
        codes = []
        for i in range(100):
            codes.append(c.post("/v2/models/lin/infer", json=body, headers={"X-Caller-Id": f"u{i}"}).status_code)
            if c.get("/management/models/lin").json()["policy"]["kind"] == "single":
                break
        status = c.get("/management/models/lin").json()
        assert status["policy"] == {"kind": "single", "version": "v1"}
        assert set(codes) == {200, 500} and codes.count(500) <= 10  # the gate stopped it within a few failures
        assert all(c.post("/v2/models/lin/infer", json=body, headers={"X-Caller-Id": f"u{i}"}).status_code == 200 for i in range(20))
