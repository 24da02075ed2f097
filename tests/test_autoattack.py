"""AutoAttack's members: top-k targeted APGD, Square, FAB, minimal-norm curves and the presets.

The closed-form checks use linear models, whose optimal and minimal perturbations are known.
"""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch

import robustkit as rk


def _target_model(bias_t: float = 0.0) -> torch.nn.Linear:
    """4 classes over 6 features: class 0 fixed at 5, class 1 rises with a.x, classes 2 and 3 fixed at -10.

    Both the targeted CE and the targeted DLR loss towards class 1 grow with ``a.x`` wherever class 0 is
    the true class, so the optimum over a box is its vertex along ``sign(a)``.
    """
    model = torch.nn.Linear(6, 4).double()
    with torch.no_grad():
        model.weight.zero_()
        model.weight[1] = torch.tensor([3.0, -2.0, 1.0, -1.0, 2.0, 0.5])
        model.bias.copy_(torch.tensor([5.0, bias_t, -10.0, -10.0]))
    return model


@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_targeted_apgd_reaches_the_targets_optimum(loss):
    model = _target_model(bias_t=1.5)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 6, generator=g, dtype=torch.float64)
    y, t = torch.zeros(16, dtype=torch.long), torch.ones(16, dtype=torch.long)
    space = rk.LinfBall(eps=0.2, bounds=(0.0, 1.0))
    result = rk.APGD(space, steps=20, loss=loss, targeted=True, early_stop=False)(model, x, y, target=t)
    a = model.weight[1].detach()
    optimum = torch.clamp(x + 0.2 * a.sign(), 0.0, 1.0)
    torch.testing.assert_close(result.x_adv, optimum, atol=1e-9, rtol=0)
    reached = model(optimum).argmax(1) == 1
    assert 0 < int(reached.sum()) < 16  # the budget reaches the target for some examples only
    assert torch.equal(result.success, reached)


def test_top_k_targets_try_the_next_class_when_the_first_is_out_of_reach():
    # at x = 0.5: logits 3, 1.5, 1.3, ...; within eps 0.3 class 1 tops out at 1.8, class 2 at 4.0
    model = torch.nn.Linear(4, 5).double()
    with torch.no_grad():
        model.weight.zero_()
        model.weight[1, 0] = 1.0
        model.weight[2, 1:] = 3.0
        model.bias.copy_(torch.tensor([3.0, 1.0, -3.2, -20.0, -20.0]))
    x = torch.full((3, 4), 0.5, dtype=torch.float64)
    y = torch.zeros(3, dtype=torch.long)
    space = rk.LinfBall(eps=0.3, bounds=(0.0, 1.0))
    first_only = rk.APGD(space, steps=10, loss="dlr", targeted=1)(model, x, y)
    two = rk.APGD(space, steps=10, loss="dlr", targeted=2)(model, x, y)
    assert not bool(first_only.success.any())
    assert bool(two.success.all())
    assert bool((model(two.x_adv).argmax(1) == 2).all())
    assert bool(space.contains(two.x_adv, x).all())
    assert two.forward_passes > first_only.forward_passes


def test_top_k_mode_is_untargeted_from_outside():
    attack = rk.APGD(rk.LinfBall(eps=0.1), loss="dlr", targeted=9)
    assert attack.targeted is False and attack.top_k == 9 and attack.config()["targeted"] == 9
    with pytest.raises(rk.ConfigError):
        attack(torch.nn.Linear(2, 4), torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), target=torch.ones(1))
    with pytest.raises(rk.ConfigError, match="number of target classes"):
        rk.APGD(rk.LinfBall(eps=0.1), targeted=0)


# ----------------------------------------------------------------------------- Square


def _constant_model(n_classes: int = 3) -> torch.nn.Module:
    """Predicts class 0 whatever the input: examples labelled 0 can never be broken."""
    linear = torch.nn.Linear(2 * 8 * 8, n_classes)
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.copy_(torch.arange(n_classes, 0, -1).float())
    return torch.nn.Sequential(torch.nn.Flatten(), linear)


