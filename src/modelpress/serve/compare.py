"""Compare two versions' answers to the same request: top-1 agreement, max abs difference, KL."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelpress.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Comparison:
    """How a shadow's (or a canary's paired) answer compares with the primary's on one request.

    ``top1_agreement`` and ``kl`` are ``None`` when the output is not a score per class.
    """

    rows: int
    top1_agreement: float | None
    max_abs_diff: float
    kl: float | None

    @property
    def disagrees(self) -> bool:
        """Return whether any row's top-1 class differs."""
        return self.top1_agreement is not None and self.top1_agreement < 1.0


def compare_outputs(primary: np.ndarray, other: np.ndarray) -> Comparison:
    """Compare two answers to the same request.

    Outputs shaped ``(rows, classes)`` count as class scores: top-1 agreement per
    row, and the mean KL divergence KL(primary || other) of their distributions
    (the rows themselves when they are probabilities, else their softmax).
    Anything else gets the max absolute difference only.
    """
    a = np.asarray(primary, dtype=np.float64)
    b = np.asarray(other, dtype=np.float64)
    if a.shape != b.shape:
        raise ConfigError(f"cannot compare outputs of shapes {a.shape} and {b.shape}; the candidate's output shape differs from the primary's.")
    max_abs = float(np.max(np.abs(a - b))) if a.size else 0.0
    if a.ndim < 2 or a.shape[-1] < 2:
        return Comparison(rows=int(a.shape[0]) if a.ndim else 1, top1_agreement=None, max_abs_diff=max_abs, kl=None)
    a2 = a.reshape(-1, a.shape[-1])
    b2 = b.reshape(-1, b.shape[-1])
    agreement = float(np.mean(a2.argmax(-1) == b2.argmax(-1)))
    p, q = _as_probabilities(a2), _as_probabilities(b2)
    eps = 1e-12
    kl = float(np.mean(np.sum(p * (np.log(p + eps) - np.log(q + eps)), axis=-1)))
    return Comparison(rows=a2.shape[0], top1_agreement=agreement, max_abs_diff=max_abs, kl=max(kl, 0.0))


def _as_probabilities(x: np.ndarray) -> np.ndarray:
    if np.all(x >= 0) and np.allclose(x.sum(-1), 1.0, atol=1e-3):
        return x
    shifted = x - x.max(-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(-1, keepdims=True)


class ShadowStats:
    """Running comparison of a shadow's answers with the primary's (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = 0
        self.rows = 0
        self.agreeing_rows = 0
        self.classified_rows = 0
        self.max_abs_diff = 0.0
        self._kl_sum = 0.0
        self._kl_rows = 0
        self.errors = 0

    def add(self, comparison: Comparison) -> None:
        """Add one request's comparison."""
        with self._lock:
            self.requests += 1
            self.rows += comparison.rows
            self.max_abs_diff = max(self.max_abs_diff, comparison.max_abs_diff)
            if comparison.top1_agreement is not None:
                self.classified_rows += comparison.rows
                self.agreeing_rows += round(comparison.top1_agreement * comparison.rows)
            if comparison.kl is not None:
                self._kl_sum += comparison.kl * comparison.rows
                self._kl_rows += comparison.rows

    def add_error(self) -> None:
        """Count a shadow request that failed (the client never sees it)."""
        with self._lock:
            self.errors += 1

    def snapshot(self) -> dict[str, Any]:
        """Return a JSON-able view."""
        with self._lock:
            return {
                "requests": self.requests,
                "rows": self.rows,
                "top1_agreement": self.agreeing_rows / self.classified_rows if self.classified_rows else None,
                "max_abs_diff": self.max_abs_diff,
                "mean_kl": self._kl_sum / self._kl_rows if self._kl_rows else None,
                "errors": self.errors,
            }
