"""Models that score raw rows: a differentiable, schema-built encoder in front of an MLP.

:class:`SchemaEncoder` takes the attack variable (see :mod:`domains.tabular.space`) and gives the
network standardised numerics and one-hot categoricals. It rounds integer columns half up and takes
the argmax of each categorical block in the forward pass (straight-through: gradients flow as if
the identity), so the model scores exactly the row :func:`~domains.tabular.space.decode` returns,
while attacks still get gradients for every column.

Example:
    >>> import torch
    >>> from domains.tabular.schema import Column, Schema
    >>> schema = Schema([Column("n", "integer", lower=0, upper=9), Column("c", "categorical", categories=["a", "b"])])
    >>> enc = SchemaEncoder(schema, mean=[4.0], std=[2.0])
    >>> enc(torch.tensor([[5.6, 0.4, 0.6]])).tolist()
    [[1.0, 0.0, 1.0]]
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from domains.tabular.schema import Schema
from domains.tabular.space import layout

__all__ = ["SchemaEncoder", "TabularMLP"]


class SchemaEncoder(nn.Module):
    """Attack variable -> network input: integers rounded, categoricals one-hot, numerics standardised."""

    numeric: torch.Tensor
    integer: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, schema: Schema, mean: list[float], std: list[float]) -> None:
        super().__init__()
        lay = layout(schema)
        numeric_cols = [c for c in schema.columns if c.numeric]
        if len(mean) != len(numeric_cols) or len(std) != len(numeric_cols):
            raise ValueError("mean and std need one value per numeric column")
        self.register_buffer("numeric", torch.tensor(lay.numeric, dtype=torch.long), persistent=False)
        self.register_buffer("integer", torch.tensor([c.discrete for c in numeric_cols], dtype=torch.bool),
                             persistent=False)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor([max(s, 1e-6) for s in std], dtype=torch.float32),
                             persistent=False)
        self.blocks = list(lay.blocks)
        self.out_features = len(lay.numeric) + sum(size for _, size in lay.blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        num = x[:, self.numeric]
        rounded = num + (torch.floor(num + 0.5) - num).detach()
        num = torch.where(self.integer, rounded, num)
        parts = [(num - self.mean) / self.std]
        for start, size in self.blocks:
            block = x[:, start:start + size]
            hard = nn.functional.one_hot(block.argmax(dim=1), size).to(block.dtype)
            parts.append(block + (hard - block).detach())
        return torch.cat(parts, dim=1)


class TabularMLP(nn.Module):
    """Encoder + MLP with two logits (not fraud, fraud); ``spec`` holds the schema and standardisation."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        self.spec = spec
        schema = Schema.from_dict(spec["schema"])
        self.encoder = SchemaEncoder(schema, spec["mean"], spec["std"])
        layers: list[nn.Module] = []
        width = self.encoder.out_features
        for h in spec.get("hidden", [64, 64]):
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 2))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.encoder(x))
