"""What binary domains (fraud, spam) share: the operating threshold and the contract's binary metrics.

Example:
    >>> import torch
    >>> from robustkit.evaluation.binary import threshold_at_fpr
    >>> threshold_at_fpr(torch.tensor([0.1, 0.2, 0.9, 0.3]), target_fpr=0.25) > 0.3
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from sklearn.utils.multiclass import check_classification_targets

from robustkit.errors import DataError

__all__ = [
    "BinaryLabels", "binary_labels", "binary_metrics", "decide", "known_positive", "positive_label", "sample_weights",
    "threshold_at_fpr", "two_columns",
]


#: labels taken as the positive (attacked) class when ``pos_label`` is not given, in this order
DEFAULT_POSITIVE = ("fraud", "spam")


def positive_label(
    classes: Sequence[Any] | np.ndarray, pos_label: Any = None, names: tuple[str, str] = ("negative", "positive")
) -> Any:
    """Which of the two ``classes`` is the positive class, the one an attacker wants to leave.

    ``pos_label`` when given (it must be one of ``classes``); else 1 for 0/1, -1/1 and False/True labels,
    else "fraud" or "spam" (any case) when one of them is present. Any other pair is refused with an
    error naming both labels: guessing would attack the wrong class and report its recall as the
    positive class's.

    Example:
        >>> positive_label(["fraud", "legit"])
        'fraud'
        >>> positive_label([0, 1]), positive_label(["bad", "good"], pos_label="bad")
        (1, 'bad')
    """
    values = list(classes)
    if pos_label is not None:
        matches = [c for c in values if _same(c, pos_label)]
        if not matches:
            shown = " and ".join(repr(_plain(c)) for c in values)
            raise DataError(f"pos_label={pos_label!r} is not one of the labels ({shown}): pass one of them")
        return matches[0]
    plain = {_plain(c) for c in values}
    if plain <= {0, 1} or plain == {-1, 1}:  # numbers and booleans: 1 (True) is positive
        return next(c for c in values if _plain(c) == 1)
    for name in DEFAULT_POSITIVE:
        found = [c for c in values if isinstance(_plain(c), str) and str(_plain(c)).strip().lower() == name]
        if found:
            return found[0]
    shown = " and ".join(repr(_plain(c)) for c in values)
    raise DataError(f"labels {shown}: which one is {names[1]} (the class attackers want to leave)? Pass "
                    f"pos_label= (on the command line --positive-label) naming it")


def _plain(value: Any) -> Any:
    """A NumPy scalar as the Python value it holds (for messages and comparisons)."""
    return value.item() if isinstance(value, np.generic) else value


def _same(a: Any, b: Any) -> bool:
    a, b = _plain(a), _plain(b)
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


class BinaryLabels(NamedTuple):
    """Labels checked by :func:`binary_labels`: 1 where positive else 0, the sorted classes, the positive one."""

    flags: np.ndarray
    classes: np.ndarray
    pos_label: Any


def binary_labels(y: Any, n: int, names: tuple[str, str] = ("negative", "positive"), what: str = "rows",
                  pos_label: Any = None) -> BinaryLabels:
    """Scikit-learn style labels ``y`` for ``n`` inputs, checked: two classes, the positive one chosen by
    :func:`positive_label` (``pos_label`` or the default rule); ``names`` say what the classes are in
    error messages.

    Example:
        >>> flags, classes, positive = binary_labels(["spam", "ham", "ham", "spam"], 4)
        >>> flags.tolist(), classes.tolist(), positive
        ([1, 0, 0, 1], ['ham', 'spam'], 'spam')
        >>> binary_labels(["legit", "fraud", "legit", "fraud"], 4).flags.tolist()
        [0, 1, 0, 1]
    """
    if y is None:
        raise DataError(f"this classifier requires y to be passed, but the target y is None: pass one label per "
                        f"{what.rstrip('s')}")
    arr = np.asarray(y)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr.ravel()
    if arr.ndim != 1:
        raise DataError(f"y must be one label per input (1-D), got shape {arr.shape}: a multi-output target is not "
                        "supported; fit one classifier per output")
    if len(arr) != n:
        raise DataError(f"X has {n} {what} but y has {len(arr)} labels")
    if n < 4:
        raise DataError(f"Found {n} {what} while a minimum of 4 is required: each class needs at least 2 {what} "
                        "for the validation split")
    if pd.isna(arr).any():
        raise DataError(f"y has {int(pd.isna(arr).sum())} missing labels: fill or drop those {what}")
    try:
        check_classification_targets(arr)  # scikit-learn's own words for a regression target
        classes = np.unique(arr)
    except TypeError:
        raise DataError("y mixes label types (e.g. numbers and strings): use one type") from None
    except ValueError as exc:
        raise DataError(f"{exc} Pass two classes of labels, e.g. 0/1 or {names[0]!r}/{names[1]!r}") from None
    if len(classes) == 1:
        raise DataError(f"y contains only one class ({_plain(classes[0])!r}): a binary classifier needs samples of "
                        f"both classes ({names[0]} and {names[1]})")
    if len(classes) != 2:
        shown = ", ".join(repr(c) for c in classes.tolist()[:5])
        raise DataError(f"y must be binary (two classes: {names[0]} and {names[1]}), got {len(classes)} "
                        f"class(es): {shown}")
    positive_class = positive_label(classes, pos_label, names)
    positive = arr == positive_class
    counts = int((~positive).sum()), int(positive.sum())
    negative_class = classes[0] if _same(classes[1], positive_class) else classes[1]
    if min(counts) < 2:
        raise DataError(f"y has {counts[1]} {what} of class {_plain(positive_class)!r} ({names[1]}) and {counts[0]} "
                        f"of {_plain(negative_class)!r}: each class needs at least 2 {what} for the validation split")
    return BinaryLabels(positive.astype(np.int64), classes, _plain(positive_class))


def sample_weights(sample_weight: Any, n: int, what: str = "rows") -> np.ndarray | None:
    """scikit-learn's ``sample_weight`` for ``n`` inputs, checked: None, or ``n`` finite weights >= 0, not all 0.

    Example:
        >>> sample_weights([1, 0, 2], 3).tolist()
        [1.0, 0.0, 2.0]
    """
    if sample_weight is None:
        return None
    try:
        w = np.asarray(sample_weight, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"sample_weight must be numbers, one per {what.rstrip('s')}") from None
    if w.ndim == 0:
        w = np.full(n, float(w))
    if w.shape != (n,):
        raise DataError(f"sample_weight.shape == {w.shape}, expected ({n},): one weight per {what.rstrip('s')}")
    if not np.isfinite(w).all() or (w < 0).any():
        raise DataError("sample_weight holds negative or non-finite values: pass finite weights >= 0")
    if not (w > 0).any():
        raise DataError("Sample weights must contain at least one non-zero number.")
    return w


def _positive_column(classes: np.ndarray, pos_label: Any) -> int:
    return 0 if _same(classes[0], pos_label) else 1


def two_columns(p_positive: np.ndarray, classes: np.ndarray, pos_label: Any) -> np.ndarray:
    """``(n, 2)`` probabilities in ``classes`` order from P(positive), as ``predict_proba`` returns them.

    Example:
        >>> two_columns(np.array([0.9]), np.array(["fraud", "legit"]), "fraud").tolist()
        [[0.9, 0.09999999999999998]]
    """
    both = np.stack([1.0 - p_positive, p_positive], axis=1)
    return both[:, ::-1].copy() if _positive_column(classes, pos_label) == 0 else both


def decide(flagged: np.ndarray, classes: np.ndarray, pos_label: Any) -> np.ndarray:
    """``pos_label`` where ``flagged``, else the other of the two ``classes``."""
    i = _positive_column(classes, pos_label)
    return np.where(flagged, classes[i], classes[1 - i])


def known_positive(y: Any, n: int, classes: np.ndarray, pos_label: Any, what: str) -> np.ndarray:
    """True where ``y`` is ``pos_label``; ``y`` needs one label per input, each one of ``classes``."""
    arr = np.asarray(y)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr.ravel()
    if arr.ndim != 1 or len(arr) != n:
        raise DataError(f"X has {n} {what} but y has shape {arr.shape}: pass one label per {what.rstrip('s')}")
    known = np.isin(arr, classes)
    if not known.all():
        raise DataError(f"y holds labels the model was not fitted on (e.g. {_plain(arr[~known][0])!r}): use "
                        f"{_plain(classes[0])!r} and {_plain(classes[1])!r}")
    return np.asarray(arr == pos_label, dtype=bool)


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
