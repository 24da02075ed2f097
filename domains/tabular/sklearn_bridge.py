"""A fitted scikit-learn ``ColumnTransformer`` as a differentiable torch module over a schema's attack variable.

:func:`bridge` reads a ``ColumnTransformer`` fitted on a DataFrame and returns a
:class:`ColumnTransformerModule` that maps the attack variable of :mod:`domains.tabular.space`
(raw numeric columns, then one simplex block per categorical column) to exactly the columns
``ct.transform`` returns, in the same order. Every supported transformer is affine in the attack
variable, so the whole module is one affine map:

- ``StandardScaler`` ``(x - mean_) / scale_`` (``with_mean`` / ``with_std`` honoured), ``RobustScaler``,
  ``MinMaxScaler`` (``clip=False``), ``MaxAbsScaler`` and ``"passthrough"`` on numeric columns;
- ``OneHotEncoder`` and ``OrdinalEncoder`` on categorical columns: the output of each category is
  read from the fitted encoder itself, so ``drop``, infrequent categories, ``handle_unknown="ignore"``,
  ``"infrequent_if_exist"`` and ``"use_encoded_value"`` all behave as in scikit-learn; a simplex block
  gives the weighted mix of its categories' outputs (one-hot: the reordered weights; ordinal: the
  weights times the codes);
- ``"drop"`` (and a dropped remainder) contributes nothing; ``transformer_weights`` are honoured.

By default (``snap=True``) the module, like :class:`~domains.tabular.model.SchemaEncoder`, rounds
integer columns half up and takes each categorical block's argmax in the forward pass, with
straight-through gradients, so a model scores exactly the row :func:`~domains.tabular.space.decode`
returns while attacks still get a gradient for every column.

Example:
    >>> import pandas as pd, torch
    >>> from sklearn.compose import ColumnTransformer
    >>> from sklearn.preprocessing import OneHotEncoder, StandardScaler
    >>> from domains.tabular.schema import Column, Schema
    >>> from domains.tabular.space import encode
    >>> schema = Schema([Column("amount", "continuous", mutable=True, lower=0, upper=100),
    ...                  Column("shop", "categorical", mutable=True, categories=["b", "a"])])
    >>> df = pd.DataFrame({"amount": [10.0, 30.0, 50.0], "shop": ["a", "b", "a"]})
    >>> ct = ColumnTransformer([("num", StandardScaler(), ["amount"]),
    ...                         ("cat", OneHotEncoder(sparse_output=False), ["shop"])]).fit(df)
    >>> module = bridge(ct, schema)
    >>> bool(torch.allclose(module(encode(schema, df).double()), torch.as_tensor(ct.transform(df))))
    True
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.compose import ColumnTransformer
from sklearn.preprocessing import (
    FunctionTransformer,
    MaxAbsScaler,
    MinMaxScaler,
    OneHotEncoder,
    OrdinalEncoder,
    RobustScaler,
    StandardScaler,
)
from torch import nn

from domains.tabular.schema import Schema
from domains.tabular.space import layout
from robustkit.errors import ConfigError

__all__ = ["SUPPORTED", "ColumnTransformerModule", "bridge"]

#: what :func:`bridge` can turn into torch, for error messages
SUPPORTED = ("StandardScaler, RobustScaler, MinMaxScaler (clip=False), MaxAbsScaler and 'passthrough' on numeric "
             "columns; OneHotEncoder and OrdinalEncoder on categorical columns; 'drop'")


def _column_names(columns: Any, names_in: Sequence[str]) -> list[str]:
    """The column names a fitted ColumnTransformer entry selects (names, positions, slices or a bool mask)."""
    names = list(names_in)
    if isinstance(columns, str):
        return [columns]
    if isinstance(columns, int | np.integer):
        return [names[int(columns)]]
    if isinstance(columns, slice):
        if isinstance(columns.start, str) or isinstance(columns.stop, str):  # label slices include the stop
            start = 0 if columns.start is None else names.index(columns.start)
            stop = len(names) if columns.stop is None else names.index(columns.stop) + 1
            return names[start:stop]
        return names[columns]
    values = np.asarray(columns)
    if values.size == 0:
        return []
    if values.dtype.kind == "b":
        return [n for n, keep in zip(names, values.tolist(), strict=True) if keep]
    return [names[int(v)] if isinstance(v, int | np.integer) else str(v) for v in values.tolist()]


def _dense(out: Any) -> np.ndarray:
    out = out.toarray() if hasattr(out, "toarray") else out
    return np.asarray(out, dtype=np.float64)


def _is_passthrough(t: Any) -> bool:
    if isinstance(t, str):
        return t == "passthrough"
    return isinstance(t, FunctionTransformer) and t.func is None  # how fitted "passthrough" entries look


def _numeric_affine(name: str, t: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(a, b)`` with ``t.transform(x) == x * a + b`` per column, or ConfigError."""
    ones, zeros = np.ones(n), np.zeros(n)
    if isinstance(t, OneHotEncoder | OrdinalEncoder):
        raise ConfigError(f"transformer {name!r} ({type(t).__name__}) encodes numeric columns, whose categories "
                          "have no gradient: declare those columns categorical in the schema (with their values "
                          "as categories), or scale them with StandardScaler")
    if _is_passthrough(t):
        return ones, zeros
    if isinstance(t, StandardScaler):
        mean = np.asarray(t.mean_, dtype=np.float64) if t.with_mean else zeros
        scale = np.asarray(t.scale_, dtype=np.float64) if t.with_std else ones
        return 1.0 / scale, -mean / scale
    if isinstance(t, RobustScaler):
        center = np.asarray(t.center_, dtype=np.float64) if t.with_centering else zeros
        scale = np.asarray(t.scale_, dtype=np.float64) if t.with_scaling else ones
        return 1.0 / scale, -center / scale
    if isinstance(t, MinMaxScaler):
        if t.clip:
            raise ConfigError(f"transformer {name!r}: MinMaxScaler(clip=True) is not supported (clipping has no "
                              "gradient): use clip=False")
        return np.asarray(t.scale_, dtype=np.float64), np.asarray(t.min_, dtype=np.float64)
    if isinstance(t, MaxAbsScaler):
        return 1.0 / np.asarray(t.scale_, dtype=np.float64), zeros
    raise ConfigError(f"transformer {name!r} is {type(t).__name__}, which cannot be turned into a differentiable "
                      f"module for numeric columns: supported are {SUPPORTED}")


