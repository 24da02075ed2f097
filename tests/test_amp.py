"""Mixed precision: adversarial examples stay inside their space whatever the precision.

CUDA is not needed: torch.autocast runs bf16 on CPU too, which exercises the same code paths
(reduced-precision matmuls, float32 inputs, perturbations and projections).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

import robustkit as rk
from robustkit import distributed
from robustkit.models import autocast


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))


@pytest.mark.parametrize("space", [rk.LinfBall(eps=0.1, bounds=(0.0, 1.0)), rk.L2Ball(eps=0.5, bounds=(0.0, 1.0))])
@pytest.mark.parametrize("make", [lambda s: rk.FGSM(s), lambda s: rk.PGD(s, steps=5), lambda s: rk.APGD(s, steps=10)])
def test_attacks_under_bf16_autocast_stay_in_the_space(space: rk.ContinuousSpace, make) -> None:  # type: ignore[no-untyped-def]
    x, y = torch.rand(64, 20), torch.randint(0, 3, (64,))
    with autocast(torch.device("cpu"), "bf16"):
        result = make(space)(_model(), x, y)
    assert result.x_adv.dtype == torch.float32
    assert bool(space.contains(result.x_adv, x).all())
    assert int(result.success.sum()) > 0  # the attack did work in reduced precision


def test_evaluate_with_amp_counts_like_full_precision_within_rounding() -> None:
    x, y = torch.rand(200, 20), torch.randint(0, 3, (200,))
    space = rk.LinfBall(eps=0.05, bounds=(0.0, 1.0))
    full = rk.evaluate(_model(), (x, y), space, attacks="quick", checks=False)
    half = rk.evaluate(_model(), (x, y), space, attacks="quick", checks=False, amp="bf16")
    assert half.clean_accuracy == pytest.approx(full.clean_accuracy, abs=0.03)
    assert half.robust_accuracy["worst"] == pytest.approx(full.robust_accuracy["worst"], abs=0.05)


def test_trainer_amp_auto_is_full_precision_on_cpu_and_bf16_trains() -> None:
    x, y = rk.datasets.robust_nonrobust(128, seed=0)
    space = rk.LinfBall(eps=rk.datasets.TOY_EPS, bounds=rk.datasets.TOY_BOUNDS)
    states = {}
    for amp in (None, "auto", "bf16"):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
        trainer = rk.AdversarialTrainer(model, space, method="pgd", amp=amp, progress=False)
        history = trainer.fit(distributed.loader(TensorDataset(x, y), batch_size=32), epochs=1)
        assert history["train_loss"].notna().all()
        states[amp] = model.state_dict()
    assert all(torch.equal(states[None][k], states["auto"][k]) for k in states[None])
    assert any(not torch.equal(states[None][k], states["bf16"][k]) for k in states[None])  # bf16 really ran


def test_bad_amp_is_refused_before_work() -> None:
    x, y = torch.rand(8, 20), torch.randint(0, 3, (8,))
    space = rk.LinfBall(eps=0.05, bounds=(0.0, 1.0))
    with pytest.raises(rk.ConfigError, match="amp must be"):
        rk.evaluate(_model(), (x, y), space, amp="fp8")
    with pytest.raises(rk.ConfigError, match="amp must be"):
        rk.AdversarialTrainer(_model(), space, amp="half")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_cuda_training_under_autocast(amp: str) -> None:
    x, y = rk.datasets.robust_nonrobust(256, seed=0)
    space = rk.LinfBall(eps=rk.datasets.TOY_EPS, bounds=rk.datasets.TOY_BOUNDS)
    model = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 64), torch.nn.ReLU(), torch.nn.Linear(64, 3)).cuda()
    trainer = rk.AdversarialTrainer(model, space, method="pgd", amp=amp, progress=False)
    history = trainer.fit(distributed.loader(TensorDataset(x, y), batch_size=64), epochs=2, val_loader=(x, y))
    assert history["train_loss"].notna().all()
    assert (trainer._scaler is not None) == (amp == "fp16")
    result = rk.PGD(space, steps=10)(model, x.cuda(), y.cuda())
    assert bool(space.contains(result.x_adv, x.cuda()).all())
