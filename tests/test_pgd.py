"""PGD and FGSM: closed-form optima on linear models, batch independence, bookkeeping and bad input."""

from __future__ import annotations

import math

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given
from torch import nn

import robustkit as rk


def floats(lo: float, hi: float) -> st.SearchStrategy[float]:
    """Finite float32 values in [lo, hi] (the ends rounded inwards to float32)."""
    lo32, hi32 = torch.tensor(lo), torch.tensor(hi)
    lo32 = lo32 if float(lo32) >= lo else lo32.nextafter(hi32)
    hi32 = hi32 if float(hi32) <= hi else hi32.nextafter(lo32)
    return st.floats(float(lo32), float(hi32), allow_nan=False, allow_infinity=False, width=32)


def tensors(*shape: int, lo: float = -1.0, hi: float = 1.0) -> st.SearchStrategy[torch.Tensor]:
    size = math.prod(shape)
    return st.lists(floats(lo, hi), min_size=size, max_size=size).map(
        lambda v: torch.tensor(v).reshape(shape)
    )


def linear(weight: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Linear:
    """Logits ``weight @ x (+ bias)``."""
    model = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        model.weight.copy_(weight)
        if bias is not None:
            model.bias.copy_(bias)
    return model


@st.composite
def linear_problems(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 2-class linear model's weights (small logits, no zero weight difference), inputs, labels."""
    n, d = draw(st.integers(1, 5)), draw(st.integers(1, 6))
    first = draw(tensors(d, lo=-0.5, hi=0.5))
    signs = torch.tensor(draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=d, max_size=d)))
    weight = torch.stack([first, first + signs * draw(tensors(d, lo=0.01, hi=0.5))])
    x = draw(tensors(n, d))
    y = (x @ weight.T).argmax(1)  # correctly classified: the attacks do not stop at the start
    return weight, x, y


