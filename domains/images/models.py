"""Reference image models: they take pixels in [0, 1] and normalise inside, so attacks work on real pixels.

:class:`ImageClassifier` wraps a network with :class:`Normalize` and checks the input shape before
anything reaches a convolution; :func:`build` makes one from a JSON-able spec (what ``model.json``
stores). Two networks: :class:`SmallCNN` (grey images such as MNIST or the 8x8 digits) and
:class:`PreActResNet18` (32x32 colour images such as CIFAR-10). Any ``nn.Module`` mapping
``(N, C, H, W)`` pixels in [0, 1] to logits works with robustkit as well; these are the defaults.

Example:
    >>> import torch
    >>> from domains.images.models import build
    >>> model = build({"kind": "small-cnn", "channels": 1, "size": 8, "classes": 10})
    >>> model(torch.rand(2, 1, 8, 8)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from robustkit.errors import ConfigError, DataError

__all__ = ["KINDS", "ImageClassifier", "Normalize", "PreActResNet18", "SmallCNN", "build"]

#: Model kinds :func:`build` knows.
KINDS = ("small-cnn", "preact-resnet18")


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, as the first layer of a model (so inputs stay raw pixels).

    Example:
        >>> import torch
        >>> Normalize([0.5], [0.25])(torch.ones(1, 1, 2, 2)).flatten().tolist()
        [2.0, 2.0, 2.0, 2.0]
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or not len(mean):
            raise ConfigError(f"mean and std need one value per channel, got {list(mean)} and {list(std)}")
        if min(std) <= 0:
            raise ConfigError(f"std must be > 0 for every channel, got {list(std)}")
        self.register_buffer("mean", torch.tensor([float(m) for m in mean]).reshape(-1, 1, 1))
        self.register_buffer("std", torch.tensor([float(s) for s in std]).reshape(-1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class SmallCNN(nn.Module):
    """Three 3x3 convolutions (two 2x2 max-pools) and two linear layers, for small grey images.

    Args:
        channels: input channels. size: input height and width (>= 4). classes: outputs.
        width: channels of the first convolution (the others use twice as many).

    Example:
        >>> import torch
        >>> SmallCNN(channels=1, size=28, classes=10)(torch.rand(3, 1, 28, 28)).shape
        torch.Size([3, 10])
    """

    def __init__(self, channels: int = 1, size: int = 28, classes: int = 10, width: int = 32) -> None:
        super().__init__()
        side = size // 4
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * side * side, 4 * width), nn.ReLU(), nn.Linear(4 * width, classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class _PreActBlock(nn.Module):
    """Pre-activation residual unit: BN-ReLU-conv3x3, BN-ReLU-conv3x3, plus the (projected) input."""

    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inputs)
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Conv2d(inputs, outputs, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = torch.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + skip


class PreActResNet18(nn.Module):
    """ResNet-18 with pre-activation units (He et al., "Identity Mappings in Deep Residual Networks", 2016).

    A 3x3 stem with 64 channels, four stages of two units (64, 128, 256, 512 channels; the last three
    halve the resolution), then BN-ReLU, global average pooling and a linear layer: the usual layout
    for 32x32 inputs such as CIFAR-10.

    Example:
        >>> import torch
        >>> PreActResNet18(channels=3, classes=10)(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, channels: int = 3, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(channels, 64, 3, padding=1, bias=False)
        units: list[nn.Module] = []
        inputs = 64
        for outputs, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            units += [_PreActBlock(inputs, outputs, stride), _PreActBlock(outputs, outputs, 1)]
            inputs = outputs
        self.units = nn.Sequential(*units)
        self.bn = nn.BatchNorm2d(512)
        self.fc = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn(self.units(self.stem(x))))
        return self.fc(out.mean(dim=(2, 3)))


class ImageClassifier(nn.Module):
    """A network behind :class:`Normalize` that takes ``(N, C, H, W)`` pixels in [0, 1] and returns logits.

    It checks the input shape (a clear :class:`~robustkit.errors.DataError` instead of an error deep in
    a convolution); the pixel range is checked by the threat model before any attack or training step.
    ``spec`` is the JSON-able description :func:`build` rebuilds it from.

    Example:
        >>> import torch
        >>> model = build({"kind": "small-cnn", "channels": 1, "size": 8, "classes": 10})
        >>> model(torch.rand(1, 8, 8))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        robustkit.errors.DataError: images of shape (1, 8, 8) given, but this model takes (N, 1, 8, 8) ...
    """

    def __init__(self, net: nn.Module, spec: dict[str, Any]) -> None:
        super().__init__()
        self.spec = dict(spec)
        self.input_shape = (int(spec["channels"]), int(spec["size"]), int(spec["size"]))
        self.normalize = Normalize(spec["mean"], spec["std"])
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise DataError(_shape_hint(tuple(x.shape), self.input_shape))
        return self.net(self.normalize(x))


def _shape_hint(got: tuple[int, ...], want: tuple[int, int, int]) -> str:
    c, h, w = want
    msg = f"images of shape {got} given, but this model takes (N, {c}, {h}, {w}) pixels in [0, 1]"
    if len(got) == 3 and got[1:] == (h, w) and c == 1:
        return msg + ": add the channel axis with x.unsqueeze(1)"
    if len(got) == 4 and got[3] in (1, 3) and got[1:3] == (h, w):
        return msg + ": the channels come last; use x.permute(0, 3, 1, 2)"
    if len(got) == 4 and got[2:] == (h, w):
        kind = {1: "grey", 3: "colour (RGB)"}.get(c, f"{c}-channel")
        return msg + f" ({got[1]} channels given): this model was trained on {kind} images; use data of that kind"
    return msg + f": resize the images to {h}x{w} (folder data: options size: {h}) or train a model on this data"


def _channel_stats(spec: dict[str, Any], key: str, default: float) -> list[float]:
    values = spec.get(key, [default] * int(spec["channels"]))
    if not isinstance(values, list) or len(values) != int(spec["channels"]):
        raise ConfigError(f"model spec {key!r} needs one number per channel ({spec['channels']}), got {values!r}")
    return [float(v) for v in values]


def build(spec: dict[str, Any]) -> ImageClassifier:
    """The untrained model a spec describes: ``kind`` (see :data:`KINDS`), ``channels``, ``size``,
    ``classes``, optional per-channel ``mean`` / ``std`` (default 0 / 1) and ``width`` (SmallCNN).

    Example:
        >>> build({"kind": "preact-resnet18", "channels": 3, "size": 32, "classes": 10}).spec["mean"]
        [0.0, 0.0, 0.0]
    """
    kind = spec.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"unknown image model kind {kind!r}: choose one of {', '.join(KINDS)}")
    for key in ("channels", "size", "classes"):
        value = spec.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"model spec {key!r} must be an integer >= 1, got {value!r}")
    if spec["size"] < 4:
        raise ConfigError(f"images must be at least 4x4 pixels for {kind}, got size {spec['size']}")
    full = {**spec, "mean": _channel_stats(spec, "mean", 0.0), "std": _channel_stats(spec, "std", 1.0)}
    net: nn.Module
    if kind == "small-cnn":
        width = spec.get("width", 32)
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ConfigError(f"model spec 'width' must be an integer >= 1, got {width!r}")
        full["width"] = width
        net = SmallCNN(full["channels"], full["size"], full["classes"], full["width"])
    else:
        net = PreActResNet18(full["channels"], full["classes"])
    return ImageClassifier(net, full)
