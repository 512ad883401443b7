"""Load generator pieces that need no server: payloads and report merging."""

from __future__ import annotations

import json

import numpy as np

from modelpress.serve.loadtest import LoadReport, PayloadFactory
from modelpress.serve.protocol import parse_infer_request

META = {"inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [-1, -1]}, {"name": "attention_mask", "datatype": "INT64", "shape": [-1, -1]}]}


def test_binary_payloads_parse_and_draw_lengths_in_range():
    f = PayloadFactory(META, "binary", batch=2, seq_len=(3, 6), seed=1)
    lengths = set()
    for _ in range(40):
        req = f.next()
        parsed = parse_infer_request(req.body, req.headers["Inference-Header-Content-Length"])
        ids, mask = parsed.inputs["input_ids"], parsed.inputs["attention_mask"]
        assert ids.shape == mask.shape and ids.shape[0] == 2 and (mask == 1).all()
        lengths.add(ids.shape[1])
    assert lengths == {3, 4, 5, 6}


def test_json_payloads_and_malformed_share():
    f = PayloadFactory({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]}, "json", seed=0)
    body = json.loads(f.next().body)
    assert body["inputs"][0]["shape"] == [1, 4] and len(body["inputs"][0]["data"]) == 4
    reqs = [f.next(malformed_share=0.5) for _ in range(400)]
    share = sum(r.malformed for r in reqs) / len(reqs)
    assert 0.4 < share < 0.6


def test_merge_recomputes_percentiles_from_all_latencies():
    a = LoadReport("m", requests=2, ok=2, duration_s=1.0, latencies_ms=[1.0, 2.0], status_counts={"200": 2}).finish()
    b = LoadReport("m", requests=3, ok=2, errors=1, duration_s=1.0, latencies_ms=[3.0, 100.0], status_counts={"200": 2, "503": 1}).finish()
    m = LoadReport.merge([a, b])
    assert m.ok == 4 and m.errors == 1 and m.throughput_rps == 2.0
    assert m.status_counts == {"200": 4, "503": 1}
    assert m.p50_ms == float(np.percentile([1, 2, 3, 100], 50)) and m.max_ms == 100.0
