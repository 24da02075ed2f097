"""What binary domains (fraud, spam) share: the operating threshold and the contract's binary metrics.

Example:
    >>> import torch
    >>> from robustkit.evaluation.binary import threshold_at_fpr
    >>> threshold_at_fpr(torch.tensor([0.1, 0.2, 0.9, 0.3]), target_fpr=0.25) > 0.3
    True
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["binary_metrics", "threshold_at_fpr"]


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
