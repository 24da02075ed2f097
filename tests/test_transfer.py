"""Transfer attacks: crafted on a surrogate, judged on the target with forward passes only."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import robustkit as rk


class NoGrad(nn.Module):
    """The wrapped model's logits computed outside autograd, as a tree ensemble or a remote API would."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.as_tensor(self.model(x).numpy())


def _linear(seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(8, 3)


def test_transfer_from_the_model_itself_equals_the_white_box_attack() -> None:
    model = _linear(0)
    x, y = torch.rand(64, 8), torch.randint(0, 3, (64,))
    space = rk.LinfBall(eps=0.3, bounds=(0.0, 1.0))
    direct = rk.PGD(space, steps=10)(model, x, y)
    transfer = rk.Transfer(rk.PGD(space, steps=10), model)(NoGrad(model), x, y)
    assert torch.equal(transfer.success, direct.success)
    assert torch.allclose(transfer.x_adv, direct.x_adv)
    assert transfer.backward_passes == 0
    assert transfer.info["surrogate_backward_passes"] == direct.backward_passes


def test_transfer_breaks_a_gradient_free_target_that_pgd_cannot_touch() -> None:
    model = _linear(1)
    x, y = torch.rand(64, 8), torch.randint(0, 3, (64,))
    space = rk.LinfBall(eps=0.5, bounds=(0.0, 1.0))
    direct = rk.PGD(space, steps=5)(NoGrad(model), x, y)  # zero gradients: it only has its random start
    result = rk.Transfer(rk.PGD(space, steps=10), model)(NoGrad(model), x, y)
    assert result.success.float().mean() > 0.5
    assert result.success.float().mean() > direct.success.float().mean() + 0.2
    assert bool(space.contains(result.x_adv, x).all())


def test_a_poor_surrogate_gives_an_upper_bound_only() -> None:
    """A surrogate that points the wrong way breaks fewer examples than the white-box attack."""
    model = _linear(2)
    wrong = _linear(2)
    with torch.no_grad():
        wrong.weight.neg_()
        wrong.bias.neg_()
    x, y = torch.rand(128, 8), torch.randint(0, 3, (128,))
    space = rk.LinfBall(eps=0.3, bounds=(0.0, 1.0))
    direct = rk.PGD(space, steps=10)(model, x, y).success.float().mean()
    transferred = rk.Transfer(rk.PGD(space, steps=10), wrong)(model, x, y).success.float().mean()
    assert transferred < direct - 0.1


def test_transfer_in_evaluate_counts_as_a_gradient_free_attack_at_every_budget() -> None:
    model = _linear(3)
    x, y = torch.rand(64, 8), torch.randint(0, 3, (64,))
    space = rk.LinfBall(eps=0.3, bounds=(0.0, 1.0))
    report = rk.evaluate(NoGrad(model), (x, y), space, budgets=[0.1, 0.3],
                         attacks=[rk.Transfer(rk.PGD(space, steps=10), model)], checks=False)
    assert report.attack_names == ["transfer", "worst"]
    per_budget = [p["attacks"]["transfer"]["robust_accuracy"] for p in report.per_budget]
    assert per_budget[0] >= per_budget[1]


def test_transfer_refuses_what_is_not_an_attack_or_a_module() -> None:
    space = rk.LinfBall(eps=0.1)
    with pytest.raises(rk.ConfigError, match="robustkit attack"):
        rk.Transfer("pgd", _linear(0))  # type: ignore[arg-type]
    with pytest.raises(rk.ConfigError, match="surrogate"):
        rk.Transfer(rk.PGD(space), lambda x: x)  # type: ignore[arg-type]
