"""Classification metrics and small statistics over runs.

Every function takes lists, numpy arrays or torch tensors. `preds` may be class ids `(N,)`
or scores `(N, C)` (logits or probabilities), which are reduced with argmax.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np


def _as_numpy(values: Any) -> np.ndarray:
    # torch is optional here so that reports can be built without importing it.
    if hasattr(values, "detach") and hasattr(values, "cpu"):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def _class_ids(preds: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Return `(preds, labels)` as equal-length int64 vectors, argmax-ing score matrices."""
    p = _as_numpy(preds)
    y = _as_numpy(labels)
    if p.ndim == 2:
        p = p.argmax(axis=-1)
    if p.ndim != 1 or y.ndim != 1:
        raise ValueError(f"expected 1-D class ids, got preds {p.shape} and labels {y.shape}")
    if len(p) != len(y):
        raise ValueError(f"{len(p)} predictions for {len(y)} labels")
    if len(y) == 0:
        raise ValueError("no examples to score")
    return p.astype(np.int64), y.astype(np.int64)


def accuracy(preds: Any, labels: Any) -> float:
    """Fraction of examples whose predicted class equals the label."""
    p, y = _class_ids(preds, labels)
    return float((p == y).mean())


def confusion_matrix(preds: Any, labels: Any, num_labels: int) -> np.ndarray:
    """`(num_labels, num_labels)` int64 counts: row = true label, column = prediction."""
    p, y = _class_ids(preds, labels)
    for name, ids in (("label", y), ("prediction", p)):
        bad = ids[(ids < 0) | (ids >= num_labels)]
        if len(bad):
            raise ValueError(f"{name} {int(bad[0])} is outside 0..{num_labels - 1}")
    counts = np.bincount(y * num_labels + p, minlength=num_labels * num_labels)
    return counts.reshape(num_labels, num_labels)


def per_class_f1(preds: Any, labels: Any, num_labels: int) -> np.ndarray:
    """F1 per class, `(num_labels,)`; NaN for a class that is neither a label nor predicted."""
    cm = confusion_matrix(preds, labels, num_labels)
    tp = np.diag(cm).astype(np.float64)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / denom, np.nan)


def macro_f1(preds: Any, labels: Any, num_labels: int) -> float:
    """Unweighted mean of per-class F1 over the classes present in `labels` or `preds`.

    This is scikit-learn's `f1_score(average="macro")` with its default `labels=None`: a
    class that occurs in neither the labels nor the predictions is left out (its F1 is
    undefined), while a class that is a label but never predicted counts with F1 = 0.
    """
    return float(np.nanmean(per_class_f1(preds, labels, num_labels)))


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) of `values`; std is 0 for one value."""
    if hasattr(values, "__array__") or hasattr(values, "detach"):
        x = _as_numpy(values).astype(np.float64).reshape(-1)
    else:
        x = np.array([float(v) for v in values], dtype=np.float64)
    if len(x) == 0:
        raise ValueError("mean_std of no values")
    if len(x) == 1:
        return float(x[0]), 0.0
    return float(x.mean()), float(x.std(ddof=1))


class StreamingMean:
    """Weighted running mean, for metrics accumulated batch by batch during evaluation.

    `update(batch_mean, weight=n_items)` per batch gives the mean over all items without
    keeping them. Sums are kept in float64 (Python floats).
    """

    def __init__(self) -> None:
        self.total = 0.0
        self.weight = 0.0

    def update(self, value: Any, weight: Any = 1.0) -> None:
        value = float(_as_numpy(value))
        weight = float(_as_numpy(weight))
        if weight < 0 or math.isnan(weight):
            raise ValueError(f"weight must be >= 0, got {weight}")
        if weight == 0:
            return
        self.total += value * weight
        self.weight += weight

    @property
    def mean(self) -> float:
        """The weighted mean so far; NaN before any weight was added."""
        return self.total / self.weight if self.weight > 0 else math.nan

    def state_dict(self) -> dict[str, float]:
        return {"total": self.total, "weight": self.weight}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.total = float(state["total"])
        self.weight = float(state["weight"])

    def __repr__(self) -> str:
        return f"StreamingMean(mean={self.mean:.6g}, weight={self.weight:g})"
