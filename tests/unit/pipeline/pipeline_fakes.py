"""Fake stages and a tiny trained model for testing the pipeline's orchestration.

The fakes do measurable damage that their recipe fields control, so the real
gate (ONNX Runtime evaluation, side-by-side timing) sees real accuracy drops:

- ``prune`` zeroes the input features with the smallest weights (share ``ratio``);
- ``quantize`` rounds weights to a grid (coarse for static, fine for qat),
  sparing ``float_layers``;
- ``slow`` sleeps ``seconds`` in small steps, then scales nothing (for kill/resume tests).
"""

from __future__ import annotations

import copy
import functools
import time
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from modelpress.pipeline.stages import StageContext, StageOutput


class DigitsLinear(nn.Module):
    """Logistic regression on the 64 digit pixels; input (N, 1, 8, 8)."""

    input_shape = (1, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(x, 1))


def _fit_on_digits(model: nn.Module, *, lr: float, steps: int) -> nn.Module:
    """Train ``model`` full-batch on digits' train split with Adam (seeded by the caller)."""
    from modelpress.sources.data import load_data

    data = load_data("digits")
    x, y = torch.from_numpy(data.train.x), torch.from_numpy(data.train.y)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model


@functools.lru_cache(maxsize=1)
def _trained() -> DigitsLinear:
    torch.manual_seed(0)
    return _fit_on_digits(DigitsLinear(), lr=0.05, steps=150).eval()


def trained_digits_linear() -> nn.Module:
    """A trained copy (about 95% on digits' test split)."""
    return copy.deepcopy(_trained())


class OutlierMLP(nn.Module):
    """Three Linear layers on the digit pixels as one 64-wide token; input (N, 1, 8, 8).

    The pixels are one token (N, 1, 64), as in a transformer, so each Linear exports as
    MatMul + Add rather than Gemm. (Gemm and Conv layers kept in float are covered by
    tests/unit/compress/test_quantize_keep_float.py.)
    """

    input_shape = (1, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(64, 32), nn.Linear(32, 32), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(x.reshape(x.shape[0], 1, 64)))
        return self.fc3(torch.relu(self.fc2(x))).flatten(1)


@functools.lru_cache(maxsize=1)
def _outlier() -> OutlierMLP:
    torch.manual_seed(0)
    model = _fit_on_digits(OutlierMLP(), lr=0.01, steps=200)
    with torch.no_grad():
        # Unit 0 of fc1 is always exactly 0 (zero weights and bias: no pre-activation for INT8 to
        # get wrong), so fc2's weights from it never matter in float; make them 100x the largest
        # weight: per-channel INT8 of fc2 then rounds every other weight of fc2 to zero. The middle
        # layer is the sensitive one, by construction.
        model.fc1.weight[0] = 0
        model.fc1.bias[0] = 0
        model.fc2.weight[:, 0] = 100 * model.fc2.weight.abs().max()
    return model.eval()


def outlier_mlp() -> nn.Module:
    """A trained 3-layer MLP whose *middle* layer INT8 ruins (neither the first nor the last)."""
    return copy.deepcopy(_outlier())


class _Cfg(BaseModel):
    # the search adds fields the real verbs take (method, allow_slower, ...); the fakes ignore them
    model_config = ConfigDict(extra="ignore")


class PruneCfg(_Cfg):
    ratio: float = Field(0.5, ge=0, lt=1)


class QuantCfg(_Cfg):
    mode: Literal["static", "qat", "dynamic"] = "static"
    float_layers: int = Field(0, ge=0)


class SlowCfg(_Cfg):
    seconds: float = Field(1.0, ge=0)


class _Fake:
    kind = ""
    cfg: type[BaseModel] = _Cfg
    calls: list[dict[str, Any]] = []

    def validate(self, fields: dict[str, Any]) -> dict[str, Any]:
        return {"kind": self.kind, **self.cfg.model_validate({k: v for k, v in fields.items() if k != "kind"}).model_dump()}

    def run(self, handle: Any, config: dict[str, Any], ctx: StageContext) -> StageOutput:
        cfg = self.cfg.model_validate({k: v for k, v in config.items() if k != "kind"})
        type(self).calls.append(dict(config))
        module = copy.deepcopy(handle.module)
        with torch.no_grad():
            report = self.damage(module.fc, cfg)
        return StageOutput(handle.with_module(module.eval()), report)

    def damage(self, fc: nn.Linear, cfg: Any) -> dict[str, Any]:
        return {}


class FakePrune(_Fake):
    kind, cfg = "prune", PruneCfg

    def damage(self, fc: nn.Linear, cfg: PruneCfg) -> dict[str, Any]:
        n = int(round(cfg.ratio * fc.in_features))
        order = fc.weight.abs().sum(0).argsort()
        fc.weight[:, order[:n]] = 0
        return {"zeroed": n, "layers": [{"name": "fc.in", "kind": "linear", "original": fc.in_features, "kept": fc.in_features - n}]}


class FakeQuantize(_Fake):
    kind, cfg = "quantize", QuantCfg

    def damage(self, fc: nn.Linear, cfg: QuantCfg) -> dict[str, Any]:
        if cfg.float_layers:
            return {"kept_float": cfg.float_layers}
        step = fc.weight.abs().max() / (2 if cfg.mode == "static" else 64)
        fc.weight.copy_(torch.round(fc.weight / step) * step)
        return {"step": float(step)}


class SlowStage(_Fake):
    kind, cfg = "slow", SlowCfg

    def damage(self, fc: nn.Linear, cfg: SlowCfg) -> dict[str, Any]:
        end = time.monotonic() + cfg.seconds
        while time.monotonic() < end:
            time.sleep(0.05)
        return {"slept": cfg.seconds}


def install() -> None:
    """Register the fakes in place of the real prune / quantize stages."""
    from modelpress.pipeline.stages import register_stage

    for cls in (FakePrune, FakeQuantize, SlowStage):
        register_stage(cls())


MODEL = "python:pipeline_fakes:trained_digits_linear"


def use_fakes(monkeypatch: Any) -> Any:
    """Install the fakes for one test; the monkeypatch restores the real registry afterwards."""
    from pathlib import Path

    from modelpress.pipeline import stages

    monkeypatch.setattr(stages, "_STAGES", dict(stages._STAGES))
    for cls in (FakePrune, FakeQuantize, SlowStage):
        cls.calls = []
    install()
    here = Path(__file__).resolve().parent
    # spawned workers (process pool, Ray) find the fakes through PYTHONPATH
    monkeypatch.setenv("PYTHONPATH", f"{here.parents[2] / 'src'}:{here}")
    import sys

    return sys.modules[__name__]
