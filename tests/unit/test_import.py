"""`import modelpress` (and the CLI's --help) must not pull in heavy engines."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "onnxruntime", "openvino", "ray", "transformers", "tensorrt", "torchvision")


def _loaded_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    return set(filter(None, out.split(",")))


def test_import_modelpress_is_light():
    assert _loaded_after("import modelpress") == set()


def test_cli_help_is_light():
    assert _loaded_after("from modelpress.cli import main") == set()


def test_version_comes_from_metadata():
    import modelpress

    assert modelpress.__version__ != "0.0.0"


def test_every_public_verb_resolves():
    import modelpress

    for name in modelpress.__all__:
        assert getattr(modelpress, name) is not None, name
