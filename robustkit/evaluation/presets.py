"""Named attack suites for :func:`robustkit.evaluate` and the names of single attacks.

A preset is a list of attacks with their settings and a rough cost, so that a command line can
print what ``--attacks standard`` will spend before it runs. Costs are per example and per budget,
upper bounds (attacks stop early on examples they have already broken).

Example:
    >>> from robustkit.evaluation.presets import PRESETS
    >>> [spec.label for spec in PRESETS["standard"].attacks_for(n_classes=10)]
    ['pgd', 'apgd-ce', 'apgd-dlr']
    >>> [spec.label for spec in PRESETS["standard"].attacks_for(n_classes=2)]
    ['pgd', 'apgd-ce', 'apgd-margin']
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from robustkit.attacks.apgd import APGD
from robustkit.attacks.base import Attack
from robustkit.attacks.pgd import FGSM, PGD
from robustkit.attacks.random_search import RandomSearch
from robustkit.attacks.search import DiscreteSearch, QuerySearch
from robustkit.errors import ConfigError
from robustkit.spaces import PerturbationSpace

__all__ = ["ATTACKS", "CONTINUOUS_ONLY", "PRESETS", "AttackSpec", "Preset", "describe_presets"]


@dataclass(frozen=True)
class AttackSpec:
    """One attack by name: a report label, the attack kind and its settings.

    Args:
        label: the name it has in reports ("pgd", "apgd-ce", "square", ...).
        kind: "fgsm", "pgd", "apgd", "square" (gradient-free random search), or over discrete spaces
            "search" (gradient-guided) or "query" (black-box, ranking positions by queries).
        options: keyword arguments of the attack class.
        forward: forward passes per example it costs at most (for one budget).
        backward: backward passes per example it costs at most.
    """

    label: str
    kind: str
    options: Mapping[str, Any] = field(default_factory=dict)
    forward: int = 0
    backward: int = 0

    def build(self, space: PerturbationSpace, seed: int = 0) -> Attack:
        """The attack over ``space`` with this spec's settings and ``seed``."""
        classes: dict[str, type[Attack]] = {
            "fgsm": FGSM,
            "pgd": PGD,
            "apgd": APGD,
            "square": RandomSearch,
            "search": DiscreteSearch,
            "query": QuerySearch,
        }
        if self.kind not in classes:
            raise ConfigError(f"unknown attack kind {self.kind!r}: use one of {sorted(classes)}")
        return classes[self.kind](space, seed=seed, **self.options)


def _pgd(steps: int, restarts: int = 1) -> AttackSpec:
    return AttackSpec("pgd", "pgd", {"steps": steps, "restarts": restarts}, (steps + 1) * restarts, steps * restarts)


def _apgd(loss: str, steps: int) -> AttackSpec:
    return AttackSpec(f"apgd-{loss}", "apgd", {"steps": steps, "loss": loss}, steps + 1, steps)


def _square(queries: int) -> AttackSpec:
    return AttackSpec("square", "square", {"queries": queries}, queries + 1, 0)


def _search(candidates: int, restarts: int = 1) -> AttackSpec:
    options = {"candidates_per_step": candidates, "restarts": restarts, "random_share": 0.25 if restarts > 1 else 0.0}
    return AttackSpec("search", "search", options)


def _query(positions: int, queries: int, restarts: int = 1) -> AttackSpec:
    return AttackSpec("query-search", "query",
                      {"positions_per_step": positions, "queries_per_position": queries, "restarts": restarts})


#: Single attacks by name, as ``attacks=["pgd", "apgd-ce"]`` takes them.
ATTACKS: dict[str, AttackSpec] = {
    "fgsm": AttackSpec("fgsm", "fgsm", {}, 2, 1),
    "pgd": _pgd(20),
    "apgd-ce": _apgd("ce", 50),
    "apgd-dlr": _apgd("dlr", 50),
    "apgd-margin": _apgd("margin", 50),
    "square": _square(1000),
    "search": AttackSpec("search", "search", {"candidates_per_step": 8}),
    "query-search": _query(4, 32),
}

