"""Load a model version and run batches on it off the event loop.

A :class:`ModelRunner` owns one :class:`~modelpress.runtime.base.Session` per
instance and a thread pool with one thread per instance, so each session is
only ever used by one thread at a time and the event loop never blocks on a
model. The same runner backs the Starlette app and the Ray Serve deployment.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelpress.errors import ArtifactError, ConfigError, NotFoundError
from modelpress.serve.batcher import PadSpec
from modelpress.serve.protocol import DATATYPE_TO_DTYPE, DTYPE_TO_DATATYPE, TensorMeta, datatype_of

if TYPE_CHECKING:
    from modelpress.runtime.base import Session

log = logging.getLogger(__name__)


class ModelRunner:
    """One loaded model version: metadata, sessions and the threads that run them.

    Args:
        name: model name clients use in URLs.
        version: version string ("1" for a single artifact dir).
        sessions: one session per instance (all of the same model).
        inputs: input metadata; -1 marks a dynamic axis (axis 0 is the batch).
        outputs: output metadata; when None it is found by a warm-up run.
        platform: the backend name, reported in model metadata.
    """

    def __init__(
        self,
        name: str,
        version: str,
        sessions: Sequence[Session],
        inputs: Sequence[TensorMeta],
        outputs: Sequence[TensorMeta] | None = None,
        *,
        platform: str = "onnxruntime",
    ) -> None:
        if not sessions:
            raise ConfigError(f"model {name!r} version {version!r} needs at least one session; got none")
        self.name = name
        self.version = version
        self.platform = platform
        self.inputs = tuple(inputs)
        self.output_names = tuple(sessions[0].output_names)
        self._sessions = tuple(sessions)
        self._pool = ThreadPoolExecutor(max_workers=len(sessions), thread_name_prefix=f"model-{name}-{version}")
        self.outputs = tuple(outputs) if outputs is not None else self._probe_outputs()
        # -1 on axis 1 of an output marks a per-token output that follows the input length
        self.seq_outputs = tuple(len(o.shape) > 1 and o.shape[1] == -1 for o in self.outputs)

    @property
    def instances(self) -> int:
        """Return the number of model instances (parallel sessions)."""
        return len(self._sessions)

    def example_inputs(self, batch: int = 1, seq_len: int = 16) -> dict[str, np.ndarray]:
        """Return zero-valued inputs of the right dtypes (dynamic axes get ``seq_len``)."""
        out = {}
        for spec in self.inputs:
            shape = [batch] + [seq_len if d < 0 else d for d in spec.shape[1:]]
            dtype = DATATYPE_TO_DTYPE[spec.datatype]
            out[spec.name] = np.ones(shape, dtype=dtype) if "mask" in spec.name else np.zeros(shape, dtype=dtype)
        return out

    def _probe_outputs(self) -> tuple[TensorMeta, ...]:
        # Warm-up runs find output dtypes and shapes and pay first-call costs before traffic;
        # with variable-length inputs, two lengths show which output axes follow them.
        results = self.run_sync(self.example_inputs(1, seq_len=5), 0)
        if self.pad_specs():
            other = self.run_sync(self.example_inputs(1, seq_len=7), 0)
        else:
            other = results
        metas = []
        for n, r, o in zip(self.output_names, results, other):
            shape = tuple(-1 if i == 0 or r.shape[i] != o.shape[i] else r.shape[i] for i in range(r.ndim))
            metas.append(TensorMeta(n, datatype_of(r.dtype), shape))
        return tuple(metas)

    def pad_specs(self) -> dict[str, PadSpec]:
        """Return the variable non-batch axes of each input (what padding may touch)."""
        return {
            s.name: PadSpec(tuple(i for i, d in enumerate(s.shape) if i > 0 and d < 0), 0)
            for s in self.inputs
            if any(d < 0 for d in s.shape[1:])
        }

    def run_sync(self, inputs: Mapping[str, np.ndarray], instance: int = 0) -> list[np.ndarray]:
        """Run one batch on instance ``instance`` in the calling thread."""
        return list(self._sessions[instance].run(inputs))

    async def run(self, inputs: Mapping[str, np.ndarray], instance: int = 0) -> list[np.ndarray]:
        """Run one batch on the instance's thread without blocking the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.run_sync, inputs, instance)

    def metadata(self) -> dict[str, Any]:
        """Return the OIP v2 model metadata document."""
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": self.platform,
            "inputs": [t.as_json() for t in self.inputs],
            "outputs": [t.as_json() for t in self.outputs],
        }

    def close(self) -> None:
        """Let the threads finish what they run and stop them."""
        self._pool.shutdown(wait=True)


