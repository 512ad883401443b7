"""Measure a session's quality on a split: accuracy, agreement or embedding cosine."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from modelpress.sources.data import Split, iter_batches, model_inputs

if TYPE_CHECKING:
    from modelpress.runtime.base import Session
    from modelpress.sources.models import ModelHandle

Metric = Literal["accuracy", "agreement", "cosine"]
# Inputs where the reference's top probability is below this flip under any
# perturbation; agreement is judged on the confident ones only.
CONFIDENT = 0.5


@dataclass(frozen=True, slots=True)
class QualityReport:
    """One quality number and how it was measured."""

    metric: Metric
    value: float
    samples: int
    backend: str

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def predict(session: Session, handle: ModelHandle, x: np.ndarray | list[str], *, batch_size: int = 64) -> np.ndarray:
    """Run ``session`` over all rows of ``x``; return the first output, stacked."""
    outs = [session.run(model_inputs(handle, xb))[0] for xb, _ in iter_batches(Split(x), batch_size)]
    return np.concatenate(outs)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def score(handle: ModelHandle, outputs: np.ndarray, labels: np.ndarray | None, reference: np.ndarray | None, backend: str) -> QualityReport:
    """Turn outputs into a quality number: accuracy with labels, else agreement / cosine to ``reference``."""
    if handle.task == "embedding":
        if reference is None:
            raise ValueError("embedding quality needs reference outputs to compare with")
        a = outputs / np.linalg.norm(outputs, axis=1, keepdims=True).clip(1e-12)
        b = reference / np.linalg.norm(reference, axis=1, keepdims=True).clip(1e-12)
        return QualityReport("cosine", float((a * b).sum(axis=1).mean()), len(outputs), backend)
    if labels is not None:
        return QualityReport("accuracy", float((outputs.argmax(axis=1) == labels).mean()), len(outputs), backend)
    if reference is None:
        raise ValueError("unlabelled data needs reference outputs to measure agreement with")
    confident = _softmax(reference).max(axis=1) >= CONFIDENT
    if confident.sum() < max(10, len(reference) // 10):
        confident = np.ones(len(reference), dtype=bool)
    agree = outputs[confident].argmax(axis=1) == reference[confident].argmax(axis=1)
    return QualityReport("agreement", float(agree.mean()), int(confident.sum()), backend)


def evaluate(
    session: Session,
    handle: ModelHandle,
    split: Split,
    *,
    reference: np.ndarray | None = None,
    batch_size: int = 64,
) -> QualityReport:
    """Measure quality of ``session`` on ``split``.

    Labelled classification gives accuracy; without labels, top-1 agreement
    with ``reference`` outputs on inputs where the reference is confident;
    embeddings give mean cosine similarity to ``reference``.
    """
    outputs = predict(session, handle, split.x, batch_size=batch_size)
    return score(handle, outputs, split.y, reference, session.backend)
