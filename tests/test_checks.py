"""Gradient-masking checks: each trips on a model built to trip it; a healthy trained MLP passes them all."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import robustkit as rk
from robustkit.evaluation import CheckSettings, evaluate
from robustkit.evaluation import checks as ck
from tests.test_evaluate import BOX, blobs, trained_mlp

FAST = CheckSettings(search_queries=300, cover_examples=96)


def run(model: nn.Module, attacks="quick", budgets=(0.1,), settings: CheckSettings = FAST, n: int = 150):
    x, y = blobs(n)
    report = evaluate(
        model, (x, y), rk.LinfBall(eps=budgets[-1], bounds=BOX), budgets=list(budgets), attacks=attacks,
        checks=settings,
    )
    return report, {c.name: c for c in report.checks}


class Quantise(nn.Module):
    """Rounds inputs to a grid of 1/4: a non-differentiable layer (its gradient is zero)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 4) / 4


class Noise(nn.Module):
    """A random defence: fresh Gaussian noise on every call, in eval mode too."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.1 * torch.randn_like(x)


class _Reversed(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return -grad


class ReverseGradient(nn.Module):
    """Identity forward; the backward pass points the wrong way, so gradient attacks walk off."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Reversed.apply(x)


class _OnGridOnly(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        on_grid = (x * 8 == torch.round(x * 8)).all(dim=1, keepdim=True)
        return torch.where(on_grid, grad, -grad)


class GridTrap(nn.Module):
    """True gradients only at clean inputs (on a 1/8 grid), reversed anywhere else: one FGSM step from the
    clean input is right, while PGD from a random start is misled at every step."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _OnGridOnly.apply(x)


def test_healthy_mlp_passes_every_check():
    report, checks = run(trained_mlp(), attacks="standard", budgets=(0.05, 0.2, 0.1), settings=CheckSettings(), n=200)
    assert all(c.passed for c in report.checks), [c.line for c in report.checks]
    assert len(checks) == 7 and report.verdict == "robust at budget 0.1"
    assert checks[ck.RANDOM_SEARCH].detail.startswith("a 1000-query random search broke")


def test_quantisation_zeroes_gradients_and_makes_the_verdict_inconclusive():
    report, checks = run(nn.Sequential(Quantise(), trained_mlp()))
    assert checks[ck.GRADIENTS].passed is False and "100.0%" in checks[ck.GRADIENTS].detail
    assert report.verdict.startswith("inconclusive: ")
    assert checks[ck.LOGITS].passed and checks[ck.DETERMINISTIC].passed


def test_softmax_outputs_are_flagged():
    report, checks = run(nn.Sequential(trained_mlp(), nn.Softmax(dim=1)))
    assert checks[ck.LOGITS].passed is False and "probabilities" in checks[ck.LOGITS].detail
    assert report.verdict == f"inconclusive: {ck.LOGITS}"


def test_random_defence_is_flagged_and_attacked_with_eot():
    report, checks = run(nn.Sequential(Noise(), trained_mlp()), attacks=["pgd", "apgd-ce"])
    assert checks[ck.DETERMINISTIC].passed is False
    assert report.attacks["pgd"]["eot"] == 8 and report.attacks["apgd-ce"]["eot"] == 8
    assert report.verdict == f"inconclusive: {ck.DETERMINISTIC}"


def test_reversed_gradients_lose_to_the_random_search():
    report, checks = run(nn.Sequential(ReverseGradient(), trained_mlp()), budgets=(0.2,))
    assert checks[ck.RANDOM_SEARCH].passed is False, checks[ck.RANDOM_SEARCH].line
    assert checks[ck.COVERING].passed is False
    assert checks[ck.GRADIENTS].passed  # gradients exist; they are just wrong
    # the random search's successes count in the worst case
    assert report.robust_accuracy["worst"] < report.robust_accuracy["pgd"]
    assert report.verdict.startswith("inconclusive: ")


def test_fgsm_beating_pgd_is_flagged():
    x, y = blobs(150)
    x = torch.round(x * 8) / 8  # clean inputs on the grid where the trap's gradients are true
    report = evaluate(
        nn.Sequential(GridTrap(), trained_mlp()), (x, y), rk.LinfBall(eps=0.3, bounds=BOX), attacks=["pgd"], checks=FAST
    )
    check = {c.name: c for c in report.checks}[ck.FGSM_WEAKER]
    assert check.passed is False, check.line
    assert report.robust_accuracy["worst"] < report.robust_accuracy["pgd"]  # FGSM's successes are counted


def test_checks_can_be_skipped():
    report, _ = run(trained_mlp())
    assert len(report.checks) == 7
    x, y = blobs(60)
    skipped = evaluate(trained_mlp(), (x, y), rk.LinfBall(eps=0.1, bounds=BOX), attacks="quick", checks=False)
    assert skipped.checks == [] and not skipped.verdict.startswith("inconclusive")


def test_unbounded_box_makes_the_covering_check_not_applicable():
    x, y = blobs(60)
    report = evaluate(trained_mlp(), (x, y), rk.LinfBall(eps=0.1), attacks="quick", checks=FAST)
    covering = {c.name: c for c in report.checks}[ck.COVERING]
    assert covering.passed is None and covering.status == "not applicable"


# ---------------------------------------------------------------------------- the pieces on their own
def test_monotone_check():
    assert ck.monotone_check([0.1, 0.2, 0.3], [0.8, 0.6, 0.3], 100).passed
    assert ck.monotone_check([0.1, 0.2], [0.5, 0.505], 100).passed  # within one example
    failed = ck.monotone_check([0.3, 0.1, 0.2], [0.6, 0.5, 0.4], 100)
    assert failed.passed is False and "budget 0.2" in failed.detail and "budget 0.3" in failed.detail
    assert ck.monotone_check([0.1], [0.5], 100).passed is None


def test_fgsm_random_search_covering_and_gradient_thresholds():
    assert ck.fgsm_check(11, 10, 100).passed and ck.fgsm_check(12, 10, 100).passed is False
    assert ck.fgsm_check(None, 3, 100).passed is None
    assert ck.random_search_check(100, 1, 1000).passed and ck.random_search_check(100, 2, 1000).passed is False
    assert ck.random_search_check(500, 5, 1000).passed and ck.random_search_check(500, 6, 1000).passed is False
    assert ck.random_search_check(0, 0, 1000).passed is None
    assert ck.covering_check(2.0, 100, 10).passed and ck.covering_check(2.0, 100, 11).passed is False
    assert ck.covering_check(None, 100, 50).passed is None
    assert ck.gradient_check(5, 100).passed and ck.gradient_check(6, 100).passed is False


def test_measurements():
    model = trained_mlp()
    x, y = blobs(20)
    assert not ck.gradient_flags(model, x, y).any()
    assert ck.gradient_flags(nn.Sequential(Quantise(), model), x, y).all()
    assert not ck.gradient_flags(model, x, y, feature_mask=torch.tensor([True, False])).any()
    assert ck.gradient_flags(model, x, y, feature_mask=torch.tensor([False, False])).all()
    prob, bad = ck.output_flags(torch.tensor([[0.2, 0.8], [1.0, 2.0], [float("nan"), 0.0]]))
    assert prob.tolist() == [True, False, False] and bad.tolist() == [False, False, True]
    assert ck.determinism_gap(model, x) == 0.0 and ck.determinism_gap(nn.Sequential(Noise(), model), x) > 1e-3


def test_verdict_and_lines():
    ok = ck.Check("a", True, "fine")
    assert ck.verdict([ok], 0.3, 0.85, 0.9) == "robust at budget 0.3"
    assert ck.verdict([ok], 0.3, 0.5, 0.9) == "partly robust at budget 0.3: keeps 56% of clean accuracy"
    assert ck.verdict([ok], 0.3, 0.4, 0.9) == "not robust"
    assert ck.verdict([ok], 0.3, 0.0, 0.0).startswith("trivial model")
    assert ck.verdict([ok, ck.Check("b", False, "bad"), ck.Check("c", False, "")], 0.3, 0.9, 0.9) == "inconclusive: b"
    assert ck.Check("b", False, "bad").line == "FAILED: b (bad)"
    assert ck.Check.from_dict(ck.Check("c", None, "n/a").to_dict()) == ck.Check("c", None, "n/a")


@pytest.mark.parametrize(
    ("clean", "worst", "baseline", "measure", "starts"),
    [
        (0.027, 0.016, 0.01, "recall", "trivial model"),  # a fraud model catching 2.7% of fraud clean
        (0.095, 0.087, 0.05, "recall", "trivial model"),  # credit default at 9.5% recall, 5% false positives
        (0.11, 0.10, 0.1, "accuracy", "trivial model"),  # hardened MNIST training collapsed to 11%
        (0.93, 0.77, 0.01, "recall", "partly robust at budget 3"),  # standard MiniLM spam filter
        (0.93, 0.93, 0.01, "recall", "robust at budget 3"),  # its hardened version
    ],
)
def test_the_verdict_judges_the_level_as_well_as_the_drop(clean, worst, baseline, measure, starts):
    """The cases a new user met: none of the trivial models is called robust, and the standard and the
    hardened spam filter no longer share one verdict."""
    failed = [ck.Check("input gradients are informative", False, "")]
    said = ck.verdict([], 3, worst, clean, baseline, measure)
    assert said.startswith(starts)
    if starts == "trivial model":  # a failed check cannot make it inconclusive either
        assert ck.verdict(failed, 3, worst, clean, baseline, measure) == said


def test_a_failed_check_cannot_rescue_a_model_that_is_already_broken():
    """Masking only hides successful attacks: a model broken despite it is 'not robust', not 'inconclusive'."""
    failed = [ck.Check("b", False, "bad")]
    assert ck.verdict(failed, 0.3, worst_accuracy=0.1, clean_accuracy=0.9) == "not robust"
    assert ck.verdict(failed, 0.3, worst_accuracy=0.8, clean_accuracy=0.9) == "inconclusive: b"