def tensor_meta_from_spec(spec: Any) -> TensorMeta:
    """Convert a ``TensorSpec`` (str = dynamic axis) into OIP metadata (-1 = dynamic)."""
    shape = tuple(-1 if isinstance(d, str) or d is None or (isinstance(d, int) and d < 0) else int(d) for d in spec.shape)
    datatype = DTYPE_TO_DATATYPE.get(str(np.dtype(spec.dtype)))
    if datatype is None:
        raise ConfigError(f"input {spec.name!r} has dtype {spec.dtype!r}, which the inference protocol cannot carry")
    return TensorMeta(spec.name, datatype, shape)


def is_artifact_dir(path: Path) -> bool:
    """Say whether ``path`` looks like an artifact directory (model.onnx + manifest.json)."""
    return (path / "model.onnx").is_file() and (path / "manifest.json").is_file()


def discover_model_dir(model_dir: Path) -> dict[str, dict[str, Path]]:
    """Map model name -> version -> artifact dir for every artifact under ``model_dir``.

    ``DIR/NAME/`` being an artifact serves it as version "1"; ``DIR/NAME/V/``
    artifacts (Triton's layout) serve each ``V`` as a version.

    Raises:
        NotFoundError: ``model_dir`` is missing or holds no artifact.
    """
    if not model_dir.is_dir():
        raise NotFoundError(f"--model-dir {model_dir} is not a directory")
    found: dict[str, dict[str, Path]] = {}
    for sub in sorted(p for p in model_dir.iterdir() if p.is_dir()):
        if is_artifact_dir(sub):
            found[sub.name] = {_manifest_version(sub): sub}
            continue
        versions = {v.name: v for v in sorted(sub.iterdir()) if v.is_dir() and is_artifact_dir(v)}
        if versions:
            found[sub.name] = versions
    if not found:
        raise NotFoundError(
            f"--model-dir {model_dir} holds no artifact directory (a folder with model.onnx and manifest.json); "
            "make one with `modelpress export MODEL --out DIR/NAME`"
        )
    return found


def _manifest_version(path: Path) -> str:
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ArtifactError(f"{path / 'manifest.json'} cannot be read: {err}") from err
    version = manifest.get("version") if isinstance(manifest, dict) else None
    return str(version) if version is not None else "1"


def load_runner(
    name: str,
    version: str,
    artifact_dir: Path,
    *,
    backend: str = "onnxruntime",
    threads: int | None = None,
    instances: int = 1,
) -> ModelRunner:
    """Load an artifact directory through the runtime into a runner.

    Args:
        name: the model name to serve it under.
        version: the version to serve it as.
        artifact_dir: the artifact directory.
        backend: runtime backend ("onnxruntime", "openvino", "torch").
        threads: intra-op threads per instance (None: the runtime's default).
        instances: parallel sessions, each with its own thread.
    """
    from modelpress.artifact import load_artifact
    from modelpress.runtime import load_session
    from modelpress.runtime.base import RuntimeOptions

    # the torch module is only needed when torch itself runs the model
    handle = load_artifact(artifact_dir, with_module=backend == "torch")
    options = RuntimeOptions(threads=threads)
    sessions = [load_session(handle, backend, options) for _ in range(instances)]
    inputs = [tensor_meta_from_spec(s) for s in handle.inputs]
    log.info("loaded model %s version %s from %s on %s x%d", name, version, artifact_dir, backend, instances)
    return ModelRunner(name, version, sessions, inputs, platform=backend)
