"""Find the pruning ratio that meets a MAC or measured-latency budget (bisection)."""

from __future__ import annotations

import copy
import logging
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from modelpress.compress._prune_structured import call_model

logger = logging.getLogger(__name__)


def torch_latency_ms(
    model: nn.Module, example_inputs: Any, *, threads: int = 2, reps: int = 20, warmup: int = 3,
    statistic: str = "median",
) -> float:
    """Return the eager-mode latency in milliseconds of one forward pass.

    ``statistic`` is "median" (what a user sees) or "min" (the best of ``reps``: on a
    shared machine other processes only ever add time, so the minimum is the steadiest).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                call_model(model, example_inputs)
            times = []
            for _ in range(reps):
                start = time.perf_counter()
                call_model(model, example_inputs)
                times.append((time.perf_counter() - start) * 1e3)
    finally:
        torch.set_num_threads(previous)
    return min(times) if statistic == "min" else statistics.median(times)


def bisect_ratio(
    model: nn.Module,
    prune_copy: Callable[[nn.Module, float], nn.Module],
    measure: Callable[[nn.Module], float],
    budget: float,
    *,
    max_ratio: float,
    iterations: int = 7,
    progress: Callable[[str], None] | None = None,
) -> tuple[float, list[tuple[float, float]]]:
    """Return the smallest ratio whose pruned copy measures at or below ``budget``.

    ``measure`` must fall (roughly) as the ratio rises, as MACs and latency do.
    Each trial prunes a fresh deep copy, so ``model`` is never touched.

    Returns:
        The chosen ratio (``max_ratio`` when even that misses the budget) and the
        (ratio, measurement) trials in the order they ran.
    """
    trials: list[tuple[float, float]] = []

    def trial(ratio: float) -> float:
        pruned = prune_copy(copy.deepcopy(model), ratio)
        value = measure(pruned)
        trials.append((ratio, value))
        if progress is not None:
            progress(f"ratio {ratio:.3f} -> {value:.4g} (budget {budget:.4g})")
        logger.info("ratio search: ratio %.3f measures %.4g against budget %.4g", ratio, value, budget)
        return value

    if measure(model) <= budget:
        return 0.0, trials
    if trial(max_ratio) > budget:
        return max_ratio, trials
    low, high = 0.0, max_ratio  # measure(low) > budget >= measure(high)
    for _ in range(iterations):
        mid = (low + high) / 2
        if trial(mid) <= budget:
            high = mid
        else:
            low = mid
    return high, trials
