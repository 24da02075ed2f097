"""Per-example losses that attacks maximise and trainers minimise.

Every function takes logits (N, C) and labels (N,) and returns one value per example. Targeted
variants take the target class too and are maximised when the model predicts it.

Example:
    >>> import torch, robustkit as rk
    >>> z = torch.tensor([[2.0, 0.0, -1.0]])
    >>> float(rk.losses.margin(z, torch.tensor([0])))
    -2.0
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from robustkit.errors import ConfigError

__all__ = ["LOSSES", "ce", "dlr", "get_loss", "kl", "margin", "targeted_ce", "targeted_dlr", "targeted_margin"]

LossFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def ce(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of the true class (maximised by untargeted attacks)."""
    return F.cross_entropy(logits, y, reduction="none")


def _other_max(logits: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """Largest logit among the classes other than ``cls``."""
    hidden = logits.scatter(1, cls[:, None], float("-inf"))
    return hidden.amax(dim=1)


def margin(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Carlini-Wagner margin: best other logit minus the true logit (> 0 means misclassified)."""
    return _other_max(logits, y) - logits.gather(1, y[:, None]).squeeze(1)


def dlr(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Difference of Logits Ratio (Croce and Hein 2020): scale-invariant margin; needs >= 3 classes."""
    if logits.shape[1] < 3:
        raise ConfigError("the DLR loss needs 3 or more classes: use loss='ce' or loss='margin' for binary tasks")
    top = logits.sort(dim=1, descending=True).values
    return margin(logits, y) / (top[:, 0] - top[:, 2] + 1e-12)


def targeted_ce(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Negative cross-entropy of the target class."""
    assert target is not None
    return -F.cross_entropy(logits, target, reduction="none")


def targeted_margin(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Target logit minus the best other logit (> 0 means the target is predicted)."""
    assert target is not None
    return logits.gather(1, target[:, None]).squeeze(1) - _other_max(logits, target)


def targeted_dlr(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Targeted DLR of Croce and Hein: needs >= 4 classes."""
    assert target is not None
    if logits.shape[1] < 4:
        raise ConfigError("the targeted DLR loss needs 4 or more classes: use loss='ce' or loss='margin'")
    top = logits.sort(dim=1, descending=True).values
    num = logits.gather(1, target[:, None]).squeeze(1) - logits.gather(1, y[:, None]).squeeze(1)
    return num / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


def kl(logits_adv: torch.Tensor, logits_clean: torch.Tensor) -> torch.Tensor:
    """KL(p_clean || p_adv) per example: the TRADES robustness term."""
    return F.kl_div(
        F.log_softmax(logits_adv, dim=1), F.log_softmax(logits_clean, dim=1), reduction="none", log_target=True
    ).sum(dim=1)


LOSSES: dict[str, tuple[LossFn, LossFn]] = {
    "ce": (ce, targeted_ce),
    "margin": (margin, targeted_margin),
    "dlr": (dlr, targeted_dlr),
}


def get_loss(name: str | LossFn, targeted: bool = False) -> LossFn:
    """The loss called ``name`` ("ce", "margin", "dlr"), targeted or not; a callable is returned as is."""
    if callable(name):
        return name
    if name not in LOSSES:
        raise ConfigError(f"unknown loss {name!r}: choose one of {sorted(LOSSES)}")
    return LOSSES[name][1 if targeted else 0]
