"""AutoAttack's members: top-k targeted APGD, Square, FAB, minimal-norm curves and the presets.

The closed-form checks use linear models, whose optimal and minimal perturbations are known.
"""

from __future__ import annotations

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
