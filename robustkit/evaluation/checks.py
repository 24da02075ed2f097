"""Gradient-masking checks: signs that an evaluation's robust accuracy cannot be trusted.

A defence can look robust because gradient attacks fail on it (zero or noisy gradients, probability
outputs, randomness) rather than because it is robust (Athalye et al. 2018; Croce and Hein 2020).
Each check is a :class:`Check` whose ``passed`` is True, False, or None when it does not apply;
:func:`robustkit.evaluate` runs them all and calls its verdict inconclusive if any fails.

The per-batch measurements (:func:`gradient_flags`, :func:`output_flags`, :func:`determinism_gap`)
are plain functions, usable on their own; the ``*_check`` functions turn totals into verdicts.

Example:
    >>> import torch
    >>> from robustkit.evaluation.checks import gradient_flags
    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 3))
    >>> gradient_flags(model, torch.zeros(4, 2), torch.tensor([0, 1, 2, 0])).tolist()
    [False, False, False, False]
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from robustkit.losses import margin
from robustkit.models import in_chunks, logits_of

__all__ = [
    "COVERING",
    "DETERMINISM_TOL",
    "DETERMINISTIC",
    "FAST",
    "FGSM_WEAKER",
    "GRADIENTS",
    "LOGITS",
    "MONOTONE",
    "RANDOM_SEARCH",
    "ROBUST_SHARE",
    "TRIVIAL",
    "Check",
    "CheckSettings",
    "covering_check",
    "determinism_check",
    "determinism_gap",
    "fgsm_check",
    "gradient_check",
    "gradient_flags",
    "logits_check",
    "monotone_check",
    "output_flags",
    "random_search_check",
    "trivial_level",
    "verdict",
]

MONOTONE = "accuracy falls as the budget grows"
FGSM_WEAKER = "multi-step attacks at least as strong as FGSM"
COVERING = "a budget covering the whole box drives accuracy to about zero"
GRADIENTS = "input gradients are informative"
RANDOM_SEARCH = "gradient-free search is not stronger than gradient attacks"
LOGITS = "outputs are logits, not probabilities"
DETERMINISTIC = "model is deterministic"


@dataclass(frozen=True)
class Check:
    """One check's outcome: ``passed`` is True, False, or None (not applicable), with the evidence.

    Example:
        >>> Check("model is deterministic", True, "two forward passes agree").line
        'passed: model is deterministic (two forward passes agree)'
    """

    name: str
    passed: bool | None
    detail: str

    @property
    def status(self) -> str:
        """One of: passed, FAILED, not applicable."""
        return "not applicable" if self.passed is None else ("passed" if self.passed else "FAILED")

    @property
    def line(self) -> str:
        """The plain-English verdict line of this check."""
        return f"{self.status}: {self.name} ({self.detail})"

    def to_dict(self) -> dict[str, Any]:
        """``{"name", "passed", "detail"}`` as ``metrics.json`` stores it."""
        return {"name": self.name, "passed": self.passed, "detail": self.detail}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Check:
        """Read back :meth:`to_dict`."""
        passed = d.get("passed")
        return cls(str(d["name"]), None if passed is None else bool(passed), str(d.get("detail", "")))


@dataclass(frozen=True)
class CheckSettings:
    """How much work the checks of :func:`robustkit.evaluate` spend (``checks=CheckSettings(...)``).

    Args:
        fgsm_tolerance: share of attacked examples by which FGSM may beat the best multi-step attack.
        cover_examples: attackable examples (first in data order) attacked at the covering budget.
        cover_steps: PGD steps at the covering budget.
        cover_max_accuracy: highest robust accuracy allowed at the covering budget.
        max_zero_gradients: highest share of examples allowed an all-zero or non-finite input gradient.
        search_examples: survivors of the gradient attacks given to the random search.
        search_queries: queries of the random search per example.
        search_tolerance: share of those survivors the random search may break (at least one example).
        eot: gradient samples per step used when the model turns out to be random.
    """

    fgsm_tolerance: float = 0.01
    cover_examples: int = 256
    cover_steps: int = 20
    cover_max_accuracy: float = 0.1
    max_zero_gradients: float = 0.05
    search_examples: int = 100
    search_queries: int = 1000
    search_tolerance: float = 0.01
    eot: int = 8


#: ``checks="fast"``: the same checks on smaller samples, about a tenth of the default's passes (the covering
#: PGD on 64 examples with 10 steps, the random search on 32 survivors with 300 queries). A suite that lists
#: a gradient-free attack (``square``, ``random-search``) or FGSM already shares those passes with the checks.
FAST = CheckSettings(cover_examples=64, cover_steps=10, search_examples=32, search_queries=300)


#: Relative difference between two identical forward passes above which a model counts as random.
DETERMINISM_TOL = 1e-4


def _pct(share: float) -> str:
    return f"{100.0 * share:.1f}%"


# --------------------------------------------------------------------------- per-batch measurements
def gradient_flags(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, feature_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Bool per example: is the margin loss's gradient w.r.t. the input all zero or non-finite?

    The margin loss (best other logit minus the true logit) is used rather than cross-entropy,
    whose gradient underflows to zero on confidently classified inputs without any masking.
    ``feature_mask`` (True where a feature may change) limits the test to features an attacker moves.
    """
    xr = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = margin(logits_of(model(xr)), y)
        # outputs detached from the input (no grad_fn) have no gradient at all: every example is flagged
        (grad,) = torch.autograd.grad(loss.sum(), xr, allow_unused=True) if loss.requires_grad else (None,)
    if grad is None:
        return torch.ones(len(x), dtype=torch.bool, device=x.device)
    if feature_mask is not None:
        grad = grad * torch.broadcast_to(feature_mask.to(grad.device), grad.shape[1:])
    flat = grad.flatten(1)
    return ~torch.isfinite(flat).all(dim=1) | (flat == 0).all(dim=1)


