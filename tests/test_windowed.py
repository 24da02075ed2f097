"""Windowed forward passes: equal to the model's own passes for any sequence of windows, accepts and drops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import robustkit as rk
import robustkit.attacks.square as square_module
import robustkit.attacks.windowed as windowed_module
from domains.images.models import SmallCNN
from robustkit.attacks.windowed import WindowedForward


class _Net(nn.Module):
    """Layers behind a forward method of its own (read by tracing), with a functional activation."""

    def __init__(self, body: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.body, self.head = body, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(F.leaky_relu(self.body(x), 0.2), 1))


@st.composite
def models_and_inputs(draw):
    """A random sequential image model (convolutions of any kernel and padding, pools, element-wise layers,
    sometimes a layer the engine must leave to full passes) with inputs it takes."""
    torch.manual_seed(draw(st.integers(0, 2**16)))
    channels, height = draw(st.integers(1, 3)), draw(st.sampled_from([6, 8, 9, 12]))
    width = draw(st.sampled_from([6, 8]))
    layers: list[nn.Module] = []
    h, w, c = height, width, channels
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["conv", "conv", "pool", "act", "bn", "strided"]))
        if kind == "conv":
            kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 3))
            ph, pw = draw(st.integers(0, kh // 2 + 1)), draw(st.integers(0, kw // 2))
            if h + 2 * ph - kh + 1 < 2 or w + 2 * pw - kw + 1 < 2:
                continue
            out = draw(st.integers(1, 4))
            layers.append(nn.Conv2d(c, out, (kh, kw), padding=(ph, pw)))
            h, w, c = h + 2 * ph - kh + 1, w + 2 * pw - kw + 1, out
        elif kind == "pool" and h % 2 == 0 and w % 2 == 0 and h >= 4 and w >= 4:
            layers.append(draw(st.sampled_from([nn.MaxPool2d(2), nn.AvgPool2d(2)])))
            h, w = h // 2, w // 2
        elif kind == "act":
            layers.append(draw(st.sampled_from([nn.ReLU(), nn.GELU(), nn.Tanh(), nn.LeakyReLU(0.1), nn.Dropout(0.5)])))
        elif kind == "bn":
            bn = nn.BatchNorm2d(c)
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            layers.append(bn)
        elif kind == "strided" and h >= 4 and w >= 4:  # not local to a window: the full passes take over here
            layers.append(nn.Conv2d(c, c, 3, stride=2))
            h, w = (h - 3) // 2 + 1, (w - 3) // 2 + 1
    if draw(st.booleans()):
        model: nn.Module = nn.Sequential(nn.Sequential(*layers), nn.Flatten(), nn.Linear(c * h * w, 3)).eval()
    else:
        model = _Net(nn.Sequential(*layers), nn.Linear(c * h * w, 3)).eval()
    return model, torch.rand(draw(st.integers(1, 5)), channels, height, width)


@given(st.data())
@settings(max_examples=80, deadline=None)
def test_windowed_passes_equal_full_passes_through_any_queries(data):
    model, x = data.draw(models_and_inputs())
    engine = WindowedForward.of(model, x)
    body = model[0] if isinstance(model, nn.Sequential) else model.body
    spatial = [m for m in body if isinstance(m, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d)]
    # an engine exactly where the first spatial layer is one it recomputes locally (not a strided convolution)
    assert (engine is not None) == bool(spatial and getattr(spatial[0], "stride", None) != (2, 2))
    if engine is None:
        return
    current = x.clone()
    with torch.no_grad():
        assert torch.allclose(engine.reset(x), model(x), atol=1e-5)
        h, w = x.shape[-2:]
        for _ in range(data.draw(st.integers(1, 6))):
            side = data.draw(st.integers(1, min(h, w)))
            n = len(current)
            tops = data.draw(st.lists(st.integers(0, h - side), min_size=n, max_size=n))
            lefts = data.draw(st.lists(st.integers(0, w - side), min_size=n, max_size=n))
            corner = torch.tensor([tops, lefts]).T
            new = current.clone()
            for i, (t, left) in enumerate(corner.tolist()):
                new[i, :, t : t + side, left : left + side] = torch.rand(x.shape[1], side, side)
            logits, patches = engine(new, corner, side)
            assert torch.allclose(logits, model(new), atol=1e-5)
            take = torch.tensor(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
            engine.accept(patches, take)
            current = torch.where(take[:, None, None, None], new, current)
            if data.draw(st.booleans()):
                keep = torch.tensor(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
                engine.keep(keep)
                current = current[keep]
                if len(current) == 0:
                    return
        assert torch.allclose(engine(current, torch.zeros(len(current), 2, dtype=torch.long), 1)[0], model(current),
                              atol=1e-5)


class _Skip(nn.Sequential):
    """A sequential container whose own forward adds its input back: not a plain chain of layers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + x


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(1, 1, 3, padding=1), nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head((self.conv(x) + x).flatten(1))


