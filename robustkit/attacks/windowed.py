"""Forward passes for images that changed only inside one window each, reusing cached activations.

A score-based search such as Square changes one small window of each image per query. Outputs of a
convolution (stride 1), an element-wise layer or a non-overlapping pooling change only near that
window, so a model's leading spatial layers need recomputing only there, from the activations of
the current points, which are cached. The rest of the model, from the first layer that mixes all
positions (such as ``Flatten``), runs in full on the patched activations. The results equal a full
forward pass up to float rounding order; the floating-point work of a query with a small window
drops several-fold on a small CNN, where the convolutions are most of it.

It reads the model as a chain of layers (an ``nn.Sequential``, nested ones flattened, or a model
whose ``torch.fx`` trace begins with a chain) and recomputes locally the leading layers it knows:
``Conv2d`` with stride 1 and zero padding, ``MaxPool2d``/``AvgPool2d`` whose kernel equals the
stride and divides the input, element-wise activations (modules or functions), and ``BatchNorm2d``
and ``Dropout`` in eval mode. A model that begins otherwise gives no engine: callers make full
passes. A probe on two inputs must reproduce the model's own logits before an engine is used.

Example:
    >>> import torch
    >>> from robustkit.attacks.windowed import WindowedForward
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
    ...                           torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 3)).eval()
    >>> x = torch.rand(5, 1, 8, 8)
    >>> engine = WindowedForward.of(net, x)
    >>> torch.allclose(engine.reset(x), net(x), atol=1e-6)
    True
    >>> new = x.clone(); new[:, :, 2:4, 5:7] = 0.5
    >>> corners = torch.tensor([[2, 5]] * 5)
    >>> logits, patches = engine(new, corners, 2)
    >>> torch.allclose(logits, net(new), atol=1e-6)
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from robustkit.models import logits_of

__all__ = ["CACHE_BYTES", "Patches", "WindowedForward"]

#: per stage, the recomputed outputs (N, h, w, C) of a call and their top-left corners (N, 2)
Patches = list[tuple[torch.Tensor, torch.Tensor]]

#: the most memory the cached activations of one call may take; a larger batch gets full passes (which
#: run in slices and need no cache)
CACHE_BYTES = 2**31

_POINTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Softplus,
              nn.Hardtanh, nn.Identity)


class _Call(nn.Module):
    """An element-wise function call of a traced model (``F.relu(h)``), as a layer."""

    def __init__(self, function: Callable[..., torch.Tensor], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.function, self.args, self.kwargs = function, args, kwargs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.function(x, *self.args, **self.kwargs)


_FUNCTIONS = {torch.relu, F.relu, F.relu6, F.leaky_relu, F.elu, F.gelu, F.silu, torch.sigmoid, torch.tanh,
              F.hardtanh, F.softplus}


def _unfolded(model: nn.Module) -> tuple[list[nn.Module], Callable[[int], nn.Module]]:
    """The model's leading layers as a list (where its forward pass is a chain of layers), and a function of
    ``k`` giving a module that runs the rest of the model on the output of the first ``k`` of them.

    A plain ``nn.Sequential`` is read as it is (nested ones flattened); any other model is traced with
    ``torch.fx`` and read up to the first step that is neither a submodule nor an element-wise function
    applied to the step before. A model that cannot be traced gives no layers."""
    if isinstance(model, nn.Sequential) and type(model).forward is nn.Sequential.forward:
        layers = list(_flattened(model))
        return layers, lambda k: nn.Sequential(*layers[k:])
    try:
        traced = fx.symbolic_trace(model)
    except Exception:  # tracing runs the model's Python on proxies: any failure means "not a chain"
        return [], lambda k: model
    nodes = list(traced.graph.nodes)
    if sum(node.op == "placeholder" for node in nodes) != 1 or nodes[0].op != "placeholder":
        return [], lambda k: model
    chain, layers = nodes[:1], []
    for node in nodes[1:]:
        before = chain[-1]
        if before.op == "output" or len(before.users) != 1 or not node.args or node.args[0] is not before:
            break
        extra = node.args[1:]
        if node.op == "call_module" and not extra and not node.kwargs:
            layers.append(traced.get_submodule(str(node.target)))
        elif (node.op == "call_function" and node.target in _FUNCTIONS
              and not any(isinstance(a, fx.Node) for a in (*extra, *node.kwargs.values()))):
            layers.append(_Call(node.target, tuple(extra), dict(node.kwargs)))
        else:
            break
        chain.append(node)

    def rest(k: int) -> nn.Module:
        graph = fx.Graph()
        env = {chain[k]: graph.placeholder("h")}
        for node in nodes:
            if node not in chain[: k + 1]:
                env[node] = graph.node_copy(node, lambda n: env[n])
        return fx.GraphModule(traced, graph)

    return layers, rest


def _flattened(model: nn.Module) -> Iterator[nn.Module]:
    """The layers of a plain ``nn.Sequential`` in order, nested plain ones flattened."""
    if isinstance(model, nn.Sequential) and type(model).forward is nn.Sequential.forward:
        for child in model:
            yield from _flattened(child)
    else:
        yield model


def _pointwise(layer: nn.Module) -> bool:
    """Whether each output of ``layer`` depends only on the input at the same position."""
    if isinstance(layer, (*_POINTWISE, _Call)) or (isinstance(layer, nn.Dropout | nn.Dropout2d) and not layer.training):
        return True
    return (isinstance(layer, nn.BatchNorm2d) and not layer.training and layer.running_mean is not None)


def _extend(stages: list[_Stage], layer: nn.Module) -> bool:
    """Add ``layer`` to the spatial stages where it is one they can recompute locally."""
    h, w = stages[-1].size
    if _pointwise(layer):
        stages[-1].after.append(layer)
        return True
    # exact types: a subclass may change the forward pass that _Stage.apply recomputes
    if (type(layer) is nn.Conv2d and _pair(layer.stride) == (1, 1) and _pair(layer.dilation) == (1, 1)
            and layer.padding_mode == "zeros" and not isinstance(layer.padding, str)):
        k, p = _pair(layer.kernel_size), _pair(layer.padding)
        stages.append(_Stage(layer, kernel=k, pad=p, size=(h + 2 * p[0] - k[0] + 1, w + 2 * p[1] - k[1] + 1)))
        return True
    if (type(layer) is nn.MaxPool2d and not layer.return_indices) or type(layer) is nn.AvgPool2d:
        k = _pair(layer.kernel_size)
        plain = (_pair(layer.stride) == k and _pair(layer.padding) == (0, 0) and not layer.ceil_mode
                 and h % k[0] == 0 and w % k[1] == 0
                 and (isinstance(layer, nn.AvgPool2d) or _pair(layer.dilation) == (1, 1)))
        if plain:
            stages.append(_Stage(layer, kernel=k, pool=True, size=(h // k[0], w // k[1])))
            return True
    return False


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[-1]))


@dataclass
class _Stage:
    """A spatial layer (None: the input itself), the element-wise layers after it, and its geometry."""

    layer: nn.Module | None
    after: list[nn.Module] = field(default_factory=list)
    kernel: tuple[int, int] = (1, 1)
    pad: tuple[int, int] = (0, 0)
    pool: bool = False
    #: output height and width
    size: tuple[int, int] = (0, 0)

    def out_box(self, box: tuple[int, int], corner: torch.Tensor) -> tuple[tuple[int, int], torch.Tensor]:
        """The output window (side, top-left corners) holding every output that an input ``box`` at ``corner``
        reaches, kept inside the output."""
        sides, tops = [], []
        for d in range(2):
            k, p, n = self.kernel[d], self.pad[d], self.size[d]
            side = min((box[d] + k - 2) // k + 1 if self.pool else box[d] + k - 1, n)
            first = corner[:, d] // k if self.pool else corner[:, d] + p - k + 1
            sides.append(side)
            tops.append(first.clamp(0, n - side))
        return (sides[0], sides[1]), torch.stack(tops, dim=1)

    def in_box(self, box: tuple[int, int], corner: torch.Tensor) -> tuple[tuple[int, int], torch.Tensor]:
        """The input window (in coordinates padded by this layer's padding) its output window reads."""
        if self.pool:
            scale = torch.tensor(self.kernel, device=corner.device)
            return (box[0] * self.kernel[0], box[1] * self.kernel[1]), corner * scale
        return (box[0] + self.kernel[0] - 1, box[1] + self.kernel[1] - 1), corner

    def apply(self, crop: torch.Tensor) -> torch.Tensor:
        """This stage on an input crop (N, H, W, C) without padding; returns (N, H', W', C')."""
        out = crop.permute(0, 3, 1, 2)
        layer = self.layer
        if isinstance(layer, nn.Conv2d):
            out = F.conv2d(out, layer.weight, layer.bias, 1, 0, 1, layer.groups)
        elif isinstance(layer, nn.MaxPool2d):
            out = F.max_pool2d(out, self.kernel)
        elif isinstance(layer, nn.AvgPool2d):
            out = F.avg_pool2d(out, self.kernel, divisor_override=layer.divisor_override)
        for each in self.after:
            out = each(out)
        return out.permute(0, 2, 3, 1)


def _rows_of(held: torch.Tensor, corner: torch.Tensor, box: tuple[int, int], which: torch.Tensor | None = None
             ) -> torch.Tensor:
    """Row numbers, in ``held`` (N, H, W, C) seen as (N * H * W, C), of each example's ``box`` at its corner
    (example ``which[i]`` for corner ``i``; default: example ``i``), window by window in row-major order."""
    _, height, width, _ = held.shape
    n = torch.arange(len(corner), device=held.device) if which is None else which
    base = (n * height + corner[:, 0]) * width + corner[:, 1]
    offsets = (torch.arange(box[0], device=held.device)[:, None] * width
               + torch.arange(box[1], device=held.device)).flatten()
    return (base[:, None] + offsets).flatten()


def _take(held: torch.Tensor, corner: torch.Tensor, box: tuple[int, int]) -> torch.Tensor:
    """Per example, the ``box`` of ``held`` (N, H, W, C) at its corner: (N, *box, C), a copy."""
    channels = held.shape[-1]
    flat = held.reshape(-1, channels).index_select(0, _rows_of(held, corner, box))
    return flat.view(len(held), *box, channels)


def _put(held: torch.Tensor, corner: torch.Tensor, patch: torch.Tensor, which: torch.Tensor | None = None) -> None:
    """Write ``patch`` (n, h, w, C) into ``held`` (contiguous) at each example's corner; ``which`` names
    held's examples (default: all, in order)."""
    channels = held.shape[-1]
    rows = _rows_of(held, corner, (patch.shape[1], patch.shape[2]), which)
    held.view(-1, channels).index_copy_(0, rows, patch.reshape(-1, channels))


class WindowedForward:
    """Forward passes of a sequential image model for points that each differ from a held current point
    only inside one window, from cached activations of the current points.

    Build it with :meth:`of`, set the current points with :meth:`reset`, score changed points with
    ``logits, patches = engine(x_new, corners, side)`` and keep the accepted ones with
    ``engine.accept(patches, take)``.
    """

    def __init__(self, stages: list[_Stage], rest: nn.Module) -> None:
        self.stages = stages
        self.rest = rest
        #: per stage, the current points' outputs (N, H + 2p, W + 2p, C), padded for the next stage
        self.held: list[torch.Tensor] = []

    @classmethod
    def of(cls, model: object, x: torch.Tensor) -> WindowedForward | None:
        """An engine for ``model`` on inputs shaped like ``x`` (N, C, H, W), or None where the model's first
        layers are not ones it knows, where it would not give the model's own outputs on ``x[:2]``, or where
        its caches for ``x`` would exceed :data:`CACHE_BYTES`."""
        if x.dim() != 4 or not isinstance(model, nn.Module):
            return None
        layers, rest = _unfolded(model)
        stages = [_Stage(None, size=(x.shape[2], x.shape[3]))]
        at = 0
        while at < len(layers) and _extend(stages, layers[at]):
            at += 1
        if len(stages) == 1:
            return None
        probe = x[:2]
        try:
            engine = cls(stages, rest(at))
            with torch.no_grad():
                mine, theirs = engine.reset(probe), logits_of(model(probe))
            same = mine.shape == theirs.shape and bool(torch.allclose(mine, theirs, rtol=1e-4, atol=1e-5))
        except Exception:  # a remainder cut from a traced graph may fail in any way: then no engine
            return None
        per_example = sum(held[0].numel() for held in engine.held) * x.element_size()
        engine.held = []
        return engine if same and per_example * len(x) <= CACHE_BYTES else None

    def _pad(self, i: int) -> tuple[int, int]:
        """The padding stage ``i``'s outputs are held with: the next stage's."""
        return self.stages[i + 1].pad if i + 1 < len(self.stages) else (0, 0)

    def reset(self, x: torch.Tensor) -> torch.Tensor:
        """Take ``x`` (N, C, H, W) as the current points; returns the model's logits on them."""
        n, c, h, w = x.shape
        self.held = []
        for i, stage in enumerate(self.stages):
            ph, pw = self._pad(i)
            channels = c if stage.layer is None else _channels(stage.layer, c)
            self.held.append(x.new_zeros(n, stage.size[0] + 2 * ph, stage.size[1] + 2 * pw, channels))
            c = channels
        logits, patches = self(x, torch.zeros(n, 2, dtype=torch.long, device=x.device), (h, w))
        self.accept(patches, torch.ones(n, dtype=torch.bool, device=x.device))
        return logits

    def __call__(self, x: torch.Tensor, corner: torch.Tensor, side: int | tuple[int, int]
                 ) -> tuple[torch.Tensor, Patches]:
        """Logits on ``x`` (N, C, H, W), which differs from the current points only in the window of ``side``
        at ``corner`` (N, 2: top, left) of each example, and the recomputed boxes, for :meth:`accept`."""
        box = _pair(side)
        with torch.no_grad():
            patch = self.stages[0].apply(_take(x.permute(0, 2, 3, 1), corner, box))
            patches = [(patch, corner)]
            for i, stage in enumerate(self.stages[1:], start=1):
                box, out_corner = stage.out_box(box, corner)
                crop_box, crop_corner = stage.in_box(box, out_corner)
                crop = _take(self.held[i - 1], crop_corner, crop_box)
                pad = torch.tensor(stage.pad, device=corner.device)
                _put(crop, corner + pad - crop_corner, patch)
                patch, corner = stage.apply(crop), out_corner
                patches.append((patch, corner))
            last = self.held[-1].clone()
            _put(last, corner, patch)
            return logits_of(self.rest(last.permute(0, 3, 1, 2))), patches

    def accept(self, patches: Patches, take: torch.Tensor) -> None:
        """Make the points that ``patches`` (from a call) describe the current ones where ``take`` (bool per
        example) is set."""
        rows = take.nonzero().squeeze(1)
        if len(rows) == 0:
            return
        for i, (patch, corner) in enumerate(patches):
            pad = torch.tensor(self._pad(i), device=corner.device)
            _put(self.held[i], corner[rows] + pad, patch[rows], rows)

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only the current points where ``rows`` (bool per example) is set."""
        self.held = [held[rows] for held in self.held]


def _channels(layer: nn.Module, channels: int) -> int:
    """Output channels of a spatial stage's layer given its input channels."""
    return layer.out_channels if isinstance(layer, nn.Conv2d) else channels
