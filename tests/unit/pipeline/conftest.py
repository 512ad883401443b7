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

    return pipeline_fakes.use_fakes(monkeypatch)