def test_a_traced_image_model_is_read_up_to_its_first_global_layer():
    model, x = SmallCNN(channels=1, size=12, classes=4).eval(), torch.rand(3, 1, 12, 12)
    engine = WindowedForward.of(model, x)
    assert engine is not None
    assert [type(stage.layer).__name__ for stage in engine.stages] == ["NoneType", "Conv2d", "Conv2d", "MaxPool2d",
                                                                       "Conv2d", "MaxPool2d"]
    with torch.no_grad():
        assert torch.allclose(engine.reset(x), model(x), atol=1e-6)
        new = x.clone()
        new[:, :, 5:8, 1:4] = 1.0
        assert torch.allclose(engine(new, torch.tensor([[5, 1]] * 3), 3)[0], model(new), atol=1e-6)
    assert WindowedForward.of(_Residual().eval(), torch.rand(2, 1, 8, 8)) is None


def test_a_batch_whose_caches_would_exceed_the_memory_cap_gets_full_passes(monkeypatch):
    model, x = _small_cnn().eval(), torch.rand(10, 2, 8, 8)
    per_example = (2 * 10 * 10 + 8 * 8 * 8 + 8 * 6 * 6 + 8 * 4 * 4) * 4  # padded caches, float32
    monkeypatch.setattr(windowed_module, "CACHE_BYTES", 10 * per_example)
    assert WindowedForward.of(model, x) is not None
    assert WindowedForward.of(model, torch.rand(11, 2, 8, 8)) is None


def test_models_that_are_not_plain_chains_of_local_layers_get_full_passes():
    x = torch.rand(2, 1, 8, 8)
    head = [nn.Flatten(), nn.Linear(64, 3)]
    assert WindowedForward.of(nn.Sequential(_Skip(nn.Conv2d(1, 1, 3, padding=1)), *head).eval(), x) is None
    assert WindowedForward.of(nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.Flatten(), nn.Linear(36, 3)), x) is None
    assert WindowedForward.of(nn.Sequential(*head), x) is None
    assert WindowedForward.of(nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), *head).train(), x) is not None
    assert WindowedForward.of(nn.Sequential(nn.Dropout(0.5), nn.Conv2d(1, 1, 3, padding=1), *head).train(), x) is None


def _small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 4))


@pytest.mark.parametrize("early_stop", [True, False])
def test_square_finds_the_same_points_with_windowed_and_full_passes(monkeypatch, early_stop):
    model = _small_cnn()
    x = torch.rand(40, 2, 8, 8, generator=torch.Generator().manual_seed(3))
    y = model(x).argmax(1).detach()
    space = rk.LinfBall(eps=0.1, bounds=(0.0, 1.0))
    attack = rk.Square(space, queries=300, early_stop=early_stop)
    assert WindowedForward.of(model, x) is not None
    windowed = attack(model, x, y)
    monkeypatch.setattr(square_module.WindowedForward, "of", classmethod(lambda cls, model, x: None))
    full = attack(model, x, y)
    assert 0 < int(windowed.success.sum()) < len(x)
    assert torch.equal(windowed.success, full.success)
    assert windowed.forward_passes == full.forward_passes
    assert torch.equal(windowed.x_adv, full.x_adv)
    assert bool(space.contains(windowed.x_adv, x).all())
