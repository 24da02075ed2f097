"""Tests of the attack ensemble: worst case per example, later attacks only on survivors, summed counts."""

from __future__ import annotations

import pytest
import torch

import robustkit as rk
from robustkit.attacks.base import Attack, Best, Problem


class _Spy(Attack):
    """Returns the clean inputs after one forward pass, remembering which examples it was given."""

    name = "spy"

    def __init__(self, space: rk.PerturbationSpace) -> None:
        super().__init__(space)
        self.seen: list[torch.Tensor] = []

    def _run(self, problem: Problem) -> Best:
        self.seen.append(problem.ids.clone())
        best = Best(problem.x, problem.x.device)
        idx = torch.arange(len(problem), device=problem.x.device)
        logits, loss = problem.evaluate(problem.x, idx)
        best.update(idx, problem.x, loss, problem.success(logits, idx))
        return best


@pytest.fixture(scope="module")
def blobs():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 8, generator=g, dtype=torch.float64)
    y = torch.arange(120) % 4
    x = centers[y] + 0.5 * torch.randn(120, 8, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).double()
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model, x, y


SPACE = rk.LinfBall(eps=0.35)


def test_success_is_the_union_and_the_first_success_wins(blobs):
    model, x, y = blobs
    weak, strong = rk.PGD(SPACE, steps=2, step_size=0.05), rk.APGD(SPACE, steps=20, loss="dlr")
    first = weak(model, x, y)
    survivors = ~first.success
    second = strong(model, x, y, mask=survivors)
    alone = strong(model, x, y)  # per-example random streams: the same on the survivors as when run alone
    result = rk.Ensemble([weak, strong])(model, x, y)
    assert int(first.success.sum()) < int(result.success.sum()) < len(y)  # the second attack added successes
    assert torch.equal(result.success, first.success | alone.success)
    assert torch.equal(result.success, first.success | second.success)
    assert torch.equal(result.x_adv[first.success], first.x_adv[first.success])
    assert torch.equal(result.x_adv[second.success], second.x_adv[second.success])
    failed = ~result.success
    assert torch.equal(result.x_adv[failed], first.x_adv[failed])
    assert torch.equal(result.loss[first.success], first.loss[first.success])
    assert bool(SPACE.contains(result.x_adv, x).all())
    with torch.no_grad():
        assert torch.equal(result.success, model(result.x_adv).argmax(1) != y)


def test_later_attacks_run_only_on_survivors_and_passes_add_up(blobs):
    model, x, y = blobs
    pgd, spy = rk.PGD(SPACE, steps=10), _Spy(SPACE)
    alone = pgd(model, x, y)
    result = rk.Ensemble([pgd, spy])(model, x, y)
    survivors = (~alone.success).nonzero().squeeze(1)
    (seen,) = spy.seen
    assert torch.equal(seen, survivors)
    # the spy spends one forward pass per survivor and no backward pass
    assert result.forward_passes == alone.forward_passes + len(survivors)
    assert result.backward_passes == alone.backward_passes
    first, second = result.info["attacks"]
    assert (first["name"], second["name"]) == ("pgd", "spy")
    assert first["attacked"] == len(y) and first["successes"] == int(alone.success.sum())
    assert second["attacked"] == len(survivors) and second["successes"] == 0
    assert second["forward_passes"] == len(survivors)


def test_attacks_after_everything_is_broken_are_skipped(blobs):
    model, x, y = blobs
    spy = _Spy(rk.LinfBall(eps=5.0))
    result = rk.Ensemble([rk.PGD(rk.LinfBall(eps=5.0), steps=10), spy])(model, x, y)
    assert bool(result.success.all())
    assert spy.seen == []
    assert result.info["attacks"][1] == {
        "name": "spy", "attacked": 0, "successes": 0, "forward_passes": 0, "backward_passes": 0, "info": {}
    }


def test_mask_targets_and_model_state(blobs):
    model, x, y = blobs
    model.train()
    mask = torch.arange(len(y)) % 2 == 0
    target = (y + 1) % 4
    attacks = [rk.PGD(SPACE, steps=5, targeted=True), rk.APGD(SPACE, steps=10, targeted=True)]
    result = rk.Ensemble(attacks)(model, x, y, mask=mask, target=target)
    model.eval()
    assert torch.equal(result.attacked, mask)
    assert torch.equal(result.x_adv[~mask], x[~mask])
    with torch.no_grad():
        assert torch.equal(result.success, (model(result.x_adv).argmax(1) == target) & mask)
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_config_repr_and_with_space():
    ensemble = rk.Ensemble([rk.APGD(SPACE, steps=10), rk.RandomSearch(SPACE, queries=20)])
    assert [a["name"] for a in ensemble.config()["attacks"]] == ["apgd", "random_search"]
    assert ensemble.space is SPACE and not ensemble.targeted
    assert "APGD" in repr(ensemble) and "RandomSearch" in repr(ensemble)
    wider = ensemble.with_space(SPACE.with_budget(0.5))
    assert all(a.space.budget == 0.5 for a in wider.attacks)
    assert ensemble.space.budget == 0.35


def test_invalid_ensembles_raise_config_errors():
    with pytest.raises(rk.ConfigError, match="at least one"):
        rk.Ensemble([])
    with pytest.raises(rk.ConfigError, match="robustkit attacks"):
        rk.Ensemble([lambda *a: None])  # type: ignore[list-item]
    with pytest.raises(rk.ConfigError, match="list of attacks"):
        rk.Ensemble(rk.PGD(SPACE))  # type: ignore[arg-type]
    with pytest.raises(rk.ConfigError, match="targeted"):
        rk.Ensemble([rk.PGD(SPACE), rk.PGD(SPACE, targeted=True)])
    with pytest.raises(rk.ConfigError, match="same space"):
        rk.Ensemble([rk.PGD(SPACE), rk.PGD(rk.LinfBall(eps=0.1))])


def test_an_ensemble_is_an_attack_and_nests_to_the_same_result(blobs):
    model, x, y = blobs
    weak, strong = rk.PGD(SPACE, steps=2, step_size=0.05), rk.APGD(SPACE, steps=10, loss="dlr")
    search = rk.RandomSearch(SPACE, queries=30)
    flat = rk.Ensemble([weak, strong, search])(model, x, y)
    nested_attack = rk.Ensemble([weak, rk.Ensemble([strong, search])])
    assert isinstance(nested_attack, rk.Attack) and nested_attack.members == [weak, strong, search]
    nested = nested_attack(model, x, y)
    assert int(flat.success.sum()) > int(weak(model, x, y).success.sum())
    assert torch.equal(nested.success, flat.success) and torch.equal(nested.x_adv, flat.x_adv)
    assert (nested.forward_passes, nested.backward_passes) == (flat.forward_passes, flat.backward_passes)
    report = rk.evaluate(model, (x, y), SPACE, attacks=[nested_attack], checks=False)
    assert report.robust_accuracy["ensemble"] == pytest.approx(1 - float(flat.success.double().mean()))
