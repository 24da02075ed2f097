"""Tests of Auto-PGD: checkpoints, the step-size rule seen through a recorded trace, strength, invariants."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import robustkit as rk
from robustkit.attacks import apgd_checkpoints
from robustkit.attacks.apgd import apgd_should_halve


def _blobs_mlp(n_classes: int = 4, dim: int = 8, n: int = 200, seed: int = 0):
    """A small MLP trained on seeded gaussian blobs (float64), with its training data."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(n_classes, dim, generator=g, dtype=torch.float64)
    y = torch.arange(n) % n_classes
    x = centers[y] + 0.5 * torch.randn(n, dim, generator=g, dtype=torch.float64)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(dim, 32), torch.nn.ReLU(), torch.nn.Linear(32, n_classes)).double()
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model, x, y


@pytest.fixture(scope="module")
def blobs():
    model, x, y = _blobs_mlp()
    assert (model(x).argmax(1) == y).float().mean() > 0.95
    return model, x, y


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoints_match_the_published_schedule():
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=1, max_value=2000))
def test_checkpoint_periods_have_the_reference_lengths(steps):
    points = apgd_checkpoints(steps)
    first = max(int(0.22 * steps), 1)
    shrink, shortest = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    assert points[0] == first
    periods = [b - a for a, b in pairwise([0, *points])]
    for prev, cur in pairwise(periods):
        assert cur == max(prev - shrink, shortest)
    assert points[-1] <= steps < points[-1] + max(periods[-1] - shrink, shortest)


def test_checkpoints_reject_zero_steps():
    with pytest.raises(rk.ConfigError, match="steps"):
        apgd_checkpoints(0)


def test_halving_condition():
    inc = torch.tensor([7, 8, 8, 8, 8])
    halved = torch.tensor([False, False, False, True, True])
    best = torch.tensor([1.0, 1.0, 0.5, 0.5, 1.0])
    best_last = torch.tensor([0.0, 0.0, 0.5, 0.5, 0.0])
    # 7 < 0.75 * 10 (oscillation); 8 is not; stalled and not halved; stalled but halved last; improving
    expected = torch.tensor([True, False, True, False, False])
    assert torch.equal(apgd_should_halve(inc, 10, 0.75, halved, best, best_last), expected)


# ----------------------------------------------------------------------------- recorded trace


def _check_trace(trace: dict[str, torch.Tensor], checkpoints: list[int], rho: float, eps: float) -> list[int]:
    """Re-derive every step-size decision from the recorded losses.

    Returns how many decisions were: halvings by condition 1 only, by condition 2 only, by both, keeps.
    """
    loss, eta = trace["loss"], trace["eta"]
    assert not bool(torch.isnan(loss).any())
    best = loss.cummax(dim=0).values
    assert torch.equal(trace["best_loss"], best)
    assert bool((eta[0] == 2 * eps).all())
    counts = [0, 0, 0, 0]
    for j in range(loss.shape[1]):
        last, halved_last = 0, False
        for t in range(1, loss.shape[0]):
            if t not in checkpoints:
                assert eta[t, j] == eta[t - 1, j], f"eta changed off a checkpoint at t={t}"
                continue
            rises = 0
            for i in range(last + 1, t + 1):
                # after a halving the iterate restarted from the best point, whose loss is the best loss
                before = best[i - 1, j] if (i - 1 == last and halved_last) else loss[i - 1, j]
                rises += int(loss[i, j] > before)
            oscillating = rises < rho * (t - last)
            stalled = not halved_last and bool(best[t, j] <= best[last, j])
            halve = oscillating or stalled
            assert eta[t, j] == (eta[t - 1, j] / 2 if halve else eta[t - 1, j]), f"wrong decision at t={t}"
            counts[3 if not halve else 2 if oscillating and stalled else 0 if oscillating else 1] += 1
            last, halved_last = t, halve
    return counts


@pytest.mark.parametrize("space", [rk.LinfBall(eps=0.3), rk.L2Ball(eps=0.6)], ids=["linf", "l2"])
def test_trace_halves_exactly_when_the_rule_says(blobs, space):
    model, x, y = blobs
    attack = rk.APGD(space, steps=50, record=True, early_stop=False)
    result = attack(model, x[:40], y[:40])
    (trace,) = result.info["trace"]
    assert result.info["checkpoints"] == apgd_checkpoints(50)
    assert torch.equal(trace["ids"], torch.arange(40))
    by_one, by_two, by_both, keeps = _check_trace(trace, apgd_checkpoints(50), 0.75, space.eps)
    assert by_one + by_two + by_both > 0
    if isinstance(space, rk.L2Ball):  # Linf iterates of this near-linear model sit on a vertex: all halve
        assert keeps > 0


