"""The server over real HTTP (uvicorn in a thread): tritonclient, concurrency, back-pressure, shutdown."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import numpy as np
import pytest
from starlette.testclient import TestClient

from modelpress.serve.app import create_app
from modelpress.serve.config import ServeConfig
from modelpress.serve.runner import ModelRunner
from modelpress.serve.server import load_runners
from modelpress.serve.testing import OrtSession, ThreadedServer, linear_model, sequence_model, write_test_artifact


@pytest.fixture
def model_dir(tmp_path):
    linear_model(tmp_path / "lin.onnx")
    sequence_model(tmp_path / "seq.onnx")
    root = tmp_path / "models"
    write_test_artifact(root / "lin", tmp_path / "lin.onnx")
    write_test_artifact(root / "seq", tmp_path / "seq.onnx")
    return root


def slow_runner(tmp_path, delay_s: float, name: str = "slow") -> ModelRunner:
    linear_model(tmp_path / f"{name}.onnx")
    sess = OrtSession(tmp_path / f"{name}.onnx", delay_s=delay_s)
    return ModelRunner(name, "1", [sess], sess.input_meta())


def json_body(x: np.ndarray) -> dict:
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}


def test_tritonclient_http_works_unchanged(model_dir):
    # `make install` brings gevent with tritonclient[http]; a hand-made venv may lack it
    pytest.importorskip("gevent", reason="tritonclient.http needs gevent: pip install 'tritonclient[http]'")
    import tritonclient.http as httpclient

    config = ServeConfig(model_dir=model_dir)
    runners = load_runners(config)
    assert {(r.name, r.version) for r in runners} == {("lin", "1"), ("seq", "1")}
    w_runner = next(r for r in runners if r.name == "lin")
    with ThreadedServer(create_app(runners, config)) as srv:
        client = httpclient.InferenceServerClient(url=srv.url.removeprefix("http://"))
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("lin") and client.is_model_ready("lin", "1")
        meta = client.get_model_metadata("lin")
        assert meta["inputs"][0]["shape"] == [-1, 4]
        assert client.get_server_metadata()["name"] == "modelpress"
        x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
        want = w_runner.run_sync({"input": x})[0]
        for binary_in in (True, False):
            for binary_out in (True, False):
                inp = httpclient.InferInput("input", list(x.shape), "FP32")
                inp.set_data_from_numpy(x, binary_data=binary_in)
                out = httpclient.InferRequestedOutput("logits", binary_data=binary_out)
                result = client.infer("lin", [inp], outputs=[out], request_id="r1")
                np.testing.assert_allclose(result.as_numpy("logits"), want, rtol=1e-6)
                assert result.get_response()["id"] == "r1"
        # no outputs listed: tritonclient asks for every output in binary
        ids = np.array([[4, 5, 6, 7]], dtype=np.int64)
        inputs = [httpclient.InferInput("input_ids", [1, 4], "INT64"), httpclient.InferInput("attention_mask", [1, 4], "INT64")]
        inputs[0].set_data_from_numpy(ids)
        inputs[1].set_data_from_numpy(np.ones_like(ids))
        result = client.infer("seq", inputs)
        assert result.as_numpy("hidden").shape == (1, 4, 8) and result.as_numpy("embedding").shape == (1, 8)
        with pytest.raises(Exception, match="unknown input 'nope'"):
            bad = httpclient.InferInput("nope", [1, 4], "FP32")
            bad.set_data_from_numpy(x[:1])
            client.infer("lin", [bad])
        client.close()


def test_concurrent_callers_each_get_their_own_rows(tmp_path):
    runner = slow_runner(tmp_path, 0.05)
    config = ServeConfig.parse({"default_model": {"batching": {"max_batch_size": 8}}})
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((int(rng.integers(1, 3)), 4)).astype(np.float32) for _ in range(48)]
    with ThreadedServer(create_app([runner], config)) as srv:

        async def go():
            async with httpx.AsyncClient(base_url=srv.url, timeout=30) as c:
                return await asyncio.gather(*(c.post("/v2/models/slow/infer", json=json_body(x)) for x in xs))

        responses = asyncio.run(go())
    calls = list(runner._sessions[0].calls)
    for x, r in zip(xs, responses):
        assert r.status_code == 200, r.text
        got = np.asarray(r.json()["outputs"][0]["data"], dtype=np.float32).reshape(len(x), 3)
        np.testing.assert_allclose(got, runner.run_sync({"input": x})[0], rtol=1e-5, atol=1e-6)
    assert sum(calls) == sum(len(x) for x in xs) + 1  # + the warm-up run
    assert max(calls) > 1 and len(calls) < len(xs)  # requests really were batched


def test_full_queue_answers_503_with_retry_after(tmp_path):
    runner = slow_runner(tmp_path, 0.5)
    config = ServeConfig.parse({"retry_after_s": 2, "default_model": {"batching": {"max_batch_size": 1, "max_queue_size": 2}}})
    x = np.zeros((1, 4), np.float32)
    with ThreadedServer(create_app([runner], config)) as srv:

        async def go():
            async with httpx.AsyncClient(base_url=srv.url, timeout=30) as c:
                return await asyncio.gather(*(c.post("/v2/models/slow/infer", json=json_body(x)) for _ in range(12)))

        codes = [r.status_code for r in asyncio.run(go())]
        rejected = [r for r in asyncio.run(go()) if r.status_code == 503]
        metrics = httpx.get(f"{srv.url}/metrics").text
    assert codes.count(200) >= 2 and codes.count(503) >= 1 and set(codes) <= {200, 503}
    assert rejected and rejected[0].headers["retry-after"] == "2" and "queue is full" in rejected[0].json()["error"]
    assert 'modelpress_requests_total{code="503",model="slow",version="1"}' in metrics


def test_request_timeout_answers_504_and_server_keeps_going(tmp_path):
    runner = slow_runner(tmp_path, 0.3)
    config = ServeConfig.parse({"default_model": {"batching": {"max_batch_size": 1, "timeout_s": 0.1}}})
    x = np.zeros((1, 4), np.float32)
    with ThreadedServer(create_app([runner], config)) as srv:
        r = httpx.post(f"{srv.url}/v2/models/slow/infer", json=json_body(x), timeout=10)
        assert r.status_code == 504 and "0.1 s timeout" in r.json()["error"]
        # a per-request timeout in the body (Triton sends microseconds) overrides the default
        body = {**json_body(x), "parameters": {"timeout": 5_000_000}}
        time.sleep(0.3)
        r = httpx.post(f"{srv.url}/v2/models/slow/infer", json=body, timeout=10)
        assert r.status_code == 200


def test_graceful_shutdown_drains_in_flight_requests(tmp_path):
    runner = slow_runner(tmp_path, 0.15)
    config = ServeConfig.parse({"default_model": {"batching": {"max_batch_size": 1}}})
    x = np.zeros((1, 4), np.float32)
    app = create_app([runner], config)
    loaded = app.state.repository.get("slow").get("1")
    srv = ThreadedServer(app).__enter__()
    results: list[int] = []

    def call():
        r = httpx.post(f"{srv.url}/v2/models/slow/infer", json=json_body(x), timeout=30)
        results.append(r.status_code)

    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while loaded.in_flight < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    srv.stop()  # what SIGTERM does: stop accepting, drain, run lifespan shutdown
    for t in threads:
        t.join(timeout=30)
    assert results == [200] * 6  # every in-flight request finished; none was dropped
    assert len(runner._sessions[0].calls) == 7  # warm-up + 6
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"{srv.url}/v2/models/slow/infer", json=json_body(x), timeout=2)


def test_malformed_requests_neither_crash_nor_stall(model_dir):
    from modelpress.serve.loadtest import LoadConfig, run_load

    config = ServeConfig(model_dir=model_dir)
    with ThreadedServer(create_app(load_runners(config), config)) as srv:
        report = asyncio.run(run_load(LoadConfig(url=srv.url, model="lin", concurrency=4, duration_s=1.5, malformed_share=0.3)))
        ready = httpx.get(f"{srv.url}/v2/health/ready")
    assert report.errors == 0 and report.ok > 20
    assert report.malformed_sent > 5 and report.malformed_rejected == report.malformed_sent
    assert ready.status_code == 200


def test_binary_and_json_sequence_batches_are_padded_correctly(model_dir):
    from modelpress.serve.loadtest import PayloadFactory

    config = ServeConfig(model_dir=model_dir)
    runners = load_runners(config)
    seq = next(r for r in runners if r.name == "seq")
    rng = np.random.default_rng(0)
    lengths = [int(n) for n in rng.integers(2, 12, size=24)]
    with ThreadedServer(create_app(runners, config)) as srv:
        meta = httpx.get(f"{srv.url}/v2/models/seq").json()
        assert PayloadFactory(meta, "binary", seq_len=(2, 5)).next().headers["Inference-Header-Content-Length"]

        async def go():
            async with httpx.AsyncClient(base_url=srv.url, timeout=30) as c:
                reqs = []
                for n in lengths:
                    ids = rng.integers(1, 50, size=(1, n))
                    reqs.append((ids, {"inputs": [
                        {"name": "input_ids", "datatype": "INT64", "shape": [1, n], "data": ids.ravel().tolist()},
                        {"name": "attention_mask", "datatype": "INT64", "shape": [1, n], "data": [1] * n},
                    ]}))
                rs = await asyncio.gather(*(c.post("/v2/models/seq/infer", json=b) for _, b in reqs))
                return reqs, rs

        reqs, rs = asyncio.run(go())
    for (ids, _), r in zip(reqs, rs):
        outs = {o["name"]: o for o in r.json()["outputs"]}
        want_hidden, want_emb = seq.run_sync({"input_ids": ids, "attention_mask": np.ones_like(ids)})
        assert outs["hidden"]["shape"] == list(want_hidden.shape)  # padding cut back to the caller's length
        np.testing.assert_allclose(np.asarray(outs["embedding"]["data"]).reshape(1, -1), want_emb, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_backend_is_chosen_per_model(model_dir, backend):
    config = ServeConfig.parse({"model_dir": str(model_dir), "models": {"lin": {"backend": backend, "threads": 1}}})
    runners = {r.name: r for r in load_runners(config)}
    assert runners["lin"].platform == backend and runners["seq"].platform == "onnxruntime"
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    with TestClient(create_app(list(runners.values()), config)) as client:
        r = client.post("/v2/models/lin/infer", json=json_body(x))
        assert r.status_code == 200, r.text
        got = np.asarray(r.json()["outputs"][0]["data"]).reshape(2, 3)
    ref = OrtSession(model_dir / "lin" / "model.onnx").run({"input": x})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_models_are_served_from_the_registry_by_alias(model_dir, tmp_path):
    from modelpress.registry.store import open_registry

    url = f"sqlite:///{tmp_path / 'reg' / 'registry.db'}"
    registry = open_registry(url)
    v1 = registry.register("lin", model_dir / "lin")
    registry.register("embed", model_dir / "seq")
    registry.set_alias("lin", "production", v1.number)
    registry.close()
    config = ServeConfig(registry=url, registry_models=("lin@production", "embed"))
    runners = {(r.name, r.version) for r in load_runners(config)}
    assert runners == {("lin", str(v1.number)), ("embed", "1")}
    with pytest.raises(Exception, match="ghost"):
        load_runners(ServeConfig(registry=url, registry_models=("ghost@production",)))