class RowwiseMLP(nn.Module):
    """A small MLP whose products are broadcast sums rather than BLAS calls, so that each example's
    logits and gradient are bitwise the same whatever else is in the batch (BLAS kernels differ by
    batch size in the last bit)."""

    def __init__(self, n_features: int = 6, n_classes: int = 3, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.w1 = nn.Parameter(torch.randn(16, n_features, generator=gen))
        self.b1 = nn.Parameter(torch.randn(16, generator=gen))
        self.w2 = nn.Parameter(torch.randn(n_classes, 16, generator=gen))
        self.b2 = nn.Parameter(torch.randn(n_classes, generator=gen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu((x[:, None, :] * self.w1).sum(-1) + self.b1)
        return (h[:, None, :] * self.w2).sum(-1) + self.b2


def mlp(n_features: int = 6, n_classes: int = 3, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n_features, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, n_classes))


def batch(n: int = 32, n_features: int = 6, n_classes: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, n_features, generator=gen), torch.randint(0, n_classes, (n,), generator=gen)


# ----------------------------------------------------------------- closed-form optima on linear models


def linf_optimum(weight, x, y, eps, low, high, mask):
    """argmax of the loss over the Linf ball and box: x - eps sign(w_y - w_other), clipped."""
    direction = -torch.sign(weight[y] - weight[1 - y])
    if mask is not None:
        direction = direction * mask
    return torch.clamp(x + eps * direction, low, high)


@given(linear_problems(), st.one_of(st.just(0.0), floats(0.01, 1.0)), st.booleans(), st.booleans())
def test_linf_fgsm_and_pgd_hit_the_closed_form_optimum(problem, eps, boxed, masked):
    weight, x, y = problem
    low, high = (-1.0, 1.0) if boxed else (-math.inf, math.inf)
    mask = (torch.arange(x.shape[1]) % 2 == 0) if masked else None
    space = rk.LinfBall(eps=eps, bounds=(low, high), mask=mask)
    expected = linf_optimum(weight, x, y, eps, low, high, mask)
    model = linear(weight)
    fgsm = rk.FGSM(space)(model, x, y)
    assert torch.allclose(fgsm.x_adv, expected, atol=1e-5, rtol=0)
    for loss in ("ce", "margin"):
        pgd = rk.PGD(space, steps=20, loss=loss, early_stop=False)(model, x, y)
        assert torch.allclose(pgd.x_adv, expected, atol=1e-5, rtol=0)


@given(linear_problems(), floats(0.01, 2.0), st.booleans(), st.sampled_from(["ce", "margin"]))
def test_one_l2_step_moves_eps_along_the_weight_difference(problem, eps, masked, loss):
    weight, x, y = problem
    mask = (torch.arange(x.shape[1]) % 2 == 0) if masked else None
    diff = weight[1 - y] - weight[y]  # d(logit_other - logit_y)/dx, one row per example
    if mask is not None:
        diff = diff * mask
    expected = x + eps * diff / diff.norm(dim=1, keepdim=True)
    result = rk.FGSM(rk.L2Ball(eps=eps, mask=mask), loss=loss)(linear(weight), x, y)
    tol = 1e-5 if loss == "margin" else 1e-4  # the CE gradient's scale comes from rounded softmax terms
    assert torch.allclose(result.x_adv, expected, atol=tol, rtol=0)
    assert torch.allclose((result.x_adv - x).norm(dim=1), torch.full((len(x),), eps), atol=1e-5)


# ----------------------------------------------------------------- batch independence


@given(
    st.sampled_from(["linf", "l2"]),
    st.integers(1, 31),
    st.integers(0, 2**31 - 1),
    st.integers(0, 3),
)
def test_results_do_not_depend_on_batch_chunking(kind, split, seed, data_seed):
    x, y = batch(seed=data_seed)
    ids = torch.arange(len(x)) + 100
    space = (
        rk.LinfBall(eps=0.1, bounds=(0.0, 1.0)) if kind == "linf" else rk.L2Ball(eps=0.5, bounds=(0.0, 1.0))
    )
    attack = rk.PGD(space, steps=5, restarts=2, seed=seed)
    model = RowwiseMLP()
    whole = attack(model, x, y, ids=ids)
    parts = [attack(model, x[s], y[s], ids=ids[s]) for s in (slice(0, split), slice(split, None))]
    assert torch.equal(whole.x_adv, torch.cat([p.x_adv for p in parts]))
    assert torch.equal(whole.success, torch.cat([p.success for p in parts]))
    assert torch.equal(whole.loss, torch.cat([p.loss for p in parts]))
    assert whole.forward_passes == sum(p.forward_passes for p in parts)
    assert whole.backward_passes == sum(p.backward_passes for p in parts)


@pytest.mark.parametrize("share", [0.125, 1.0])
def test_freezing_finished_examples_returns_what_dropping_them_does(monkeypatch, share):
    """The GPU policy (finished examples frozen in the batch until a share is done; 1.0: never gathered)
    returns exactly what the CPU policy (dropped at once) does."""
    x, y = batch(n=64, seed=1)
    space = rk.LinfBall(eps=0.15, bounds=(0.0, 1.0))
    attack = rk.PGD(space, steps=8, restarts=2, seed=5)
    model = RowwiseMLP()
    dropped = attack(model, x, y)
    assert 0 < int(dropped.success.sum()) < len(x)  # some finish along the way, some never
    monkeypatch.setattr("robustkit.attacks.pgd._compact_share", lambda device: share)
    frozen = attack(model, x, y)
    assert torch.equal(frozen.x_adv, dropped.x_adv)
    assert torch.equal(frozen.success, dropped.success)
    assert torch.equal(frozen.loss, dropped.loss)
    assert frozen.backward_passes > dropped.backward_passes  # the frozen ones were still stepped


def test_random_start_depends_on_ids_and_seed_only():
    x, y = batch()
    space = rk.LinfBall(eps=0.1, bounds=(0.0, 1.0))
    model = mlp()
    first = rk.PGD(space, steps=1, early_stop=False, seed=3)(model, x, y)
    again = rk.PGD(space, steps=1, early_stop=False, seed=3)(model, x, y)
    other = rk.PGD(space, steps=1, early_stop=False, seed=4)(model, x, y)
    assert torch.equal(first.x_adv, again.x_adv)
    assert not torch.equal(first.x_adv, other.x_adv)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    permuted = rk.PGD(space, steps=1, early_stop=False, seed=3)(model, x[perm], y[perm], ids=perm)
    assert torch.equal(permuted.x_adv, first.x_adv[perm])


# ----------------------------------------------------------------- bookkeeping


@pytest.mark.parametrize(
    "make",
    [
        lambda: rk.PGD(rk.LinfBall(eps=0.2, bounds=(0.0, 1.0)), steps=5),
        lambda: rk.PGD(rk.L2Ball(eps=1.0, bounds=(0.0, 1.0)), steps=5, restarts=2),
        lambda: rk.FGSM(rk.LinfBall(eps=0.2, bounds=(0.0, 1.0))),
    ],
    ids=["pgd-linf", "pgd-l2", "fgsm"],
)
def test_success_masking_and_model_state(make):
    x, y = batch()
    model = mlp()
    model.train()
    model[0].bias.requires_grad_(False)
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    mask = torch.arange(len(x)) % 4 != 0
    result = make()(model, x, y, mask=mask)

    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert not x.requires_grad and x.grad is None

    assert torch.equal(result.x_adv[~mask], x[~mask])
    assert torch.equal(result.attacked, mask)
    assert not result.success[~mask].any() and not result.loss[~mask].any()
    model.eval()
    with torch.no_grad():
        fresh = model(result.x_adv).argmax(1) != y
    assert torch.equal(result.success, fresh & mask)
    assert bool(result.success.any())  # eps is large enough to flip some predictions
    assert result.forward_passes > 0 and result.backward_passes > 0


def test_targeted_success_means_predicting_the_target():
    x, y = batch()
    target = (y + 1) % 3
    model = mlp().eval()
    result = rk.PGD(rk.LinfBall(eps=0.3, bounds=(0.0, 1.0)), steps=10, targeted=True)(
        model, x, y, target=target
    )
    with torch.no_grad():
        assert torch.equal(result.success, model(result.x_adv).argmax(1) == target)
    assert bool(result.success.any())


@pytest.mark.parametrize("restarts", [1, 3])
def test_early_exit_when_everything_is_already_misclassified(restarts):
    n = 12
    x, _ = batch(n)
    y = torch.zeros(n, dtype=torch.long)
    model = linear(torch.zeros(2, 6), bias=torch.tensor([0.0, 10.0]))  # predicts class 1 everywhere
    result = rk.PGD(rk.LinfBall(eps=0.1, bounds=(0.0, 1.0)), steps=10, restarts=restarts)(model, x, y)
    assert bool(result.success.all())
    assert result.backward_passes == n  # one forward+backward per example, then nothing
    assert result.forward_passes == 2 * n  # plus the final confirmation of the successes


def test_empty_mask_spends_nothing():
    x, y = batch()
    result = rk.PGD(rk.LinfBall(eps=0.1, bounds=(0.0, 1.0)))(
        mlp(), x, y, mask=torch.zeros(len(x), dtype=torch.bool)
    )
    assert torch.equal(result.x_adv, x) and result.x_adv is not x
    assert result.forward_passes == result.backward_passes == 0


# ----------------------------------------------------------------- bad configuration and inputs


def test_bad_configuration_raises_config_error():
    space = rk.LinfBall(eps=0.1)
    with pytest.raises(rk.ConfigError, match="steps must be an integer >= 1"):
        rk.PGD(space, steps=0)
    with pytest.raises(rk.ConfigError, match="restarts must be an integer >= 1"):
        rk.PGD(space, restarts=0)
    with pytest.raises(rk.ConfigError, match="step_size"):
        rk.PGD(space, step_size=0.0)
    with pytest.raises(rk.ConfigError, match="unknown loss"):
        rk.PGD(space, loss="hinge")
    with pytest.raises(rk.ConfigError, match="PerturbationSpace"):
        rk.PGD(0.1)  # type: ignore[arg-type]
    with pytest.raises(rk.ConfigError, match="eot"):
        rk.PGD(space, eot=0)


def test_bad_inputs_raise_data_or_config_error():
    model = mlp()
    x, y = batch(4)
    pgd = rk.PGD(rk.LinfBall(eps=0.1, bounds=(0.0, 1.0)), steps=2)
    with pytest.raises(rk.DataError, match="outside the space's bounds"):
        pgd(model, x + 2.0, y)
    with pytest.raises(rk.DataError, match="NaN or Inf"):
        pgd(model, torch.where(torch.eye(4, 6).bool(), float("nan"), x), y)
    with pytest.raises(rk.DataError, match="labels go up to 5"):
        pgd(model, x, torch.tensor([0, 1, 5, 2]))
    with pytest.raises(rk.DataError, match=">= 0"):
        pgd(model, x, torch.tensor([0, -1, 1, 2]))
    with pytest.raises(rk.DataError, match="1-D"):  # a single column (N, 1) is read as labels, as evaluate does
        pgd(model, x, y[:, None].repeat(1, 2))
    with pytest.raises(rk.DataError, match="1-D"):
        pgd(model, x[:1], torch.tensor(1))
    with pytest.raises(rk.DataError, match="4 inputs but 3 labels"):
        pgd(model, x, y[:3])
    with pytest.raises(rk.DataError, match="one bool per example"):
        pgd(model, x, y, mask=torch.ones(5, dtype=torch.bool))
    with pytest.raises(rk.DataError, match="mask of shape"):
        rk.PGD(rk.LinfBall(eps=0.1, mask=torch.ones(5, dtype=torch.bool)))(model, x, y)
    with pytest.raises(rk.DataError, match="must be a tensor"):
        pgd(model, x.tolist(), y)
    with pytest.raises(rk.ConfigError, match="needs target="):
        rk.PGD(rk.LinfBall(eps=0.1), targeted=True)(model, x, y)
    with pytest.raises(rk.ConfigError, match="targeted=True"):
        pgd(model, x, y, target=y)
    with pytest.raises(rk.DataError, match="target classes must lie in"):
        rk.PGD(rk.LinfBall(eps=0.1), targeted=True)(model, x, y, target=torch.tensor([0, 1, 2, 7]))
    with pytest.raises(rk.DataError, match="ids has 3 entries"):
        pgd(model, x, y, ids=torch.arange(3))


def test_later_restarts_run_batched_keep_the_first_restarts_successes_and_only_add() -> None:
    """Restarts 2..k run as one batch and are folded in order: an example the first restart broke keeps
    that point, and the others can only gain."""
    x, _ = batch(n=64, seed=2)
    model = RowwiseMLP()
    with torch.no_grad():
        y = model(x).argmax(1)  # every example right when clean
    space = rk.LinfBall(eps=0.1, bounds=(0.0, 1.0))
    one = rk.PGD(space, steps=1, restarts=1, seed=3)(model, x, y)
    four = rk.PGD(space, steps=1, restarts=4, seed=3)(model, x, y)
    assert 0 < int(one.success.sum()) < int(four.success.sum()) < len(x)
    assert torch.equal(four.x_adv[one.success], one.x_adv[one.success])
    failed = ~four.success
    assert (four.loss[failed] >= one.loss[failed]).all()