def test_trace_with_a_low_rho_exercises_both_conditions(blobs):
    model, x, y = blobs
    space = rk.L2Ball(eps=1.0)
    result = rk.APGD(space, steps=50, rho=0.3, record=True, early_stop=False)(model, x[:40], y[:40])
    counts = _check_trace(result.info["trace"][0], apgd_checkpoints(50), 0.3, space.eps)
    assert all(c > 0 for c in counts), counts


def test_trace_with_early_stop(blobs):
    model, x, y = blobs
    space = rk.LinfBall(eps=0.3)
    result = rk.APGD(space, steps=30, rho=0.5, record=True)(model, x, y)
    (trace,) = result.info["trace"]
    stopped = torch.isnan(trace["loss"][-1])
    assert bool(stopped.any()) and bool(result.success[stopped].all())
    live = {k: v[:, ~stopped] for k, v in trace.items() if k != "ids"}
    _check_trace(live, apgd_checkpoints(30), 0.5, space.eps)


class _Recorder(torch.nn.Module):
    """Passes inputs to a model, keeping a copy of every batch it sees."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        return self.net(x)


@pytest.mark.parametrize("space", [rk.L2Ball(eps=0.6), rk.LinfBall(eps=0.3, bounds=(-3.0, 3.25))], ids=["l2", "linf"])
def test_iterates_follow_the_momentum_update_and_restart_from_the_best_point(blobs, space):
    model, x, y = blobs
    x, y, steps = x[:30], y[:30], 30
    recorder = _Recorder(model)
    result = rk.APGD(space, steps=steps, record=True, early_stop=False)(recorder, x, y)
    iterates = recorder.inputs[: steps + 1]  # x_0 .. x_steps; the re-check of successes follows
    eta, loss = result.info["trace"][0]["eta"], result.info["trace"][0]["loss"]
    base, prev, fresh, restarts = iterates[0], iterates[0], torch.ones(len(y), dtype=torch.bool), 0
    for t in range(1, steps + 1):
        xb = base.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(model(xb), y, reduction="sum"), xb)
        z = space.project(space.step(base, grad, eta[t - 1]), x)
        a = torch.where(fresh, 1.0, 0.75).double()[:, None]
        expected = space.project(base + a * (z - base) + (1 - a) * (base - prev), x)
        torch.testing.assert_close(iterates[t], expected, rtol=0, atol=1e-9)
        prev, base, fresh = base, iterates[t], torch.zeros_like(fresh)
        halved = eta[t] < eta[t - 1]
        if bool(halved.any()):  # restart from the best iterate so far, without momentum
            best_at = loss[: t + 1].argmax(dim=0)  # first occurrence: the best point only moves on a rise
            best_x = torch.stack(iterates[: t + 1])[best_at, torch.arange(len(y))]
            base = torch.where(halved[:, None], best_x, base)
            prev = torch.where(halved[:, None], best_x, prev)
            fresh = halved
            restarts += int(halved.sum())
    assert restarts > 0


def test_recording_does_not_change_the_result(blobs):
    model, x, y = blobs
    space = rk.L2Ball(eps=0.5)
    plain = rk.APGD(space, steps=25)(model, x, y)
    traced = rk.APGD(space, steps=25, record=True)(model, x, y)
    assert plain.info == {}
    assert torch.equal(plain.x_adv, traced.x_adv)
    assert torch.equal(plain.success, traced.success)
    assert plain.forward_passes == traced.forward_passes


# ----------------------------------------------------------------------------- strength


@pytest.mark.parametrize("space", [rk.LinfBall(eps=0.3), rk.L2Ball(eps=0.6)], ids=["linf", "l2"])
@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_apgd_breaks_at_least_as_many_as_pgd(blobs, space, loss):
    model, x, y = blobs
    pgd = rk.PGD(space, steps=20)(model, x, y)
    apgd = rk.APGD(space, steps=20, loss=loss)(model, x, y)
    assert 0 < int(pgd.success.sum()) < len(y)  # the comparison is not trivial
    assert int(apgd.success.sum()) >= int(pgd.success.sum())


def test_targeted_apgd_reaches_the_target(blobs):
    model, x, y = blobs
    target = (y + 1) % 4
    result = rk.APGD(rk.LinfBall(eps=0.5), steps=20, targeted=True)(model, x, y, target=target)
    with torch.no_grad():
        pred = model(result.x_adv).argmax(1)
    assert int(result.success.sum()) > 0
    assert torch.equal(result.success, pred == target)


# ----------------------------------------------------------------------------- invariants


@pytest.mark.parametrize("space_cls", [rk.LinfBall, rk.L2Ball])
def test_outputs_lie_in_the_space_and_unmasked_examples_are_untouched(blobs, space_cls):
    model, x, y = blobs
    # bounds within eps of the data, so that clipping matters (quarters: exact in float32 and float64)
    lo, hi = (x.min(0).values * 4).floor() / 4, (x.max(0).values * 4).ceil() / 4
    feature_mask = torch.tensor([True, False] * 4)
    space = space_cls(eps=0.5, bounds=(lo, hi), mask=feature_mask)
    mask = torch.arange(len(y)) % 3 != 0
    result = rk.APGD(space, steps=15, restarts=2)(model, x, y, mask=mask)
    assert bool(space.contains(result.x_adv, x).all())
    assert torch.equal(result.x_adv[~mask], x[~mask])
    assert torch.equal(result.attacked, mask)
    assert not bool(result.success[~mask].any())
    assert torch.equal(result.x_adv[:, ~feature_mask], x[:, ~feature_mask])
    with torch.no_grad():
        fresh = model(result.x_adv).argmax(1) != y
    assert torch.equal(result.success, fresh & mask)
    assert int(result.success.sum()) > 0


def test_model_mode_flags_and_grads_are_left_alone():
    torch.manual_seed(0)
    first, norm = torch.nn.Linear(6, 16), torch.nn.BatchNorm1d(16)
    model = torch.nn.Sequential(first, norm, torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(16, 3))
    model.train()
    first.weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    assert norm.running_mean is not None
    stats = norm.running_mean.clone()
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    rk.APGD(rk.LinfBall(eps=0.2), steps=5, loss="dlr")(model, x, y)
    assert all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(norm.running_mean, stats)  # ran in eval mode


def test_pass_counts_without_early_stop(blobs):
    model, x, y = blobs
    n, steps = 30, 12
    result = rk.APGD(rk.LinfBall(eps=0.3), steps=steps, early_stop=False, eot=2)(model, x[:n], y[:n])
    # eot=2 doubles every gradient; the last iterate needs no gradient; successes are re-checked once
    assert result.backward_passes == 2 * n * steps
    assert result.forward_passes == 2 * n * steps + n + int(result.success.sum())


def test_restarts_run_only_on_examples_still_robust(blobs):
    model, x, y = blobs
    space = rk.LinfBall(eps=0.3)
    once = rk.APGD(space, steps=10, seed=3)(model, x, y)
    twice = rk.APGD(space, steps=10, seed=3, restarts=2, record=True)(model, x, y)
    first, second = twice.info["trace"]
    assert torch.equal(first["ids"], torch.arange(len(y)))
    assert torch.equal(second["ids"], (~once.success).nonzero().squeeze(1))
    assert bool((twice.success >= once.success).all())


def test_dlr_needs_three_classes():
    model = torch.nn.Linear(4, 2)
    with pytest.raises(rk.ConfigError, match=r"loss=.ce. or loss=.margin."):
        rk.APGD(rk.LinfBall(eps=0.1), steps=5, loss="dlr")(model, torch.rand(3, 4), torch.tensor([0, 1, 0]))
    three = torch.nn.Linear(4, 3)
    with pytest.raises(rk.ConfigError, match="4 or more"):
        rk.APGD(rk.LinfBall(eps=0.1), steps=5, loss="dlr", targeted=True)(
            three, torch.rand(3, 4), torch.tensor([0, 1, 0]), target=torch.tensor([1, 2, 2])
        )


def test_config_and_validation():
    attack = rk.APGD(rk.LinfBall(eps=0.1), steps=40, restarts=2, loss="dlr", rho=0.6)
    assert attack.name == "apgd"
    config = attack.config()
    assert {k: config[k] for k in ("steps", "restarts", "loss", "rho")} == {
        "steps": 40, "restarts": 2, "loss": "dlr", "rho": 0.6
    }
    for bad in ({"steps": 0}, {"restarts": 0}, {"rho": 0.0}, {"rho": 1.5}):
        with pytest.raises(rk.ConfigError):
            rk.APGD(rk.LinfBall(eps=0.1), **bad)
    with pytest.raises(rk.ConfigError, match="unknown loss"):
        rk.APGD(rk.LinfBall(eps=0.1), loss="hinge")