#: Names of :data:`ATTACKS` that need a continuous space (all but the discrete searches).
CONTINUOUS_ONLY = frozenset(name for name, spec in ATTACKS.items() if spec.kind not in ("search", "query"))


@dataclass(frozen=True)
class Preset:
    """A named attack suite. DLR attacks become margin attacks on binary models (DLR needs 3 classes).

    ``discrete`` is the suite used over a discrete space: the gradient-guided search (with restarts
    over other samples of the space's candidates and random-greedy moves) and a black-box query search,
    each reported, and the worst case per example over both.
    """

    name: str
    attacks: tuple[AttackSpec, ...]
    description: str
    discrete: tuple[AttackSpec, ...] = ()

    def attacks_for(self, n_classes: int, discrete: bool = False) -> list[AttackSpec]:
        """The suite for a model with ``n_classes`` outputs (over a discrete space if ``discrete``)."""
        if discrete:
            return list(self.discrete)
        if n_classes >= 3:
            return list(self.attacks)
        return [_apgd("margin", int(s.options["steps"])) if s.label == "apgd-dlr" else s for s in self.attacks]

    @property
    def forward_passes(self) -> int:
        """Forward passes per example and budget, at most."""
        return sum(s.forward for s in self.attacks)

    @property
    def backward_passes(self) -> int:
        """Backward passes per example and budget, at most."""
        return sum(s.backward for s in self.attacks)

    @property
    def cost(self) -> str:
        """One line: what it runs and what it costs per example and budget."""
        return (
            f"{self.description}; at most {self.forward_passes} forward and {self.backward_passes} "
            "backward passes per example and budget"
        )


PRESETS: dict[str, Preset] = {
    "quick": Preset("quick", (_pgd(10),), "PGD-10", (_search(4), _query(2, 16))),
    "standard": Preset(
        "standard",
        (_pgd(20), _apgd("ce", 50), _apgd("dlr", 50)),
        "PGD-20, APGD-CE-50, APGD-DLR-50 (margin if binary)",
        (_search(8, restarts=3), _query(4, 32)),
    ),
    "thorough": Preset(
        "thorough",
        (_pgd(50, restarts=5), _apgd("ce", 100), _apgd("dlr", 100), _square(1000)),
        "PGD-50 x 5 restarts, APGD-CE-100, APGD-DLR-100 (margin if binary), Square-like random search 1000 queries",
        (_search(32, restarts=5), _query(8, 64, restarts=2)),
    ),
}

#: What the gradient-masking checks add, once per evaluation (not per budget).
CHECKS_COST = (
    "checks add per example about 2 forward and 2 backward passes (gradients, FGSM), plus PGD-20 on up to "
    "256 examples at a budget covering the box and a 1000-query random search on up to 100 survivors"
)


def describe_presets() -> str:
    """A help text: one line per preset with its cost, then what the checks add.

    Example:
        >>> print(describe_presets().splitlines()[0])
        quick: PGD-10; at most 11 forward and 10 backward passes per example and budget
    """
    lines = [f"{p.name}: {p.cost}" for p in PRESETS.values()]
    discrete = "; ".join(
        f"{p.name} {s.options['candidates_per_step']} x {s.options['restarts']} restarts, "
        f"query {q.options['positions_per_step']} x {q.options['queries_per_position']}"
        for p in PRESETS.values() for s, q in [p.discrete]
    )
    search = (
        "over discrete spaces each preset is the gradient-guided search (candidates per edit x restarts) and "
        f"a black-box query search (positions x queries per position per edit), worst case per example: {discrete}; "
        "per edit the search costs 1 backward and 1 + candidates forward passes per example and restart, the "
        "query search about 2 per position of the text plus positions x queries forward passes"
    )
    return "\n".join([*lines, search, CHECKS_COST])
