"""What binary domains (fraud, spam) share: the operating threshold and the contract's binary metrics.

Example:
    >>> import torch
    >>> from robustkit.evaluation.binary import threshold_at_fpr
    >>> threshold_at_fpr(torch.tensor([0.1, 0.2, 0.9, 0.3]), target_fpr=0.25) > 0.3
    True
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from robustkit.errors import DataError

__all__ = ["binary_labels", "binary_metrics", "threshold_at_fpr"]


def binary_labels(y: Any, n: int, names: tuple[str, str] = ("negative", "positive"), what: str = "rows"
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``(1 where positive else 0, classes)`` from scikit-learn style labels ``y`` for ``n`` inputs.

    The larger label in sort order (``classes[1]``: 1, True, "spam" over "ham") is the positive class,
    the one an attacker wants to leave; ``names`` say what the classes are in error messages.

    Example:
        >>> flags, classes = binary_labels(["ham", "spam", "ham", "spam"], 4)
        >>> flags.tolist(), classes.tolist()
        ([0, 1, 0, 1], ['ham', 'spam'])
    """
    arr = np.asarray(y)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr.ravel()
    if arr.ndim != 1:
        raise DataError(f"y must be one label per input (1-D), got shape {arr.shape}")
    if len(arr) != n:
        raise DataError(f"X has {n} {what} but y has {len(arr)} labels")
    if pd.isna(arr).any():
        raise DataError(f"y has {int(pd.isna(arr).sum())} missing labels: fill or drop those {what}")
    try:
        classes = np.unique(arr)
    except TypeError:
        raise DataError("y mixes label types (e.g. numbers and strings): use one type") from None
    if len(classes) != 2:
        shown = ", ".join(repr(c) for c in classes.tolist()[:5])
        raise DataError(f"y must be binary (two classes: {names[0]} and {names[1]}), got {len(classes)} "
                        f"class(es): {shown}")
    positive = arr == classes[1]
    counts = int((~positive).sum()), int(positive.sum())
    if min(counts) < 2:
        raise DataError(f"y has {counts[1]} {what} of class {classes[1]!r} ({names[1]}) and {counts[0]} of "
                        f"{classes[0]!r}: each class needs at least 2 {what} for the validation split")
    return positive.astype(np.int64), classes


def threshold_at_fpr(negative_scores: torch.Tensor, target_fpr: float = 0.01) -> float:
    """The smallest threshold on P(positive) at which at most ``target_fpr`` of the negatives are flagged."""
    neg = torch.sort(negative_scores.flatten(), descending=True).values
    k = int(target_fpr * len(neg))
    t = float(neg[k]) + 1e-6 if len(neg) > k else 0.5
    return min(max(t, 1e-6), 1 - 1e-6)


def binary_metrics(outcomes: dict[str, torch.Tensor]) -> dict[str, Any]:
    """``precision_clean``, ``recall_clean``, ``f1_clean``, ``fpr_clean``, ``recall_attacked`` and
    ``attack_success_rate`` (among positives detected on clean input) from a report's per-example outcomes."""
    pos = outcomes["label"].bool()
    neg = ~pos
    clean, robust = outcomes["clean_correct"].bool(), outcomes["robust"].bool()
    tp, fp = int((clean & pos).sum()), int((~clean & neg).sum())
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / n_pos if n_pos else 0.0
    detected = clean & pos
    return {
        "precision_clean": precision,
        "recall_clean": recall,
        "f1_clean": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "fpr_clean": fp / n_neg if n_neg else 0.0,
        "recall_attacked": int((robust & pos).sum()) / n_pos if n_pos else 0.0,
        "attack_success_rate": int((detected & ~robust).sum()) / max(1, int(detected.sum())),
    }
