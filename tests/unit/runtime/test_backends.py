from __future__ import annotations

import numpy as np
import pytest

from modelpress.errors import BackendError, ConfigError
from modelpress.export.onnx import ExportConfig, export_onnx, torch_outputs
from modelpress.runtime import RuntimeOptions, get_backend, load_session
from modelpress.runtime.base import Session
from modelpress.runtime.evaluate import evaluate, score
from modelpress.sources.data import Split
from modelpress.sources.models import load_model


@pytest.fixture(scope="module")
def digits_handle(tmp_path_factory):
    handle = load_model("python:modelpress.testing:DigitsNet")
    report = export_onnx(handle, tmp_path_factory.mktemp("d") / "m.onnx", ExportConfig(exporter="torchscript"))
    return handle.with_onnx(report.path)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "torch"])
def test_backends_run_named_batches(digits_handle, backend):
    session = load_session(digits_handle, backend, RuntimeOptions(threads=1))
    assert isinstance(session, Session)
    inputs = digits_handle.example_inputs(batch=4)
    (out,) = session.run(inputs)
    np.testing.assert_allclose(out, torch_outputs(digits_handle, inputs)[0], atol=1e-4, rtol=1e-3)
    assert session.input_names == ("input",) and session.threads == 1


def test_unknown_backend():
    with pytest.raises(ConfigError, match="unknown backend 'tvm'; choose from onnxruntime"):
        get_backend("tvm")


def test_onnx_backends_need_an_onnx_file():
    handle = load_model("python:modelpress.testing:DigitsNet")
    with pytest.raises(BackendError, match="needs an ONNX file"):
        load_session(handle, "onnxruntime")


def test_torch_backend_refuses_to_stand_in_for_a_quantized_graph(digits_handle):
    import dataclasses

    int8 = dataclasses.replace(digits_handle, precision="int8")
    with pytest.raises(BackendError, match="not its int8 ONNX graph"):
        load_session(int8, "torch")


def test_evaluate_accuracy_agreement_and_cosine(digits_handle):
    session = load_session(digits_handle, "onnxruntime")
    x = np.random.default_rng(0).standard_normal((40, 1, 8, 8)).astype(np.float32)
    ref = torch_outputs(digits_handle, {"input": x})[0]
    labels = ref.argmax(1)
    assert evaluate(session, digits_handle, Split(x, labels)).value == pytest.approx(1.0)
    agree = evaluate(session, digits_handle, Split(x), reference=ref)
    assert agree.metric == "agreement" and agree.value == pytest.approx(1.0)
    wrong = (labels + 1) % 10
    assert evaluate(session, digits_handle, Split(x, wrong), batch_size=7).value == pytest.approx(0.0)


def test_score_cosine_for_embeddings(digits_handle):
    import dataclasses

    emb = dataclasses.replace(digits_handle, task="embedding")
    a = np.random.default_rng(0).standard_normal((5, 8))
    assert score(emb, a, None, a, "x").value == pytest.approx(1.0)
    assert score(emb, a, None, -a, "x").value == pytest.approx(-1.0)


@pytest.mark.parametrize("spin", [True, False])
def test_onnxruntime_spin_wait_follows_the_options(digits_handle, spin):
    session = load_session(digits_handle, "onnxruntime", RuntimeOptions(threads=2, spin_wait=spin))
    options = session._session.get_session_options()
    if spin:  # ONNX Runtime's default, left unset
        with pytest.raises(RuntimeError):
            options.get_session_config_entry("session.intra_op.allow_spinning")
    else:
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_side_by_side_bench_turns_spinning_off(digits_handle, monkeypatch):
    """Cases timed round-robin on shared cores must not leave a spinning pool behind for the next one."""
    import modelpress.runtime as runtime
    from modelpress.bench.measure import BenchConfig, BenchEntry, bench

    seen = []
    real = runtime.load_session

    def spy(handle, backend, options):
        seen.append(options.spin_wait)
        return real(handle, backend, options)

    monkeypatch.setattr(runtime, "load_session", spy)
    config = BenchConfig(threads=1, batch_sizes=(1,), min_reps=5, max_seconds=0.2, warmup_s=0.0)
    bench([BenchEntry("a", digits_handle), BenchEntry("b", digits_handle)], ["onnxruntime"], config)
    bench([BenchEntry("a", digits_handle)], ["onnxruntime"], config)
    assert seen == [False, False, True]
