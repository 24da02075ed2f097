"""DiscreteSearch on a toy categorical space with hand-set logistic models (closed-form optima)."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import robustkit as rk
from robustkit.spaces import Edit
from tests.toy_discrete import CategoricalSpace, logistic_model, score

# z = bias + sum_j W[j][x_j]; class 1 when z > 0. From (0, 0, 0, 0) the edits gain
# +3 (x0 -> 2), +2.5 (x2 -> 2), +2 (x1 -> 1), +0.5 (x3 -> 1), in that order of preference.
W = [
    [0.0, 1.0, 3.0],
    [0.0, 2.0],
    [0.0, -1.0, 2.5, 0.5],
    [0.0, 0.5, -2.0],
]
N_CATEGORIES = [len(w) for w in W]


def space(budget: float) -> CategoricalSpace:
    return CategoricalSpace(N_CATEGORIES, budget)


def encoded_logits(model: nn.Module, sp: CategoricalSpace, xs: list[tuple[int, ...]]) -> torch.Tensor:
    with torch.no_grad():
        return rk.logits_of(model(sp.encode(xs)))


@pytest.mark.parametrize("loss", ["ce", "margin"])
@pytest.mark.parametrize("candidates_per_step", [1, 8])
@pytest.mark.parametrize(
    ("budget", "expected"),
    [
        # gains from (0, 0, 0, 0): +3, +2.5, +2, +0.5; from (1, 1, 1, 2): +3.5, +2.5, +1 (x2, x3, x0), -2 (x1)
        (1, [(2, 0, 0, 0), (1, 1, 2, 2)]),
        (2, [(2, 0, 2, 0), (1, 1, 2, 1)]),
        (3, [(2, 1, 2, 0), (2, 1, 2, 1)]),
        (4, [(2, 1, 2, 1), (2, 1, 2, 1)]),  # the second stops after 3 edits: its last edit lowers the loss
    ],
)
def test_finds_the_closed_form_optimum_without_success(loss, candidates_per_step, budget, expected):
    model = logistic_model(W, bias=-10.0)  # too far from the boundary for any edit set to succeed
    x = [(0, 0, 0, 0), (1, 1, 1, 2)]
    result = rk.DiscreteSearch(space(budget), candidates_per_step=candidates_per_step, loss=loss)(
        model, x, [0, 0]
    )
    assert result.x_adv == expected
    assert not result.success.any()
    assert bool(space(budget).contains(result.x_adv, x).all())
    brute = [
        max(score(W, -10.0, o) for o in space(budget).objects() if space(budget).changed(o, xi) <= budget)
        for xi in x
    ]
    assert [score(W, -10.0, o) for o in result.x_adv] == pytest.approx(brute)


def test_early_stop_ends_at_the_first_success():
    model = logistic_model(W, bias=-4.0)  # one edit reaches z = -1, two reach z = 1.5 > 0
    x = [(0, 0, 0, 0)]
    stopped = rk.DiscreteSearch(space(3))(model, x, [0])
    assert stopped.x_adv == [(2, 0, 2, 0)] and bool(stopped.success[0])
    greedy = rk.DiscreteSearch(space(3), early_stop=False)(model, x, [0])
    assert greedy.x_adv == [(2, 1, 2, 0)] and bool(greedy.success[0])
    assert float(greedy.loss[0]) > float(stopped.loss[0])


def test_lowers_the_logit_of_class_one():
    model = logistic_model(W, bias=-7.0)  # (2, 1, 2, 1) has z = 1: class 1
    result = rk.DiscreteSearch(space(1))(model, [(2, 1, 2, 1)], [1])
    assert result.x_adv == [(2, 1, 1, 1)]  # x2 -> 1 drops z by 3.5, the largest drop
    assert bool(result.success[0])


def test_max_steps_limits_the_rounds():
    model = logistic_model(W, bias=-10.0)
    result = rk.DiscreteSearch(space(3), max_steps=1)(model, [(0, 0, 0, 0)], [0])
    assert result.x_adv == [(2, 0, 0, 0)]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("budget", [1, 2, 3])
def test_matches_brute_force_on_random_linear_models(seed, budget):
    gen = torch.Generator().manual_seed(seed)
    n_categories = [3, 4, 2, 3, 5]
    weights = [torch.randn(n, generator=gen).tolist() for n in n_categories]
    bias = -sum(max(w) for w in weights) - 1.0  # no object reaches class 1
    sp = CategoricalSpace(n_categories, budget)
    x = [tuple(int(torch.randint(n, (1,), generator=gen)) for n in n_categories) for _ in range(6)]
    result = rk.DiscreteSearch(sp, candidates_per_step=2, loss="margin")(
        logistic_model(weights, bias), x, [0] * 6
    )
    assert bool(sp.contains(result.x_adv, x).all())
    for xi, adv in zip(x, result.x_adv, strict=True):
        best = max(score(weights, bias, o) for o in sp.objects() if sp.changed(o, xi) <= budget)
        assert score(weights, bias, adv) == pytest.approx(best, abs=1e-5)


def random_problem(n: int = 24, n_classes: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    sp = CategoricalSpace([4, 3, 5, 2, 4], budget=2)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(sp.width, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, n_classes))
    x = [tuple(int(torch.randint(k, (1,), generator=gen)) for k in sp.n_categories) for _ in range(n)]
    y = torch.randint(0, n_classes, (n,), generator=gen)
    return sp, model, x, y


def test_results_are_contained_and_success_matches_a_fresh_prediction():
    sp, model, x, y = random_problem()
    result = rk.DiscreteSearch(sp)(model, x, y)
    assert isinstance(result.x_adv, list) and len(result.x_adv) == len(x)
    assert bool(sp.contains(result.x_adv, x).all())
    model.eval()
    fresh = encoded_logits(model, sp, result.x_adv).argmax(1) != y
    assert torch.equal(result.success, fresh)
    assert result.success.any()  # the attack does something on this model


def test_targeted_success_means_predicting_the_target():
    sp, model, x, y = random_problem(n_classes=4, seed=1)
    target = (y + 1) % 4
    result = rk.DiscreteSearch(sp, targeted=True)(model, x, y, target=target)
    assert bool(sp.contains(result.x_adv, x).all())
    model.eval()
    assert torch.equal(result.success, encoded_logits(model, sp, result.x_adv).argmax(1) == target)
    with pytest.raises(rk.ConfigError, match="target="):
        rk.DiscreteSearch(sp, targeted=True)(model, x, y)


def test_budget_zero_changes_nothing_and_needs_no_gradient():
    sp, model, x, y = random_problem()
    result = rk.DiscreteSearch(sp.with_budget(0))(model, x, y)
    assert result.x_adv == x
    assert result.backward_passes == 0
    model.eval()
    assert torch.equal(result.success, encoded_logits(model, sp, x).argmax(1) != y)


def test_masked_out_examples_are_untouched():
    sp, model, x, y = random_problem()
    mask = torch.arange(len(x)) % 3 != 0
    result = rk.DiscreteSearch(sp)(model, x, y, mask=mask)
    for i in (~mask).nonzero().squeeze(1).tolist():
        assert result.x_adv[i] is x[i]
    assert torch.equal(result.attacked, mask)
    assert not result.success[~mask].any() and not result.loss[~mask].any()
    nothing = rk.DiscreteSearch(sp)(model, x, y, mask=torch.zeros(len(x), dtype=torch.bool))
    assert nothing.x_adv == x and nothing.forward_passes == 0


def test_pass_counts_and_early_exit_on_already_misclassified_inputs():
    sp, model, x, y = random_problem()
    first = rk.DiscreteSearch(sp)(model, x, y)
    assert first.forward_passes > len(x) and first.backward_passes >= len(x)
    won = first.success.nonzero().squeeze(1)
    adv = [first.x_adv[i] for i in won.tolist()]
    again = rk.DiscreteSearch(sp)(model, adv, y[won])
    n = len(adv)
    assert bool(again.success.all()) and again.x_adv == adv
    assert again.backward_passes == n  # the first round's gradient only: nothing is searched
    assert again.forward_passes == 2 * n  # that round's forward and the final confirmation


def test_model_state_is_left_as_found():
    sp, model, x, y = random_problem()
    model.train()
    model[0].weight.requires_grad_(False)
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    rk.DiscreteSearch(sp)(model, x, y)
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())


def test_config_and_repr():
    attack = rk.DiscreteSearch(space(2), candidates_per_step=3, max_steps=5)
    assert attack.config()["candidates_per_step"] == 3 and attack.config()["max_steps"] == 5
    assert "DiscreteSearch" in repr(attack)
    assert attack.with_space(space(1)).space.budget == 1


# ----------------------------------------------------------------- errors


def test_bad_configuration_raises_config_error():
    with pytest.raises(rk.ConfigError, match="DiscreteSpace"):
        rk.DiscreteSearch(rk.LinfBall(eps=0.1))
    with pytest.raises(rk.ConfigError, match="continuous space"):
        rk.PGD(space(1))
    with pytest.raises(rk.ConfigError, match="candidates_per_step"):
        rk.DiscreteSearch(space(1), candidates_per_step=0)
    with pytest.raises(rk.ConfigError, match="max_steps"):
        rk.DiscreteSearch(space(1), max_steps=0)
    with pytest.raises(rk.ConfigError, match="budget"):
        space(-1)


def test_bad_inputs_raise_data_error():
    model = logistic_model(W, bias=0.0)
    attack = rk.DiscreteSearch(space(1))
    with pytest.raises(rk.DataError, match="list of objects"):
        attack(model, torch.zeros(2, 4), [0, 0])
    with pytest.raises(rk.DataError, match="list of objects"):
        attack(model, "0000", [0])
    with pytest.raises(rk.DataError, match="2 inputs but 1 labels"):
        attack(model, [(0, 0, 0, 0), (0, 0, 0, 0)], [0])
    with pytest.raises(rk.DataError, match="not a valid object"):
        attack(model, [(0, 0, 0, 0), (3, 0, 0, 0)], [0, 0])  # variable 0 has 3 categories
    with pytest.raises(rk.DataError, match="labels go up to 2"):
        attack(model, [(0, 0, 0, 0)], [2])
    with pytest.raises(rk.DataError, match="mask"):
        attack(model, [(0, 0, 0, 0)], [0], mask=torch.ones(2, dtype=torch.bool))


class LongCodes(CategoricalSpace):
    def encode(self, xs, device="cpu"):
        return torch.tensor(xs, device=device)


class Overspending(CategoricalSpace):
    def candidates(self, x, original):  # ignores the budget
        return [Edit(j, (x[j] + 1) % n) for j, n in enumerate(self.n_categories)]


def test_broken_spaces_raise_config_error():
    model = logistic_model(W, bias=-10.0)
    with pytest.raises(rk.ConfigError, match="float tensor"):
        rk.DiscreteSearch(LongCodes(N_CATEGORIES, 1))(model, [(0, 0, 0, 0)], [0])
    with pytest.raises(rk.ConfigError, match="contains rejects"):
        rk.DiscreteSearch(Overspending(N_CATEGORIES, 1), max_steps=3)(model, [(0, 0, 0, 0)], [0])


def test_all_objects_of_the_toy_space_are_contained_in_the_full_budget_space():
    sp = space(len(W))
    objs = list(sp.objects())
    assert len(objs) == 3 * 2 * 4 * 3
    assert bool(sp.contains(objs, [(0, 0, 0, 0)] * len(objs)).all())
    assert not bool(space(1).contains([(1, 1, 0, 0)], [(0, 0, 0, 0)]).any())
    assert list(itertools.islice(sp.objects(), 2)) == [(0, 0, 0, 0), (0, 0, 0, 1)]
