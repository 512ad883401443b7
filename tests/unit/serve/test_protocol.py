"""Protocol parsing and encoding details beyond the app tests."""

from __future__ import annotations

import json

import numpy as np
import pytest

from modelpress.errors import InferenceInputError, NotFoundError
from modelpress.serve.protocol import InferRequest, RequestedOutput, TensorMeta, encode_infer_response, parse_infer_request, validate_inputs
from modelpress.serve.runner import discover_model_dir


def test_nested_json_data_and_bytes_tensors():
    body = {
        "inputs": [
            {"name": "x", "datatype": "INT32", "shape": [2, 2], "data": [[1, 2], [3, 4]]},
            {"name": "s", "datatype": "BYTES", "shape": [2], "data": ["héllo", "b"]},
        ]
    }
    req = parse_infer_request(json.dumps(body).encode(), None)
    np.testing.assert_array_equal(req.inputs["x"], [[1, 2], [3, 4]])
    assert req.inputs["x"].dtype == np.int32 and req.inputs["s"].tolist() == ["héllo".encode(), b"b"]


def test_binary_bytes_tensor_round_trip_and_truncation():
    items = [b"abc", b"", b"\x00\x01"]
    raw = b"".join(len(i).to_bytes(4, "little") + i for i in items)
    head = json.dumps({"inputs": [{"name": "s", "datatype": "BYTES", "shape": [3], "parameters": {"binary_data_size": len(raw)}}]}).encode()
    req = parse_infer_request(head + raw, str(len(head)))
    assert req.inputs["s"].tolist() == items
    enc = encode_infer_response(model="m", version="1", request=InferRequest(None, {}, (RequestedOutput("s", True),), False, None), output_names=["s"], outputs=[req.inputs["s"]])
    assert enc.body[enc.header_length :] == raw
    with pytest.raises(InferenceInputError, match="ends after 2 of 3 elements"):
        head2 = json.dumps({"inputs": [{"name": "s", "datatype": "BYTES", "shape": [3], "parameters": {"binary_data_size": len(raw) - 6}}]}).encode()
        parse_infer_request(head2 + raw[:-6], str(len(head2)))


def test_validate_collects_every_problem_at_once():
    specs = [TensorMeta("a", "FP32", (-1, 3)), TensorMeta("b", "INT64", (-1, -1))]
    with pytest.raises(InferenceInputError) as info:
        validate_inputs({"a": np.zeros((2, 4), np.float32), "c": np.zeros(1)}, specs, model="m")
    msg = str(info.value)
    assert "unknown input 'c'" in msg and "input 'a' has shape [2, 4]" in msg and "missing input 'b'" in msg
    with pytest.raises(InferenceInputError, match="batch size 3 but another input has 2"):
        validate_inputs({"a": np.zeros((2, 3), np.float32), "b": np.zeros((3, 5), np.int64)}, specs, model="m")


def test_triton_timeout_is_microseconds_and_must_be_positive():
    body = {"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": [1]}], "parameters": {"timeout": 250000}}
    assert parse_infer_request(json.dumps(body).encode(), None).timeout_s == 0.25
    body["parameters"]["timeout"] = -1
    with pytest.raises(InferenceInputError, match="parameters.timeout"):
        parse_infer_request(json.dumps(body).encode(), None)


def test_discover_model_dir_layouts(tmp_path):
    for d in (tmp_path / "a", tmp_path / "b" / "1", tmp_path / "b" / "3"):
        d.mkdir(parents=True)
        (d / "model.onnx").write_bytes(b"x")
        (d / "manifest.json").write_text("{}")
    (tmp_path / "not_a_model").mkdir()
    found = discover_model_dir(tmp_path)
    assert {k: sorted(v) for k, v in found.items()} == {"a": ["1"], "b": ["1", "3"]}
    with pytest.raises(NotFoundError, match="holds no artifact"):
        discover_model_dir(tmp_path / "not_a_model")