@pytest.mark.parametrize("space", [rk.LinfBall(eps=0.1, bounds=(0.0, 1.0)), rk.L2Ball(eps=1.0, bounds=(0.0, 1.0))])
def test_square_counts_its_queries_exactly(space):
    x = torch.rand(5, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 0, 1, 0, 2])  # three unbreakable, two already misclassified at the start
    result = rk.Square(space, queries=37)(_constant_model(), x, y)
    assert result.success.tolist() == [False, False, True, False, True]
    # 38 queries per unbreakable example, 1 per broken one, plus the re-check of the 2 successes
    assert result.forward_passes == 3 * 38 + 2 + 2
    assert result.backward_passes == 0
    assert bool(space.contains(result.x_adv, x).all())


def test_square_window_schedule():
    attack = rk.Square(rk.LinfBall(eps=0.3), queries=5000, p_init=0.8)
    assert [attack.side(i, 28, 28) for i in (0, 10, 11, 51, 201, 501, 1001, 2001, 4001)] == [
        25, 25, 18, 13, 9, 6, 4, 3, 2]
    l2 = rk.Square(rk.L2Ball(eps=1.0), queries=5000, p_init=0.8)
    assert [l2.side(i, 28, 28) for i in (0, 11, 2001, 4001)] == [25, 19, 3, 3]  # odd, at least 3


