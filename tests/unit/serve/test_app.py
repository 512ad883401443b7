"""Every OIP v2 endpoint through Starlette's test client, on tiny ONNX models."""

from __future__ import annotations

import json

import numpy as np
import pytest
from starlette.testclient import TestClient

from modelpress.serve.app import create_app
from modelpress.serve.config import ServeConfig
from modelpress.serve.runner import ModelRunner
from modelpress.serve.testing import OrtSession, linear_model, sequence_model


@pytest.fixture
def models(tmp_path):
    w, b = linear_model(tmp_path / "lin.onnx")
    table = sequence_model(tmp_path / "seq.onnx")
    lin = OrtSession(tmp_path / "lin.onnx")
    seq = OrtSession(tmp_path / "seq.onnx")
    runners = [
        ModelRunner("lin", "1", [lin], lin.input_meta()),
        ModelRunner("lin", "2", [OrtSession(tmp_path / "lin.onnx")], lin.input_meta()),
        ModelRunner("seq", "1", [seq], seq.input_meta()),
    ]
    return runners, w, b, table


@pytest.fixture
def client(models):
    runners = models[0]
    with TestClient(create_app(runners, ServeConfig(max_body_bytes=4096))) as c:
        yield c


def json_infer(x: np.ndarray, name: str = "input", datatype: str = "FP32") -> dict:
    return {"inputs": [{"name": name, "datatype": datatype, "shape": list(x.shape), "data": x.ravel().tolist()}]}


def binary_infer(x: np.ndarray, *, binary_out: bool = True) -> tuple[bytes, dict[str, str]]:
    head = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "parameters": {"binary_data_size": x.nbytes}}],
        "parameters": {"binary_data_output": binary_out},
    }
    hb = json.dumps(head).encode()
    return hb + x.tobytes(), {"Inference-Header-Content-Length": str(len(hb)), "Content-Type": "application/octet-stream"}


def test_health_and_server_metadata(client):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").status_code == 200
    meta = client.get("/v2").json()
    assert meta["name"] == "modelpress" and "binary_tensor_data" in meta["extensions"]


def test_model_metadata_and_ready(client):
    meta = client.get("/v2/models/lin").json()
    assert meta["versions"] == ["1", "2"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 3]}]
    seq = client.get("/v2/models/seq/versions/1").json()
    assert [i["shape"] for i in seq["inputs"]] == [[-1, -1], [-1, -1]]
    assert client.get("/v2/models/lin/versions/2/ready").json() == {"name": "lin", "version": "2", "ready": True}
    r = client.get("/v2/models/nope/ready")
    assert r.status_code == 404 and "unknown model 'nope'" in r.json()["error"]
    r = client.get("/v2/models/lin/versions/7")
    assert r.status_code == 404 and "no version '7'" in r.json()["error"]


def test_json_infer_matches_the_model(client, models):
    _, w, b, _ = models
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    r = client.post("/v2/models/lin/infer", json={**json_infer(x), "id": "abc"})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["model_name"] == "lin" and doc["model_version"] == "2" and doc["id"] == "abc"
    out = doc["outputs"][0]
    assert out["name"] == "logits" and out["shape"] == [3, 3] and out["datatype"] == "FP32"
    np.testing.assert_allclose(np.asarray(out["data"]).reshape(3, 3), x @ w + b, rtol=1e-5, atol=1e-5)
    assert r.headers["x-request-id"]
    r1 = client.post("/v2/models/lin/versions/1/infer", json=json_infer(x))
    assert r1.json()["model_version"] == "1"


