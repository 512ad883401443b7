"""Presets: a named list of stages and defaults a recipe starts from.

A recipe with ``preset:`` gets the preset's stages; each stage the recipe also
lists (matched by ``kind``) overrides the preset's fields one by one.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # structured prune 50% + fine-tune + static INT8
    "mobile": {
        "stages": [
            {"kind": "prune", "method": "structured", "ratio": 0.5, "importance": "l1"},
            {"kind": "finetune", "epochs": 8},
            {"kind": "quantize", "mode": "static", "sensitivity": True},
        ],
    },
    # distil into a student with half the teacher's channels, then INT8
    "edge": {
        "stages": [
            {"kind": "distill", "student_ratio": 0.5, "train": {"epochs": 8}},
            {"kind": "quantize", "mode": "static"},
        ],
    },
    # INT8 or FP16/BF16, whichever measures faster on the target
    "server": {
        "stages": [
            {"kind": "quantize", "mode": "fastest", "candidates": ["static", "fp16", "bf16"]},
        ],
    },
}
