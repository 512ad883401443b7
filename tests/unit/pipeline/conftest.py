"""Pipeline test fixtures: fake stages on sys.path, registry restored after each test."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


@pytest.fixture
def fake_stages(monkeypatch):
    """Install the fake prune / quantize / slow stages; restore the real ones afterwards."""
    import pipeline_fakes

    from modelpress.pipeline import stages

    monkeypatch.setattr(stages, "_STAGES", dict(stages._STAGES))
    for cls in (pipeline_fakes.FakePrune, pipeline_fakes.FakeQuantize, pipeline_fakes.SlowStage):
        cls.calls = []
    pipeline_fakes.install()
    # spawned workers (process pool, Ray) find the fakes through PYTHONPATH
    src = Path(__file__).resolve().parents[3] / "src"
    monkeypatch.setenv("PYTHONPATH", f"{src}:{HERE}")
    return pipeline_fakes
