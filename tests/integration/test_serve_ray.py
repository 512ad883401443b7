"""The same app deployed on Ray Serve against a local Ray instance."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

import modelpress
from modelpress.serve.config import ServeConfig
from modelpress.serve.testing import free_port, linear_model, write_test_artifact


@pytest.mark.slow
@pytest.mark.ray
def test_ray_serve_deployment_answers_oip_v2(tmp_path):
    import ray
    from ray import serve

    from modelpress.serve.ray_serve import deploy

    w, b = linear_model(tmp_path / "lin.onnx")
    write_test_artifact(tmp_path / "models" / "lin", tmp_path / "lin.onnx")
    config = ServeConfig(model_dir=tmp_path / "models", port=free_port(), access_log=False)
    src = str(Path(modelpress.__file__).resolve().parents[1])
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": src}}, log_to_driver=False)
    try:
        deploy(config, cpus_per_replica=1.0)
        url = f"http://127.0.0.1:{config.port}"
        assert httpx.get(f"{url}/v2/health/ready", timeout=30).json() == {"ready": True}
        assert httpx.get(f"{url}/v2/models/lin", timeout=30).json()["inputs"][0]["shape"] == [-1, 4]
        x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 4], "data": x.ravel().tolist()}]}
        r = httpx.post(f"{url}/v2/models/lin/infer", json=body, timeout=30)
        assert r.status_code == 200, r.text
        got = np.asarray(r.json()["outputs"][0]["data"]).reshape(2, 3)
        np.testing.assert_allclose(got, x @ w + b, rtol=1e-5, atol=1e-5)
        bad = httpx.post(f"{url}/v2/models/lin/infer", content=b"{oops", timeout=30)
        assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]
        assert "modelpress_requests_total" in httpx.get(f"{url}/metrics", timeout=30).text
    finally:
        serve.shutdown()
        ray.shutdown()