def _probe_value(category: str, known: np.ndarray) -> tuple[Any, bool]:
    """The value the encoder knows for the schema's ``category`` (matched as strings), or an unknown one."""
    for v in known.tolist():
        if str(v) == category:
            return v, True
    if known.dtype.kind in "iuf" and len(known):
        return known.max() + 1, False  # a number the encoder has not seen
    return category, False


def _categorical_affine(name: str, t: Any, columns: list[str], schema: Schema) -> tuple[list[np.ndarray], np.ndarray]:
    """Per input column a (categories x outputs) matrix ``D`` and a bias ``b``: output = b + sum of w @ D."""
    if not isinstance(t, OneHotEncoder | OrdinalEncoder):
        raise ConfigError(f"transformer {name!r} is {type(t).__name__}, which cannot be turned into a differentiable "
                          f"module for categorical columns {columns}: supported are {SUPPORTED}")
    kind = type(t).__name__
    fix = "handle_unknown='ignore'" if isinstance(t, OneHotEncoder) else \
        "handle_unknown='use_encoded_value' with an integer unknown_value"
    probes: list[list[Any]] = []
    for col, known in zip(columns, t.categories_, strict=True):
        values = []
        for cat in schema[col].categories or []:
            value, is_known = _probe_value(cat, np.asarray(known))
            if not is_known and t.handle_unknown == "error":
                raise ConfigError(
                    f"{kind} {name!r} does not know category {cat!r} of column {col!r}, which the schema allows: "
                    f"transform would fail on rows an attacker moves there. Use {fix}, or pass the schema's "
                    "categories to the encoder (categories=...)")
            values.append(value)
        probes.append(values)
    reference = [values[0] for values in probes]
    rows = [list(reference)]
    for i, values in enumerate(probes):
        for v in values:
            row = list(reference)
            row[i] = v
            rows.append(row)
    names_in = list(getattr(t, "feature_names_in_", columns))
    frame = pd.DataFrame({n: pd.Series([r[i] for r in rows]) for i, n in enumerate(names_in)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "found unknown categories": intended
        try:
            out = _dense(t.transform(frame))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{kind} {name!r} could not encode the schema's categories of {columns}: {exc}") from None
    if not np.isfinite(out).all():
        raise ConfigError(f"{kind} {name!r} encodes a category of {columns} that the schema allows as NaN "
                          f"(unknown_value=nan): use {fix}")
    bias = out[0].copy()
    blocks, k = [], 1
    for values in probes:
        blocks.append(out[k:k + len(values)] - bias)
        k += len(values)
    # Each output belongs to one input column (the encoders work column by column): move the reference's
    # share of the bias into that column's rows, so each category's row is its own output (the linear
    # extension off the simplex too, and a gradient for the reference category).
    owner = np.full(len(bias), -1)
    for i, d in enumerate(blocks):
        owner[(np.abs(d).max(axis=0) > 0) & (owner == -1)] = i
    for i, d in enumerate(blocks):
        d[:, owner == i] += bias[owner == i]
    bias[owner >= 0] = 0.0
    return blocks, bias


class ColumnTransformerModule(nn.Module):
    """A fitted ``ColumnTransformer`` as one affine map over the attack variable (see :func:`bridge`).

    ``weight`` (width x outputs) and ``bias`` are float64 buffers, cast to the input's dtype.

    Example:
        >>> import pandas as pd, torch
        >>> from sklearn.compose import ColumnTransformer
        >>> from sklearn.preprocessing import OrdinalEncoder
        >>> from domains.tabular.schema import Column, Schema
        >>> schema = Schema([Column("c", "categorical", categories=["lo", "mid", "hi"])])
        >>> ct = ColumnTransformer([("ord", OrdinalEncoder(categories=[["lo", "mid", "hi"]]), ["c"])])
        >>> module = ColumnTransformerModule(ct.fit(pd.DataFrame({"c": ["lo", "hi"]})), schema)
        >>> module(torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])).tolist()
        [[2.0], [1.0]]
    """

    weight: torch.Tensor
    bias: torch.Tensor
    integer: torch.Tensor

    def __init__(self, ct: Any, schema: Schema, snap: bool = True) -> None:
        super().__init__()
        weight, bias = _affine(ct, schema)
        lay = layout(schema)
        integer = torch.zeros(lay.width, dtype=torch.bool)
        numeric = [c for c in schema.columns if c.numeric]
        for pos, col in zip(lay.numeric, numeric, strict=True):
            integer[pos] = col.discrete
        self.register_buffer("weight", torch.as_tensor(weight, dtype=torch.float64))
        self.register_buffer("bias", torch.as_tensor(bias, dtype=torch.float64))
        self.register_buffer("integer", integer, persistent=False)
        self.blocks = list(lay.blocks)
        self.snap = snap
        self.in_features, self.out_features = weight.shape
        try:
            self.feature_names_out: list[str] | None = [str(n) for n in ct.get_feature_names_out()]
        except (AttributeError, ValueError):
            self.feature_names_out = None

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, snap={self.snap}"

    def _snapped(self, x: torch.Tensor) -> torch.Tensor:
        """Integers rounded half up and blocks at their argmax, gradients passed straight through."""
        hard = torch.where(self.integer, torch.floor(x + 0.5), x)
        if self.blocks:
            hard = hard.clone()
            for start, size in self.blocks:
                block = x[:, start:start + size]
                hard[:, start:start + size] = nn.functional.one_hot(block.argmax(dim=1), size).to(x.dtype)
        return x + (hard - x).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():
            x = x.float()
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"expected inputs of shape (N, {self.in_features}), got {tuple(x.shape)}")
        if self.snap:
            x = self._snapped(x)
        return x @ self.weight.to(x.dtype) + self.bias.to(x.dtype)


def _affine(ct: Any, schema: Schema) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(ct, ColumnTransformer):
        raise ConfigError(f"expected a fitted sklearn ColumnTransformer, got {type(ct).__name__}")
    if not hasattr(ct, "transformers_"):
        raise ConfigError("the ColumnTransformer is not fitted: call ct.fit(df) on a DataFrame first")
    names_in = getattr(ct, "feature_names_in_", None)
    if names_in is None:
        raise ConfigError("the ColumnTransformer was fitted on an array: fit it on a pandas DataFrame so that its "
                          "columns can be matched to the schema by name")
    lay = layout(schema)
    position = {n: lay.numeric[i] for i, n in enumerate(lay.numeric_columns)}
    block = {n: lay.blocks[i] for i, n in enumerate(lay.block_columns)}
    slices: dict[str, slice] = ct.output_indices_
    width = max((s.stop for s in slices.values()), default=0)
    weight, bias = np.zeros((lay.width, width)), np.zeros(width)
    tw = ct.transformer_weights or {}
    for name, t, cols in ct.transformers_:
        columns = _column_names(cols, names_in)
        if (isinstance(t, str) and t == "drop") or not columns:
            continue
        out = slices[name]
        n_out = out.stop - out.start
        scale = float(tw.get(name, 1.0))
        unknown = [c for c in columns if c not in position and c not in block]
        if unknown:
            raise ConfigError(f"transformer {name!r} reads column {unknown[0]!r}, which the schema does not declare: "
                              "add it to the schema or drop it in the ColumnTransformer")
        categorical = [c for c in columns if c in block]
        if not categorical:
            a, b = _numeric_affine(name, t, len(columns))
            if n_out != len(columns):
                raise ConfigError(f"transformer {name!r} gives {n_out} outputs for {len(columns)} columns: "
                                  f"supported are {SUPPORTED}")
            for k, col in enumerate(columns):
                weight[position[col], out.start + k] += scale * a[k]
                bias[out.start + k] += scale * b[k]
            continue
        if len(categorical) < len(columns):
            numeric = next(c for c in columns if c not in block)
            what = "'passthrough'" if _is_passthrough(t) else type(t).__name__
            raise ConfigError(
                f"transformer {name!r} ({what}) mixes categorical column {categorical[0]!r} with numeric column "
                f"{numeric!r}: scale numeric columns (StandardScaler, passthrough) and encode categorical ones "
                "(OneHotEncoder, OrdinalEncoder) in separate transformers")
        if _is_passthrough(t):
            raise ConfigError(f"transformer {name!r} passes categorical column {categorical[0]!r} through as raw "
                              "values, which a model cannot read: encode it with OneHotEncoder or OrdinalEncoder")
        mats, b0 = _categorical_affine(name, t, columns, schema)
        if len(b0) != n_out:
            raise ConfigError(f"transformer {name!r} gives {len(b0)} outputs where the ColumnTransformer "
                              f"reserves {n_out}")
        for col, mat in zip(columns, mats, strict=True):
            start, size = block[col]
            weight[start:start + size, out] += scale * mat
        bias[out] += scale * b0
    return weight, bias


def bridge(ct: Any, schema: Schema, snap: bool = True) -> ColumnTransformerModule:
    """The fitted ``ct`` as a torch module over ``schema``'s attack variable (see the module docstring).

    Raises :class:`~robustkit.errors.ConfigError` naming the transformer for anything it cannot honour:
    an unfitted or array-fitted ``ct``, a column the schema lacks, an unsupported transformer, an encoder
    on a numeric column, a scaler on a categorical one, or ``handle_unknown="error"`` with a schema
    category the encoder does not know.
    """
    return ColumnTransformerModule(ct, schema, snap=snap)
