"""Tests of the gradient-free random search: it breaks what can be broken, stays in the space, counts queries."""

from __future__ import annotations

import pytest
import torch

import robustkit as rk


def _linear(d: int, n_classes: int, n: int, seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(d, n_classes).double()
    x = torch.rand(n, d, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def _breakable(model: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Exactly which examples a linear model misclassifies somewhere in the Linf ball within [0, 1]."""
    w, b = model.weight.detach(), model.bias.detach()
    best = torch.full((len(x),), float("-inf"), dtype=x.dtype)
    for j in range(w.shape[0]):
        diff = w[j][None] - w[y]
        worst = (x + eps * diff.sign()).clamp(0.0, 1.0)  # the margin is separable per coordinate
        margin = (diff * worst).sum(1) + b[j] - b[y]
        best = torch.maximum(best, torch.where(y == j, float("-inf"), margin))
    return best > 0


def test_breaks_every_breakable_example_of_a_linear_model():
    model, x, y = _linear(20, 3, 64)
    eps = 0.1
    space = rk.LinfBall(eps=eps, bounds=(0.0, 1.0))
    breakable = _breakable(model, x, y, eps)
    assert 0 < int(breakable.sum()) < len(y)
    result = rk.RandomSearch(space, queries=300)(model, x, y)
    assert torch.equal(result.success, breakable)
    assert bool(space.contains(result.x_adv, x).all())
    with torch.no_grad():
        assert torch.equal(result.success, model(result.x_adv).argmax(1) != y)
    assert result.backward_passes == 0
    assert result.forward_passes <= len(y) * 300 + len(y)


@pytest.mark.parametrize("space", [rk.LinfBall(eps=0.03, bounds=(0.0, 1.0)), rk.L2Ball(eps=0.5, bounds=(0.0, 1.0))],
                         ids=["linf", "l2"])
def test_images_stay_in_the_space_and_some_break(space):
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4)).double()
    x = torch.rand(24, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        y = net(x).argmax(1)
    mask = torch.arange(24) % 4 != 0
    result = rk.RandomSearch(space, queries=200)(net, x, y, mask=mask)
    assert bool(space.contains(result.x_adv, x).all())
    assert torch.equal(result.x_adv[~mask], x[~mask])
    assert int(result.success.sum()) > 0
    assert not bool(result.success[~mask].any())
    with torch.no_grad():
        assert torch.equal(result.success, (net(result.x_adv).argmax(1) != y) & mask)


def test_image_blocks_are_square_windows_across_channels():
    attack = rk.RandomSearch(rk.LinfBall(eps=0.1), queries=10_000, p_init=0.25)
    x = torch.zeros(5, 3, 8, 10)
    block = attack._block(x, torch.arange(5), query=1)
    assert block.shape == (5, 1, 8, 10)  # the same window in every channel
    side = 4  # sqrt(0.25 * 8 * 10) rounded
    for window in block[:, 0]:
        rows, cols = window.any(1).nonzero().squeeze(1), window.any(0).nonzero().squeeze(1)
        assert len(rows) == len(cols) == side
        assert int(rows[-1] - rows[0]) == int(cols[-1] - cols[0]) == side - 1
        assert int(window.sum()) == side * side
    late = attack._block(x, torch.arange(5), query=9_000)  # p has halved 9 times: one pixel
    assert bool((late.flatten(1).sum(1) == 1).all())


def test_flat_blocks_pick_the_right_number_of_free_features():
    frozen = torch.tensor([True, False] * 10)
    attack = rk.RandomSearch(rk.LinfBall(eps=0.1, mask=frozen), queries=10_000, p_init=0.3)
    block = attack._block(torch.zeros(7, 20), torch.arange(7), query=1)
    assert bool((block.sum(1) == 3).all())  # 30% of the 10 movable features
    assert not bool(block[:, ~frozen].any())
    assert len({tuple(row.tolist()) for row in block}) > 1  # examples draw different blocks


def test_results_do_not_depend_on_batching():
    model, x, y = _linear(12, 4, 40, seed=2)
    space = rk.LinfBall(eps=0.08, bounds=(0.0, 1.0))
    attack = rk.RandomSearch(space, queries=60, seed=5)
    whole = attack(model, x, y)
    ids = torch.arange(40)
    first = attack(model, x[:15], y[:15], ids=ids[:15])
    second = attack(model, x[15:], y[15:], ids=ids[15:])
    assert torch.equal(whole.x_adv, torch.cat([first.x_adv, second.x_adv]))
    assert torch.equal(whole.success, torch.cat([first.success, second.success]))
    other_seed = rk.RandomSearch(space, queries=60, seed=6)(model, x, y)
    assert not torch.equal(whole.x_adv, other_seed.x_adv)


def test_query_budget_and_early_stop():
    model, x, y = _linear(10, 3, 30, seed=3)
    space = rk.LinfBall(eps=0.1, bounds=(0.0, 1.0))
    full = rk.RandomSearch(space, queries=40, early_stop=False)(model, x, y)
    assert full.forward_passes == 30 * 40 + int(full.success.sum())  # plus the final re-check of successes
    early = rk.RandomSearch(space, queries=40)(model, x, y)
    assert int(early.success.sum()) > 0
    assert early.forward_passes < full.forward_passes
    assert torch.equal(early.success, full.success)  # early stop only saves queries on broken examples
    assert bool((full.loss[full.success] >= early.loss[early.success]).all())


def test_model_is_left_as_found():
    model, x, y = _linear(10, 3, 8)
    model.train()
    rk.RandomSearch(rk.L2Ball(eps=0.5), queries=10)(model, x, y)
    assert model.training and all(p.requires_grad and p.grad is None for p in model.parameters())


def test_targeted_search_reaches_the_target():
    model, x, y = _linear(16, 3, 30, seed=4)
    target = (y + 1) % 3
    result = rk.RandomSearch(rk.LinfBall(eps=0.2, bounds=(0.0, 1.0)), queries=150, targeted=True)(
        model, x, y, target=target
    )
    with torch.no_grad():
        pred = model(result.x_adv).argmax(1)
    assert int(result.success.sum()) > 0
    assert torch.equal(result.success, pred == target)


def test_config_and_validation():
    attack = rk.RandomSearch(rk.LinfBall(eps=0.1), queries=10_000, p_init=0.05)
    assert attack.config()["queries"] == 10_000 and attack.config()["p_init"] == 0.05
    assert attack.config()["loss"] == "margin"
    # Square Attack's schedule: halve after 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of 10000 queries
    schedule = [attack.fraction(q) for q in (10, 11, 50, 51, 201, 8000, 8001, 9999)]
    assert schedule == [0.05, 0.025, 0.025, 0.0125, 0.05 / 8, 0.05 / 256, 0.05 / 512, 0.05 / 512]
    for bad in ({"queries": 0}, {"p_init": 0.0}, {"p_init": 1.5}):
        with pytest.raises(rk.ConfigError):
            rk.RandomSearch(rk.LinfBall(eps=0.1), **bad)
    with pytest.raises(rk.ConfigError, match="space"):
        rk.RandomSearch("linf")  # type: ignore[arg-type]