def test_binary_infer_round_trips(client, models):
    _, w, b, _ = models
    x = np.random.default_rng(2).standard_normal((5, 4)).astype(np.float32)
    body, headers = binary_infer(x)
    r = client.post("/v2/models/lin/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    head = json.loads(r.content[:n])
    out = head["outputs"][0]
    assert out["parameters"]["binary_data_size"] == 5 * 3 * 4 and "data" not in out
    y = np.frombuffer(r.content[n:], dtype=np.float32).reshape(out["shape"])
    np.testing.assert_allclose(y, x @ w + b, rtol=1e-5, atol=1e-5)
    # binary in, JSON out when the output asks for it
    body, headers = binary_infer(x, binary_out=False)
    r = client.post("/v2/models/lin/infer", content=body, headers=headers)
    assert "inference-header-content-length" not in r.headers
    assert len(r.json()["outputs"][0]["data"]) == 15


def test_sequence_model_with_int64_inputs(client, models):
    table = models[3]
    ids = np.array([[1, 2, 3]], dtype=np.int64)
    mask = np.ones_like(ids)
    body = {
        "inputs": [
            {"name": "input_ids", "datatype": "INT64", "shape": [1, 3], "data": ids.ravel().tolist()},
            {"name": "attention_mask", "datatype": "INT64", "shape": [1, 3], "data": mask.ravel().tolist()},
        ],
        "outputs": [{"name": "embedding"}],
    }
    r = client.post("/v2/models/seq/infer", json=body)
    assert r.status_code == 200, r.text
    outs = r.json()["outputs"]
    assert [o["name"] for o in outs] == ["embedding"]
    np.testing.assert_allclose(outs[0]["data"], table[[1, 2, 3]].mean(axis=0), rtol=1e-5)


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "request body must be a JSON object"),
        (json.dumps({"inputs": []}).encode(), 400, "'inputs' must be a non-empty list"),
        (json.dumps(json_infer(np.zeros((1, 4), np.float32), name="x")).encode(), 400, "unknown input 'x'"),
        (json.dumps(json_infer(np.zeros((1, 5), np.float32))).encode(), 400, "expects [-1, 4]"),
        (json.dumps(json_infer(np.zeros((1, 4), np.int64), datatype="INT64")).encode(), 400, "datatype INT64 but model 'lin' expects FP32"),
        (json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 4], "data": [0.0] * 7}]}).encode(), 400, "has 7 elements but shape [2, 4] needs 8"),
        (json.dumps({"inputs": [{"name": "input", "datatype": "FP99", "shape": [1, 4], "data": [0] * 4}]}).encode(), 400, "datatype must be one of"),
        (json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, -4], "data": [0] * 4}]}).encode(), 400, "shape must be a list of non-negative integers"),
        (json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": ["a"] * 4}]}).encode(), 400, "cannot be read as FP32"),
        (json.dumps({**json_infer(np.zeros((1, 4), np.float32)), "outputs": [{"name": "probs"}]}).encode(), 400, "unknown output 'probs'"),
        (b"x" * 5000, 413, "limit is 4096"),
    ],
)
def test_bad_input_gets_a_4xx_naming_the_problem(client, body, status, needle):
    r = client.post("/v2/models/lin/infer", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status
    assert needle in r.json()["error"]
    # and the server still answers correctly afterwards
    ok = client.post("/v2/models/lin/infer", json=json_infer(np.zeros((1, 4), np.float32)))
    assert ok.status_code == 200


def test_bad_binary_framing_is_a_400(client):
    x = np.zeros((2, 4), np.float32)
    body, headers = binary_infer(x)
    r = client.post("/v2/models/lin/infer", content=body[:-4], headers=headers)
    assert r.status_code == 400 and "runs past the end of the body" in r.json()["error"]
    r = client.post("/v2/models/lin/infer", content=body + b"\0" * 4, headers=headers)
    assert r.status_code == 400 and "4 binary bytes that no input" in r.json()["error"]
    r = client.post("/v2/models/lin/infer", content=body, headers={**headers, "Inference-Header-Content-Length": "zz"})
    assert r.status_code == 400 and "must be an integer" in r.json()["error"]
    head = json.loads(body[: int(headers["Inference-Header-Content-Length"])])
    head["inputs"][0]["parameters"]["binary_data_size"] = 16
    hb = json.dumps(head).encode()
    r = client.post("/v2/models/lin/infer", content=hb + b"\0" * 16, headers={"Inference-Header-Content-Length": str(len(hb))})
    assert r.status_code == 400 and "binary_data_size is 16 bytes but shape [2, 4] of FP32 needs 32" in r.json()["error"]


def test_unknown_model_and_route_answer_json_errors(client):
    r = client.post("/v2/models/ghost/infer", json=json_infer(np.zeros((1, 4), np.float32)))
    assert r.status_code == 404 and "unknown model 'ghost'; loaded models: lin, seq" in r.json()["error"]
    r = client.get("/v3/whatever")
    assert r.status_code == 404 and "error" in r.json()
    r = client.get("/v2/models/lin/infer")
    assert r.status_code == 405 and "error" in r.json()


def test_metrics_count_requests_codes_batches_and_memory(client):
    x = np.zeros((2, 4), np.float32)
    for _ in range(3):
        client.post("/v2/models/lin/infer", json=json_infer(x))
    client.post("/v2/models/lin/infer", content=b"{bad")
    text = client.get("/metrics").text
    assert 'modelpress_requests_total{code="200",model="lin",version="2"} 3.0' in text
    assert 'modelpress_requests_total{code="400",model="lin",version="2"} 1.0' in text
    assert 'modelpress_request_failures_total{code="400",model="lin",version="2"} 1.0' in text
    assert 'modelpress_batch_size_count{model="lin",version="2"} 3.0' in text
    assert 'modelpress_batch_size_sum{model="lin",version="2"} 6.0' in text
    assert 'modelpress_queue_seconds_count{model="lin",version="2"} 3.0' in text
    assert 'modelpress_compute_seconds_count{model="lin",version="2"} 3.0' in text
    assert 'modelpress_request_seconds_count{model="lin",version="2"} 4.0' in text
    assert 'modelpress_queue_depth{model="lin",version="2"} 0.0' in text
    assert 'modelpress_in_flight{model="seq",version="1"} 0.0' in text
    assert "process_resident_memory_bytes" in text


class HeaderRouter:
    """Route by an `x-version` header; remember what was observed."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.recorded: list[tuple[str, int]] = []

    def route(self, headers, entry):
        return headers.get("x-version", entry.default_version)

    def observe(self, version, inputs, result):
        self.seen.append(version)

    def record(self, version, *, latency_s, code):
        self.recorded.append((version, code))


def test_router_seam_picks_the_version(client):
    router = HeaderRouter()
    client.app.state.repository.get("lin").router = router
    x = np.zeros((1, 4), np.float32)
    r = client.post("/v2/models/lin/infer", json=json_infer(x), headers={"x-version": "1"})
    assert r.json()["model_version"] == "1"
    r = client.post("/v2/models/lin/infer", json=json_infer(x))
    assert r.json()["model_version"] == "2"
    r = client.post("/v2/models/lin/infer", content=b"{bad", headers={"x-version": "1"})
    assert r.status_code == 400
    assert router.seen == ["1", "2"]  # successes only, with inputs and outputs
    assert router.recorded == [("1", 200), ("2", 200), ("1", 400)]  # every routed request


def test_config_rejects_unknown_keys_naming_them():
    from modelpress.errors import ConfigError

    with pytest.raises(ConfigError, match=r"`default_model.batching.max_batch`"):
        ServeConfig.parse({"default_model": {"batching": {"max_batch": 4}}})
    with pytest.raises(ConfigError, match=r"`port`"):
        ServeConfig.parse({"port": 70000})
    cfg = ServeConfig.parse({"models": {"lin": {"batching": {"max_batch_size": 16, "max_queue_delay_ms": 5}}}})
    assert cfg.for_model("lin").batching.policy().max_queue_delay_s == 0.005
    assert cfg.for_model("other").batching.max_batch_size == 8
    assert cfg.host == "127.0.0.1"


def test_access_log_never_blocks_the_loop_when_stderr_is_stuck():
    import logging
    import queue

    from modelpress.serve.server import _DroppingQueueHandler

    stuck: queue.Queue = queue.Queue(2)  # nobody drains it, as with a full stderr pipe
    handler = _DroppingQueueHandler(stuck)
    logger = logging.getLogger("test.access.stuck")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    before = _DroppingQueueHandler.dropped
    for i in range(5):
        logger.info('{"n": %d}', i)  # returns at once instead of blocking
    assert stuck.qsize() == 2 and _DroppingQueueHandler.dropped - before == 3
    logger.removeHandler(handler)