def output_flags(logits: torch.Tensor, atol: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: (looks like a probability vector: in [0, 1] and summing to 1, has NaN or Inf)."""
    finite = torch.isfinite(logits).all(dim=1)
    in_unit = ((logits >= -atol) & (logits <= 1 + atol)).all(dim=1)
    sums_to_one = (logits.sum(dim=1) - 1).abs() <= atol * max(1, logits.shape[1])
    return finite & in_unit & sums_to_one, ~finite


def determinism_gap(model: nn.Module, x: Any) -> float:
    """Largest difference between two identical forward passes on ``x``, relative to the logits' scale."""
    def forward() -> torch.Tensor:
        return logits_of(in_chunks(model, x) if isinstance(x, torch.Tensor) else model(x))

    with torch.no_grad():
        a, b = forward(), forward()
    finite = torch.isfinite(a) & torch.isfinite(b)
    if not bool(finite.any()):
        return 0.0
    diff = float((a[finite] - b[finite]).abs().max())
    return diff / (1.0 + float(a[finite].abs().max()))


# --------------------------------------------------------------------------- verdicts
def monotone_check(budgets: list[float], worst_accuracy: list[float], n_examples: int) -> Check:
    """(a) Worst-case robust accuracy must not rise with the budget by more than one example (1/n)."""
    if len(budgets) < 2:
        return Check(MONOTONE, None, "only one budget was evaluated")
    tol = 1.0 / max(1, n_examples) + 1e-12
    pairs = sorted(zip(budgets, worst_accuracy, strict=True))
    for (e0, a0), (e1, a1) in itertools.pairwise(pairs):
        if a1 > a0 + tol:
            return Check(
                MONOTONE,
                False,
                f"robust accuracy rises from {a0:.4f} at budget {e0:g} to {a1:.4f} at budget {e1:g}: a larger budget "
                "contains every smaller one, so the attacks are failing to find examples they should (masking, "
                "or step sizes that do not suit the budget)",
            )
    accs = ", ".join(f"{a:.4f}" for _, a in pairs)
    levels = ", ".join(f"{e:g}" for e, _ in pairs)
    return Check(MONOTONE, True, f"worst-case robust accuracy {accs} over budgets {levels}")


def fgsm_check(fgsm_broken: int | None, best_broken: int | None, n_attacked: int, tolerance: float = 0.01) -> Check:
    """(b) FGSM must not break more examples than the best multi-step attack, within a tolerance."""
    if fgsm_broken is None or best_broken is None:
        return Check(FGSM_WEAKER, None, "no multi-step gradient attack was run")
    allowed = max(1, math.ceil(tolerance * n_attacked))
    if fgsm_broken > best_broken + allowed:
        return Check(
            FGSM_WEAKER,
            False,
            f"one FGSM step broke {fgsm_broken} of {n_attacked} examples but the best multi-step attack only "
            f"{best_broken}: iterative attacks are being misled (gradient masking near the clean input, or "
            "step sizes too small); results overstate robustness",
        )
    return Check(
        FGSM_WEAKER, True, f"FGSM broke {fgsm_broken} of {n_attacked}, the best multi-step attack {best_broken}"
    )


def covering_check(budget: float | None, n: int, n_robust: int, max_accuracy: float = 0.1) -> Check:
    """(c) At a budget whose ball covers the whole box, robust accuracy must be about zero."""
    if budget is None:
        return Check(COVERING, None, "the box is unbounded, so no budget covers it")
    if n == 0:
        return Check(COVERING, None, "no attackable example")
    acc = n_robust / n
    if acc > max_accuracy:
        return Check(
            COVERING,
            False,
            f"at budget {budget:g}, which reaches every point of the box, {acc:.4f} of {n} attackable examples "
            f"still resist (limit {max_accuracy:g}): an attack that can reach any input should find another "
            "class, so gradients are not leading the attack",
        )
    return Check(COVERING, True, f"robust accuracy {acc:.4f} on {n} attackable examples at budget {budget:g}")


def gradient_check(n_bad: int, n: int, max_share: float = 0.05) -> Check:
    """(d) Few examples may have an all-zero or non-finite input gradient."""
    if n == 0:
        return Check(GRADIENTS, None, "no attackable example")
    share = n_bad / n
    if share > max_share:
        return Check(
            GRADIENTS,
            False,
            f"{_pct(share)} of {n} attackable examples have an all-zero or non-finite input gradient (limit "
            f"{_pct(max_share)}): gradient attacks cannot move them (a non-differentiable layer such as rounding "
            "or quantisation?); attack through a differentiable approximation (BPDA) before trusting the numbers",
        )
    return Check(GRADIENTS, True, f"{_pct(share)} of {n} attackable examples have a zero or non-finite gradient")


def random_search_check(n_tested: int, n_broken: int, queries: int | None, tolerance: float = 0.01) -> Check:
    """(e) A gradient-free search may break at most max(1, 1%) of the gradient attacks' survivors."""
    if n_tested == 0:
        return Check(RANDOM_SEARCH, None, "no survivor of the gradient attacks to search")
    allowed = max(1, math.floor(tolerance * n_tested))
    how = "the gradient-free attack" if queries is None else f"a {queries}-query random search"
    if n_broken > allowed:
        return Check(
            RANDOM_SEARCH,
            False,
            f"{how} broke {n_broken} of {n_tested} examples that every gradient attack missed (limit {allowed}): "
            "gradients point the wrong way or are obfuscated; its successes are counted in the worst case",
        )
    return Check(RANDOM_SEARCH, True, f"{how} broke {n_broken} of {n_tested} survivors of the gradient attacks")


def logits_check(n_prob: int, n_nonfinite: int, n: int, sigmoid: bool = False) -> Check:
    """(f) Outputs must be logits: not all probability vectors, not a sigmoid column, all finite."""
    if n_nonfinite:
        return Check(
            LOGITS,
            False,
            f"{n_nonfinite} of {n} clean outputs are NaN or Inf (counted as misclassified): check the model",
        )
    if sigmoid:
        return Check(
            LOGITS,
            False,
            "the single output lies in [0, 1] on every input: it looks like a sigmoid probability; return the "
            "logit (before the sigmoid), else attacks and decisions are wrong",
        )
    if n and n_prob == n:
        return Check(
            LOGITS,
            False,
            "every output row lies in [0, 1] and sums to 1: the model returns probabilities (softmax), which "
            "flattens gradients; return the logits (drop the final softmax)",
        )
    return Check(LOGITS, True, f"{n - n_prob} of {n} output rows are not probability vectors")


def determinism_check(gap: float, eot: int, atol: float = DETERMINISM_TOL) -> Check:
    """(g) Two identical eval-mode forward passes must agree (else attacks average ``eot`` gradients)."""
    if gap > atol:
        return Check(
            DETERMINISTIC,
            False,
            f"two identical forward passes differ by {gap:.3g} (relative to the logits' scale): the model is "
            f"random (a random defence?); gradient attacks were rerun averaging {eot} gradient samples per step "
            "(expectation over transformation), but a random defence needs an adaptive evaluation",
        )
    return Check(DETERMINISTIC, True, "two identical forward passes agree")


#: how a verdict on a model no better than one without skill starts
TRIVIAL = "trivial model"
#: share of its clean figure a model must keep under attack to be called robust without qualification
ROBUST_SHARE = 0.9


def trivial_level(baseline: float, measure: str = "accuracy") -> float:
    """The clean figure at or below which a model is no better than a trivial one.

    ``baseline`` is what a model without skill scores: for accuracy, guessing (1/classes; 0 when not
    applicable), for recall, flagging at random at the false-positive rate reached on test data. Recall
    needs at least twice that rate and 5 points more; accuracy a tenth of the way from guessing to 100%.

    Example:
        >>> trivial_level(0.01, "recall"), round(trivial_level(0.1), 2)
        (0.060000000000000005, 0.19)
    """
    if measure == "recall":
        return max(2 * baseline, baseline + 0.05)
    return baseline + 0.1 * (1 - baseline) if baseline > 0 else 0.0


def verdict(
    checks: list[Check], budget: float, worst_accuracy: float, clean_accuracy: float, baseline: float = 0.0,
    measure: str = "accuracy",
) -> str:
    """The report's verdict, judging the level as well as the drop.

    * "trivial model: ..." if the clean figure (``measure`` among attackable examples) is no better than
      a model without skill (:func:`trivial_level` of ``baseline``): whatever the attacks did, such a
      model protects nothing, and a hardened model whose training collapsed lands here.
    * "not robust" if the worst case keeps half of the clean figure or less (an attack that takes half
      of a filter's recall is one to defend against), or is no better than ``baseline``: a failed
      masking check can only mean the attacks were too weak, so the verdict stands.
    * "inconclusive: <first failed check>" if a check failed.
    * "partly robust at budget B: keeps P% of clean <measure>" below :data:`ROBUST_SHARE`, else
      "robust at budget B".

    Example:
        >>> verdict([], 0.3, worst_accuracy=0.85, clean_accuracy=0.9)
        'robust at budget 0.3'
        >>> verdict([], 3, worst_accuracy=0.77, clean_accuracy=0.93, baseline=0.01, measure="recall")
        'partly robust at budget 3: keeps 83% of clean recall'
        >>> verdict([], 0.3, worst_accuracy=0.1, clean_accuracy=0.11, baseline=0.1)
        'trivial model: clean accuracy 11.0% is no better than guessing (10.0%)'
    """
    if clean_accuracy <= trivial_level(baseline, measure):
        against = (f"flagging at random at the false-positive rate ({baseline:.1%})" if measure == "recall"
                   else f"guessing ({baseline:.1%})")
        return f"{TRIVIAL}: clean {measure} {clean_accuracy:.1%} is no better than {against}"
    if not (worst_accuracy > 0.5 * clean_accuracy and worst_accuracy > baseline):
        return "not robust"
    failed = [c for c in checks if c.passed is False]
    if failed:
        return f"inconclusive: {failed[0].name}"
    kept = worst_accuracy / clean_accuracy
    if kept < ROBUST_SHARE:
        return f"partly robust at budget {budget:g}: keeps {kept:.0%} of clean {measure}"
    return f"robust at budget {budget:g}"
