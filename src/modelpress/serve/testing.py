"""Tiny ONNX models, a plain ONNX Runtime session and test servers for tests, examples and benchmarks.

Built with ``onnx.helper`` in milliseconds; nothing downloads.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from modelpress.serve.protocol import TensorMeta

_SRC = str(Path(__file__).resolve().parents[2])


def linear_model(path: Path, *, features: int = 4, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Write ``logits = input @ W + b`` (input FP32 [batch, features]) to ``path``; return (W, b)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = rng.standard_normal((features, classes)).astype(np.float32)
    b = rng.standard_normal(classes).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W"], ["mm"]), helper.make_node("Add", ["mm", "B"], ["logits"])],
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return w, b


def sequence_model(path: Path, *, vocab: int = 50, dim: int = 8, seed: int = 0) -> np.ndarray:
    """Write a masked-mean embedder: (input_ids, attention_mask) -> (hidden [b,s,d], embedding [b,d]).

    Padding a sequence with mask 0 leaves its embedding unchanged, which is
    what batching by padding relies on. Returns the embedding table.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    table = np.random.default_rng(seed).standard_normal((vocab, dim)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["hidden"]),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"]),
        helper.make_node("Mul", ["hidden", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["mask3", "axis1"], ["count"], keepdims=0),
        helper.make_node("Div", ["summed", "count"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes,
        "masked_mean",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"]),
        ],
        [
            helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "sequence", dim]),
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim]),
        ],
        [
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return table


class OrtSession:
    """A minimal ONNX Runtime session with the runtime ``Session`` attributes.

    Args:
        path: the ONNX file.
        threads: intra-op threads.
        delay_s: extra seconds each run sleeps (to make a slow model in tests).
    """

    backend = "onnxruntime"
    device = "cpu"

    def __init__(self, path: Path, *, threads: int | None = 1, delay_s: float = 0.0) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        self.threads = threads
        self._sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_names = tuple(i.name for i in self._sess.get_inputs())
        self.output_names = tuple(o.name for o in self._sess.get_outputs())
        self.delay_s = delay_s
        self.calls: list[int] = []  # batch size of every run, for tests

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run one batch; return outputs in ``output_names`` order."""
        self.calls.append(next(iter(inputs.values())).shape[0])
        if self.delay_s:
            time.sleep(self.delay_s)
        return list(self._sess.run(None, dict(inputs)))

    def input_meta(self) -> list[TensorMeta]:
        """Return the model's inputs as OIP metadata (-1 = dynamic axis)."""
        from modelpress.serve.protocol import DTYPE_TO_DATATYPE

        types = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(uint8)": "uint8"}
        out = []
        for i in self._sess.get_inputs():
            shape = tuple(d if isinstance(d, int) else -1 for d in i.shape)
            out.append(TensorMeta(i.name, DTYPE_TO_DATATYPE[types[i.type]], shape))
        return out


def write_test_artifact(directory: Path, onnx_file: Path) -> Path:
    """Write a real artifact directory (manifest with hashes) around an ONNX file."""
    from modelpress.artifact import write_artifact
    from modelpress.sources.models import load_model

    return write_artifact(directory, handle=load_model(f"onnx:{onnx_file}"))


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThreadedServer:
    """Run an ASGI app on uvicorn in a background thread (tests and benchmarks).

    Use as a context manager; leaving it asks uvicorn to shut down gracefully
    (as SIGTERM does) and waits for it.
    """

    def __init__(self, app: object, *, port: int | None = None, graceful_s: float = 10.0) -> None:
        import uvicorn

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False,
            lifespan="on", timeout_graceful_shutdown=graceful_s,
        )
        self.server = uvicorn.Server(config)
        self._thread: object = None

    def __enter__(self) -> ThreadedServer:
        import threading

        thread = threading.Thread(target=self.server.run, daemon=True)
        thread.start()
        self._thread = thread
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Ask the server to drain and exit, then wait for its thread."""
        self.server.should_exit = True
        self._thread.join(timeout=60)  # type: ignore[attr-defined]

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ServerProcess:
    """Run ``modelpress serve`` in a subprocess on 127.0.0.1 (benchmarks and end-to-end checks).

    Use as a context manager: entering starts the server (unless :meth:`start`
    already did) and waits until ``/v2/health/ready`` answers 200; leaving
    terminates it. Starting several before waiting on any lets them load
    their models side by side.

    Args:
        serve_args: the arguments after ``modelpress serve`` (``--port`` is added).
        port: the port to serve on; a free one when None.
        ready_timeout_s: how long to wait for the server to become ready.
    """

    def __init__(self, *serve_args: str, port: int | None = None, ready_timeout_s: float = 120.0) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [sys.executable, "-m", "modelpress.cli.main", "serve", *serve_args, "--port", str(self.port)]
        self.ready_timeout_s = ready_timeout_s
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        """Launch the server process without waiting for it."""
        # the server imports the same modelpress as this process, installed or not
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([_SRC, os.environ.get("PYTHONPATH", "")])}
        # stderr is read only when the server dies; serve with --no-access-log so the pipe never fills
        self.proc = subprocess.Popen(self.command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def wait_ready(self) -> None:
        """Wait until the server answers ready; raise RuntimeError when it exits or times out first."""
        import httpx

        if self.proc is None:
            raise RuntimeError("wait_ready() before start()")
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read()[-2000:] if self.proc.stderr else ''}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server did not become ready in {self.ready_timeout_s:.0f} s")

    def stop(self) -> None:
        """Terminate the server and wait for it; kill it if it has not exited within 60 s."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> ServerProcess:
        if self.proc is None:
            self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()  # __exit__ does not run when __enter__ raises
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
