"""Runtime backends behind one small protocol; engines import on first use."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from modelpress.errors import ConfigError
from modelpress.runtime.base import Backend, BackendName, RuntimeOptions, Session

if TYPE_CHECKING:
    from modelpress.sources.models import ModelHandle

__all__ = ["Backend", "BackendName", "RuntimeOptions", "Session", "available_backends", "get_backend", "load_session", "BACKENDS"]

# name -> "module:class"; the module (and its engine) is imported only when asked for.
BACKENDS: dict[str, str] = {
    "onnxruntime": "modelpress.runtime._onnxruntime:OnnxRuntimeBackend",
    "openvino": "modelpress.runtime._openvino:OpenVinoBackend",
    "torch": "modelpress.runtime._torch:TorchBackend",
    "tensorrt": "modelpress.runtime._tensorrt:TensorRtBackend",
}


def get_backend(name: str) -> Backend:
    """Return the backend called ``name``.

    Raises:
        ConfigError: no backend has that name.
    """
    target = BACKENDS.get(name)
    if target is None:
        raise ConfigError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    module_name, _, cls = target.partition(":")
    return getattr(importlib.import_module(module_name), cls)()


def available_backends() -> list[str]:
    """List the backends whose engines are installed and usable here."""
    return [name for name in BACKENDS if get_backend(name).available()]


def load_session(handle: ModelHandle, backend: str = "onnxruntime", options: RuntimeOptions | None = None) -> Session:
    """Load ``handle`` on ``backend`` and return a session ready to run."""
    return get_backend(backend).load(handle, options or RuntimeOptions())