def _linear_image_model() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 8 * 8, 3))
    x = torch.rand(24, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    return model, x, model(x).argmax(1).detach()


def _linf_breakable(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Exactly which examples some point of the Linf ball (in [0, 1]) misclassifies, for a linear model."""
    w, b = model[1].weight.detach(), model[1].bias.detach()
    xf, out = x.flatten(1), torch.zeros(len(x), dtype=torch.bool)
    for j in range(w.shape[0]):
        d, c = w[j] - w[y], b[j] - b[y]
        corner = torch.where(d > 0, (xf + eps).clamp(max=1.0), (xf - eps).clamp(min=0.0))
        out |= (y != j) & ((corner * d).sum(1) + c > 0)
    return out


def test_linf_square_breaks_exactly_the_breakable_examples_of_a_linear_model():
    model, x, y = _linear_image_model()
    space = rk.LinfBall(eps=0.3, bounds=(0.0, 1.0))
    result = rk.Square(space, queries=1000)(model, x, y)
    assert bool(space.contains(result.x_adv, x).all())
    assert torch.equal(result.success, _linf_breakable(model, x, y, 0.3))
    assert int((~result.success).sum()) > 0
    assert torch.equal(result.success, model(result.x_adv).argmax(1) != y)


def test_l2_square_stays_on_the_sphere_and_breaks_a_linear_model():
    model, x, y = _linear_image_model()
    w = model[1].weight.detach()
    logits = model(x).detach()
    # the L2 distance to the nearest other class's hyperplane, ignoring the box: a lower bound
    gaps = (logits.gather(1, y[:, None]) - logits) / (w[y][:, None, :] - w[None]).norm(dim=2).clamp_min(1e-12)
    nearest = gaps.masked_fill(torch.nn.functional.one_hot(y, 3).bool(), float("inf")).amin(1)
    space = rk.L2Ball(eps=3.0, bounds=(0.0, 1.0))
    result = rk.Square(space, queries=300)(model, x, y)
    assert bool(space.contains(result.x_adv, x).all())
    assert not bool(result.success[nearest > 3.0].any())
    assert result.success[nearest < 2.0].float().mean() > 0.9
    assert torch.equal(result.success, model(result.x_adv).argmax(1) != y)


# ----------------------------------------------------------------------------- FAB


def _two_class_linear(dim: int = 6, seed: int = 0) -> tuple[torch.nn.Linear, torch.Tensor, torch.Tensor]:
    """5 classes where only classes 0 (true) and 1 compete; the others sit far below."""
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Linear(dim, 5).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(5, dim, generator=g, dtype=torch.float64))
        model.weight[2:] = 0.0
        model.bias.copy_(torch.tensor([2.0, 0.0, -100.0, -100.0, -100.0]))
    x = 0.2 * torch.randn(10, dim, generator=g, dtype=torch.float64)
    assert bool((model(x).argmax(1) == 0).all())
    return model, x, torch.zeros(10, dtype=torch.long)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("targeted", [True, 3])
def test_fab_finds_the_exact_minimal_distance_to_a_linear_boundary(norm, targeted):
    model, x, y = _two_class_linear()
    w = (model.weight[1] - model.weight[0]).detach()
    gap = (model(x)[:, 0] - model(x)[:, 1]).detach()
    exact = gap / (w.abs().sum() if norm == "linf" else w.norm())
    space = (rk.LinfBall if norm == "linf" else rk.L2Ball)(eps=10.0)
    target = torch.ones(10, dtype=torch.long) if targeted is True else None
    fab = rk.FAB(space, steps=20, targeted=targeted, early_stop=False, search_steps=30)
    result = fab(model, x, y, target=target)
    assert bool(result.success.all())
    torch.testing.assert_close(result.info["norms"], exact, atol=1e-3, rtol=0)
    assert bool((result.info["norms"] >= exact - 1e-9).all())
    # without the final bisection (AutoAttack's FAB) it stops within the overshoot of eta = 1.05
    plain = rk.FAB(space, steps=20, targeted=targeted, early_stop=False)(model, x, y, target=target)
    assert bool((plain.info["norms"] <= 1.05 * exact + 1e-9).all())


def test_fab_success_means_within_the_budget():
    model, x, y = _two_class_linear()
    w = (model.weight[1] - model.weight[0]).detach()
    exact = (model(x)[:, 0] - model(x)[:, 1]).detach() / w.abs().sum()
    eps = float(exact.median())
    space = rk.LinfBall(eps=eps)
    result = rk.FAB(space, steps=30, targeted=4)(model, x, y)
    assert bool(space.contains(result.x_adv, x).all())
    assert torch.equal(result.success, exact < 0.99 * eps) or torch.equal(result.success, exact <= eps)
    assert bool((model(result.x_adv).argmax(1) != 0)[result.success].all())


def test_hyperplane_projection_respects_the_box():
    g = torch.Generator().manual_seed(3)
    p = torch.rand(50, 7, generator=g, dtype=torch.float64)
    w = torch.randn(50, 7, generator=g, dtype=torch.float64)
    c = (w * torch.rand(50, 7, generator=g, dtype=torch.float64)).sum(1)  # a plane through a box point
    low, high = torch.zeros_like(p), torch.ones_like(p)
    for norm in ("linf", "l2"):
        z = rk.attacks.fab.project_onto_hyperplane(p, w, c, low, high, norm)
        torch.testing.assert_close((w * z).sum(1), c)
        assert bool(((z >= 0) & (z <= 1)).all())
        # no random box point on the plane is nearer (moving along the plane from z)
        size = (z - p).abs().amax(1) if norm == "linf" else (z - p).norm(dim=1)
        for _ in range(20):
            v = torch.randn(50, 7, generator=g, dtype=torch.float64)
            v -= (v * w).sum(1, keepdim=True) / (w * w).sum(1, keepdim=True) * w
            other = z + 0.05 * v
            inside = ((other >= 0) & (other <= 1)).all(1)
            other_size = (other - p).abs().amax(1) if norm == "linf" else (other - p).norm(dim=1)
            assert bool((other_size[inside] >= size[inside] - 1e-9).all())


# ----------------------------------------------------------------------------- presets


def test_autoattack_preset_has_the_references_attacks_settings_and_order():
    from robustkit.evaluation.presets import PRESETS

    preset = PRESETS["autoattack"]
    assert PRESETS["aa-standard"] is preset and preset.cascade
    space = rk.LinfBall(eps=0.3, bounds=(0.0, 1.0))
    specs = preset.attacks_for(n_classes=10)
    built = [spec.build(space, seed=0) for spec in specs]
    assert [s.label for s in specs] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert [type(a) for a in built] == [rk.APGD, rk.APGD, rk.FAB, rk.Square]
    ce, apgd_t, fab_t, square = built
    assert (ce.steps, ce.restarts, ce.loss_name, ce.top_k, ce.rho, ce.eot) == (100, 1, "ce", 0, 0.75, 1)
    assert (apgd_t.steps, apgd_t.restarts, apgd_t.loss_name, apgd_t.top_k) == (100, 1, "dlr", 9)
    assert (fab_t.steps, fab_t.restarts, fab_t.top_k, fab_t.search_steps) == (100, 1, 9, 0)
    assert (fab_t.alpha_max, fab_t.eta, fab_t.beta) == (0.1, 1.05, 0.9)
    assert (square.queries, square.p_init, square.rescale_schedule, square.loss_name) == (5000, 0.8, False, "margin")
    with pytest.raises(rk.ConfigError, match="4\\+ classes"):
        preset.attacks_for(n_classes=3)
    rand = PRESETS["aa-rand"].attacks_for(n_classes=10)
    assert [(s.label, s.options["eot"], s.options["steps"]) for s in rand] == [
        ("apgd-ce", 20, 100), ("apgd-dlr", 20, 100)]
    assert PRESETS["aa-rand"].cascade


def _image_task() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 8 * 8, 5))
    x = torch.rand(16, 2, 8, 8, generator=torch.Generator().manual_seed(2))
    y = model(x).argmax(1).detach()
    y[:2] = (y[:2] + 1) % 5  # two examples misclassified when clean
    return model, x, y


def test_autoattack_preset_runs_with_the_references_row_names():
    model, x, y = _image_task()
    report = rk.evaluate(model, (x, y), rk.LinfBall(eps=0.3, bounds=(0.0, 1.0)), attacks="aa-standard", checks=False)
    rows = report.per_budget[0]["attacks"]
    assert list(rows) == ["apgd-ce", "apgd-t", "fab-t", "square", "worst"]
    # APGD-CE breaks every example at this budget: the later attacks see none and spend nothing
    assert [rows[k]["robust_accuracy"] for k in rows] == [0.0] * 5
    assert [rows[k]["forward_passes"] for k in ("apgd-t", "fab-t", "square")] == [0, 0, 0]


def test_a_cascade_runs_each_attack_on_the_survivors_and_reports_cumulative_rows(monkeypatch):
    from robustkit.evaluation import presets

    weak, strong = presets._random_search(100), presets._pgd(10)
    cheap = presets.Preset("cheap", (weak, strong, presets.ATTACKS["fgsm"]), "search, PGD, FGSM", cascade=True)
    monkeypatch.setitem(presets.PRESETS, "cheap", cheap)
    model, x, y = _image_task()
    space = rk.LinfBall(eps=0.02, bounds=(0.0, 1.0))
    rows = rk.evaluate(model, (x, y), space, attacks="cheap", checks=False).per_budget[0]["attacks"]
    alone = rk.evaluate(model, (x, y), space, attacks=["pgd"], checks=False).per_budget[0]["attacks"]
    first, second = rows["random-search"]["robust_accuracy"], rows["pgd"]["robust_accuracy"]
    assert second < first < 14 / 16  # the search breaks some, PGD more
    # the PGD row is the robust accuracy after the search and PGD
    assert second <= alone["pgd"]["robust_accuracy"]
    assert rows["fgsm"]["robust_accuracy"] == rows["worst"]["robust_accuracy"] <= second
    # PGD ran only on the search's survivors: at most 11 forward passes each, plus the re-check of its successes
    survivors = round(first * 16)
    assert rows["pgd"]["forward_passes"] <= 12 * survivors < alone["pgd"]["forward_passes"]


# ----------------------------------------------------------------------------- rk.attack


def test_one_line_attack_returns_the_tensor_of_the_full_result():
    model, x, y = _image_task()
    x_adv = rk.attack(model, x, y, eps=0.05, norm="Linf", steps=10)
    result = rk.attack_result(model, x, y, eps=0.05, norm="Linf", steps=10)
    assert torch.equal(x_adv, result.x_adv)
    assert bool(rk.LinfBall(eps=0.05, bounds=(0.0, 1.0)).contains(x_adv, x).all())
    assert torch.equal(result.success, model(x_adv).argmax(1) != y)
    with pytest.raises(rk.ConfigError, match="norm"):
        rk.attack(model, x, y, eps=0.1, norm="L7")
    with pytest.raises(rk.ConfigError, match="method"):
        rk.attack(model, x, y, eps=0.1, method="cw")


# ----------------------------------------------------------------------------- FMN and curves


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fmn_finds_the_exact_minimal_distance_to_a_linear_boundary(norm):
    model, x, y = _two_class_linear()
    w = (model.weight[1] - model.weight[0]).detach()
    gap = (model(x)[:, 0] - model(x)[:, 1]).detach()
    exact = gap / (w.abs().sum() if norm == "linf" else w.norm())
    space = (rk.LinfBall if norm == "linf" else rk.L2Ball)(eps=10.0)
    result = rk.FMN(space, steps=50, early_stop=False)(model, x, y)
    assert bool(result.success.all())
    torch.testing.assert_close(result.info["norms"], exact, atol=1e-3, rtol=0)
    assert bool((result.info["norms"] >= exact - 1e-9).all())
    assert bool((model(result.x_adv).argmax(1) != 0).all())


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fmn_from_a_far_adversarial_start_shrinks_to_the_exact_minimal_distance(norm):
    model, x, y = _two_class_linear()
    w = (model.weight[1] - model.weight[0]).detach()
    gap = (model(x)[:, 0] - model(x)[:, 1]).detach()
    exact = gap / (w.abs().sum() if norm == "linf" else w.norm())
    # a start three times past the boundary along the optimal direction, and one short of it
    direction = w.sign() / exact[:, None] if norm == "linf" else (w / w.norm())[None, :] / exact[:, None]
    far = x + 3 * exact[:, None] ** 2 * direction
    assert bool((model(far).argmax(1) == 1).all())
    start = torch.where(torch.arange(10)[:, None] < 5, far, x + 0.5 * (far - x) / 3)
    space = (rk.LinfBall if norm == "linf" else rk.L2Ball)(eps=10.0)
    result = rk.FMN(space, steps=50, early_stop=False)(model, x, y, start=start)
    assert bool(result.success.all())
    torch.testing.assert_close(result.info["norms"], exact, atol=1e-3, rtol=0)
    assert bool((result.info["norms"] >= exact - 1e-9).all())
    # one step checks the start, bisected towards the input (the boundary lies a third of the way to
    # ``far``: ten halvings end within 2**-10 of that scale); from the input one step finds nothing
    one = rk.FMN(space, steps=1, early_stop=False)
    shrunk = one(model, x, y, start=far)
    assert bool(shrunk.success.all()) and not bool(one(model, x, y).success.any())
    assert bool((shrunk.info["norms"] <= exact * (1 + 3 * 2**-10) + 1e-6).all())


def test_only_attacks_that_take_a_start_accept_one_and_only_a_valid_one():
    model, x, y = _two_class_linear()
    with pytest.raises(rk.ConfigError, match="does not take start"):
        rk.PGD(rk.LinfBall(eps=0.1), steps=2)(model, x, y, start=x)
    fmn = rk.FMN(rk.LinfBall(eps=0.1, bounds=(-10.0, 10.0)), steps=2)
    with pytest.raises(rk.DataError, match="shaped like the inputs"):
        fmn(model, x, y, start=x[:3])
    with pytest.raises(rk.DataError, match="start points: inputs contain NaN"):
        fmn(model, x, y, start=torch.where(torch.arange(10)[:, None] == 3, float("nan"), x))
    with pytest.raises(rk.DataError, match="start points: inputs lie outside the space's bounds"):
        fmn(model, x, y, start=x + 100.0)


@pytest.mark.parametrize("method", ["fmn", "fab"])
def test_one_run_gives_the_whole_curve_of_a_linear_model(method):
    from robustkit.evaluation.curves import robustness_curve

    model, x, y = _two_class_linear()
    y = y.clone()
    y[0] = 1  # misclassified when clean: robust at no budget, norm 0
    w = (model.weight[1] - model.weight[0]).detach()
    exact = ((model(x)[:, 0] - model(x)[:, 1]) / w.norm()).detach()
    ranked = sorted(float(e) for e in exact[1:])
    budgets = [0.0, *((a + b) / 2 for a, b in pairwise(ranked)), ranked[-1] + 0.1]
    curve = robustness_curve(model, x, y, rk.L2Ball(eps=1.0), budgets, method=method, steps=30)
    assert curve.clean_accuracy == 0.9
    if method == "fmn":  # without the warm start, FMN alone gives the same curve on a linear model
        cold = robustness_curve(model, x, y, rk.L2Ball(eps=1.0), budgets, steps=30, warm_start=False)
        assert cold.robust_accuracy == curve.robust_accuracy
    # between two examples' distances, exactly one more example is broken
    assert curve.robust_accuracy == pytest.approx([0.9 - k / 10 for k in range(10)])
    assert curve.median_norm == pytest.approx(float(exact[1:].median()), abs=1e-3)
    assert float(curve.norms[0]) == 0.0


@pytest.mark.parametrize("seed", [0, 1])
def test_a_one_step_curve_finds_the_boundary_only_from_the_warm_start(seed):
    from robustkit.evaluation.curves import robustness_curve

    model, x, y = _two_class_linear(seed=seed)
    w = (model.weight[1] - model.weight[0]).detach()
    exact = ((model(x)[:, 0] - model(x)[:, 1]) / w.norm()).detach()
    ranked = sorted(float(e) for e in exact)
    budgets = [(a + b) / 2 for a, b in pairwise(ranked)]
    space = rk.L2Ball(eps=1.0)
    cold = robustness_curve(model, x, y, space, budgets, steps=1, warm_start=False)
    assert cold.robust_accuracy == [1.0] * len(budgets)  # one FMN step from the input crosses nothing
    warm = robustness_curve(model, x, y, space, budgets, steps=1)
    # the exact curve loses one example per budget; one step leaves some points a little past the boundary
    assert all(0.9 - k / 10 - 1e-9 <= a <= 1.1 - k / 10 + 1e-9 for k, a in enumerate(warm.robust_accuracy))
    assert float(exact.median()) - 1e-9 <= warm.median_norm <= 1.1 * float(exact.median())


def test_fast_checks_run_the_same_checks_on_smaller_samples():
    model, x, y = _image_task()
    space = rk.LinfBall(eps=0.01, bounds=(0.0, 1.0))
    ck = rk.evaluation.checks
    fast = rk.evaluate(model, (x, y), space, attacks="quick", checks="fast")
    assert [c.name for c in fast.checks] == [ck.LOGITS, ck.DETERMINISTIC, ck.GRADIENTS, ck.FGSM_WEAKER,
                                             ck.RANDOM_SEARCH, ck.COVERING, ck.MONOTONE]
    search = {c.name: c.detail for c in fast.checks}[ck.RANDOM_SEARCH]
    assert "300-query" in search
    with pytest.raises(rk.ConfigError, match="'fast'"):
        rk.evaluate(model, (x, y), space, attacks="quick", checks="slow")


def test_a_top_k_attack_transfers_from_a_surrogate():
    model, x, y = _image_task()
    attack = rk.Transfer(rk.APGD(rk.LinfBall(eps=0.1, bounds=(0.0, 1.0)), loss="dlr", targeted=3, steps=5), model)
    result = attack(model, x, y)
    assert torch.equal(result.success, model(result.x_adv).argmax(1) != y)
