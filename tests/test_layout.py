"""Attacks on the CPU: channels-last weights, left exactly as found, and passes in slices of rows."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import robustkit as rk
from robustkit.models import channels_last_on_cpu


def cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)).eval()


class ViewNet(nn.Module):
    """Flattens with ``.view``, which needs the default layout of the convolution's output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(2, 4, 3, padding=1), nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).view(len(x), -1))


def test_weights_change_layout_inside_and_are_the_same_tensors_after() -> None:
    model, x = cnn(), torch.rand(6, 2, 8, 8)
    before = [(p.data_ptr(), p.stride()) for p in model.parameters()]
    expected = model(x)
    with channels_last_on_cpu(model, x[:2]) as used:
        assert used
        weight = model[0].weight
        assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
        inside = model(x)
    assert [(p.data_ptr(), p.stride()) for p in model.parameters()] == before  # the very same storage
    torch.testing.assert_close(inside, expected, atol=1e-5, rtol=1e-5)


def test_a_model_that_needs_its_own_layout_is_left_alone() -> None:
    model, x = ViewNet().eval(), torch.rand(6, 2, 8, 8)
    with channels_last_on_cpu(model, x[:2]) as used:
        assert not used
        assert model.conv.weight.is_contiguous()
        model(x)
    training = cnn().train()
    with channels_last_on_cpu(training, x[:2]) as used:
        assert not used
    with channels_last_on_cpu(cnn(), x.flatten(1)) as used:  # not a 4-D input
        assert not used


def test_attacks_report_successes_that_hold_in_the_models_own_layout() -> None:
    for model in (cnn(), ViewNet().eval()):
        x = torch.rand(64, 2, 8, 8)
        y = model(x).argmax(1)
        result = rk.PGD(rk.LinfBall(eps=0.1, bounds=(0.0, 1.0)), steps=20)(model, x, y)
        assert result.success.any()
        assert (model(result.x_adv).argmax(1) != y).eq(result.success).all()
        assert all(p.is_contiguous() for p in model.parameters())


def test_cpu_passes_run_in_slices_with_the_whole_batchs_logits_gradients_and_counts() -> None:
    from robustkit.attacks.base import CPU_ROWS, Problem
    from robustkit.losses import get_loss

    model, x = cnn(), torch.rand(2 * CPU_ROWS + 5, 2, 8, 8)
    y = torch.arange(len(x)) % 3
    seen: list[int] = []
    model.register_forward_hook(lambda _m, inputs, _o: seen.append(len(inputs[0])))
    problem = Problem(model, x, y, None, torch.arange(len(x)), get_loss("ce", False), rows=CPU_ROWS)
    idx = torch.arange(len(x))
    logits, _ = problem.evaluate(x, idx)
    assert seen == [CPU_ROWS, CPU_ROWS, 5]
    with torch.no_grad():
        torch.testing.assert_close(logits, model(x), atol=1e-5, rtol=1e-5)
    _, _, grad = problem.loss_grad(x, idx)
    xr = x.clone().requires_grad_(True)
    (whole,) = torch.autograd.grad(nn.functional.cross_entropy(model(xr), y, reduction="sum"), xr)
    torch.testing.assert_close(grad, whole, atol=1e-5, rtol=1e-4)
    assert (problem.forward_passes, problem.backward_passes) == (2 * len(x), len(x))


def test_attacks_slice_the_passes_of_a_convolutional_model_only() -> None:
    from robustkit.attacks.base import CPU_ROWS

    mlp = nn.Sequential(nn.Flatten(), nn.Linear(2 * 8 * 8, 3)).eval()
    for model, sliced in ((cnn(), True), (ViewNet().eval(), False), (mlp, False)):
        x = torch.rand(CPU_ROWS + 9, 2, 8, 8)
        y = model(x).argmax(1)
        seen: list[int] = []
        hook = model.register_forward_hook(lambda _m, inputs, _o, seen=seen: seen.append(len(inputs[0])))
        rk.APGD(rk.LinfBall(eps=1e-4, bounds=(0.0, 1.0)), steps=2, targeted=2)(model, x, y)
        hook.remove()
        big = [n for n in seen if n > 2]  # the layout's probe passes two examples
        assert big and (max(big) == CPU_ROWS) == sliced, (type(model).__name__, seen)


def test_after_an_attack_on_the_cpu_a_models_passes_reuse_the_heap_instead_of_faulting_in_pages() -> None:
    resource = pytest.importorskip("resource")
    from robustkit.models import keep_heap

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(64 * 28 * 28, 10)).eval()
    x = torch.rand(64, 1, 28, 28)
    rk.PGD(rk.LinfBall(eps=0.1, bounds=(0.0, 1.0)), steps=1)(model, x, model(x).argmax(1))
    if not keep_heap():
        pytest.skip("not glibc: the C heap's settings are its own")
    with torch.no_grad():
        model(x)  # the heap grows to the pass's size once
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(5):
            model(x)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    # each pass allocates about 19 MB of activations: 4,700 fresh pages if the heap handed them back
    assert faults < 500
