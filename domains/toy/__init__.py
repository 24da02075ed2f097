"""The built-in toy domain: the robust/non-robust problem of :mod:`robustkit.datasets` and a small MLP.

It needs no data files, trains in seconds on a CPU, and shows the whole pipeline: a standard model
that leans on non-robust features and breaks under attack, and a hardened one that does not.

Example:
    >>> from domains.toy import ToyDomain, ToyOptions
    >>> data = ToyDomain().load_data("toy", seed=0, options=ToyOptions())
    >>> len(data.train), len(data.val), len(data.test)
    (3000, 500, 1000)
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn
from torch.utils.data import TensorDataset

from robustkit import ConfigError, ContinuousSpace, DatasetInfo, Domain, DomainData, LinfBall
from robustkit.datasets import TOY_BOUNDS, TOY_EPS, robust_nonrobust
from robustkit.options import DomainOptions, option

__all__ = ["ToyDomain", "ToyOptions"]


@dataclass(frozen=True)
class ToyOptions(DomainOptions):
    """The toy domain's one option."""

    hidden: int = option(64, "hidden units of the MLP", flag="--hidden", check=lambda v: v >= 1,
                         must="an integer >= 1")


class ToyDomain(Domain[ToyOptions]):
    """Three classes, 2 robust and 64 non-robust features, Linf threat at eps 0.25."""

    name = "toy"
    default_data = "toy"
    default_budget = TOY_EPS
    default_method = "pgd"
    default_epochs = 10
    default_batch_size = 128
    default_lr = 3e-3
    #: examples in the train, validation and test splits
    sizes: ClassVar[tuple[int, int, int]] = (3000, 500, 1000)
    Options = ToyOptions

    def load_data(self, spec: str, seed: int, options: ToyOptions) -> DomainData:
        if spec != "toy":
            raise ConfigError(f"the toy domain generates its own data: use --data toy, not {spec!r}")
        n_train, n_val, n_test = self.sizes
        x, y = robust_nonrobust(n_train + n_val + n_test, seed=seed)
        cuts = (0, n_train, n_train + n_val, n_train + n_val + n_test)
        parts = [TensorDataset(x[a:b], y[a:b]) for a, b in itertools.pairwise(cuts)]
        split = f"{n_train}/{n_val}/{n_test} generated with seed {seed}"
        return DomainData(parts[0], parts[1], parts[2], DatasetInfo("robust_nonrobust", None, split, n_classes=3))

    def model_spec(self, data: DomainData, options: ToyOptions) -> dict[str, Any]:
        return {"inputs": int(data.train[0][0].numel()), "hidden": options.hidden, "classes": 3}

    def build_model(self, spec: dict[str, Any]) -> nn.Module:
        return nn.Sequential(
            nn.Linear(spec["inputs"], spec["hidden"]), nn.ReLU(), nn.Linear(spec["hidden"], spec["classes"])
        )

    def space(self, budget: float, data: DomainData) -> ContinuousSpace:
        return LinfBall(eps=budget, bounds=TOY_BOUNDS)

    def eval_budgets(self, budget: float) -> list[float]:
        return [round(budget * f, 6) for f in (0.2, 0.4, 0.6, 0.8, 1.0)]
