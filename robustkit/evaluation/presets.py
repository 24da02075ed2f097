"""Named attack suites for :func:`robustkit.evaluate` and the names of single attacks.

A preset is a list of attacks with their settings and a rough cost, so that a command line can
print what ``--preset standard`` will spend before it runs. Costs are per example and per budget,
upper bounds (attacks stop early on examples they have already broken).

Example:
    >>> from robustkit.evaluation.presets import PRESETS
    >>> [spec.label for spec in PRESETS["standard"].attacks_for(n_classes=10)]
    ['pgd', 'apgd-ce', 'apgd-dlr']
    >>> [spec.label for spec in PRESETS["standard"].attacks_for(n_classes=2)]
    ['pgd', 'apgd-ce', 'apgd-margin']
    >>> [spec.label for spec in PRESETS["autoattack"].attacks_for(n_classes=10)]
    ['apgd-ce', 'apgd-t', 'fab-t', 'square']
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from robustkit.attacks.apgd import APGD
from robustkit.attacks.base import Attack
from robustkit.attacks.fab import FAB
from robustkit.attacks.pgd import FGSM, PGD
from robustkit.attacks.random_search import RandomSearch
from robustkit.attacks.search import DiscreteSearch, QuerySearch
from robustkit.attacks.square import Square
from robustkit.errors import ConfigError
from robustkit.spaces import PerturbationSpace

__all__ = ["ATTACKS", "CONTINUOUS_ONLY", "PRESETS", "AttackSpec", "Preset", "describe_presets"]


@dataclass(frozen=True)
class AttackSpec:
    """One attack by name: a report label, the attack kind and its settings.

    Args:
        label: the name it has in reports ("pgd", "apgd-ce", "apgd-t", "fab-t", "square", ...).
        kind: "fgsm", "pgd", "apgd", "fab", "square" (Square Attack), "random-search" (a gradient-free
            search over any continuous input), or over discrete spaces "search" (gradient-guided) or
            "query" (black-box, ranking positions by queries).
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
            "fab": FAB,
            "square": Square,
            "random-search": RandomSearch,
            "search": DiscreteSearch,
            "query": QuerySearch,
        }
        if self.kind not in classes:
            raise ConfigError(f"unknown attack kind {self.kind!r}: use one of {sorted(classes)}")
        return classes[self.kind](space, seed=seed, **self.options)


def _pgd(steps: int, restarts: int = 1) -> AttackSpec:
    return AttackSpec("pgd", "pgd", {"steps": steps, "restarts": restarts}, (steps + 1) * restarts, steps * restarts)


def _apgd(loss: str, steps: int, eot: int = 1) -> AttackSpec:
    return AttackSpec(f"apgd-{loss}", "apgd", {"steps": steps, "loss": loss, "eot": eot}, (steps + 1) * eot,
                      steps * eot)


def _random_search(queries: int) -> AttackSpec:
    return AttackSpec("random-search", "random-search", {"queries": queries}, queries + 1, 0)


#: AutoAttack's standard attacks with the reference's settings (Croce and Hein 2020): the targeted
#: ones try each example's 9 most likely other classes; one clean pass per targeted attack ranks them.
_APGD_T = AttackSpec("apgd-t", "apgd", {"steps": 100, "loss": "dlr", "targeted": 9}, 1 + 9 * 101, 9 * 100)
_FAB_T = AttackSpec("fab-t", "fab", {"steps": 100, "targeted": 9}, 1 + 9 * 201, 9 * 100)
_SQUARE = AttackSpec("square", "square", {"queries": 5000, "p_init": 0.8}, 5001, 0)


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
    "apgd-t": _APGD_T,
    "fab-t": _FAB_T,
    "square": _SQUARE,
    "random-search": _random_search(1000),
    "search": AttackSpec("search", "search", {"candidates_per_step": 8}),
    "query-search": _query(4, 32),
}

#: Names of :data:`ATTACKS` that need a continuous space (all but the discrete searches).
CONTINUOUS_ONLY = frozenset(name for name, spec in ATTACKS.items() if spec.kind not in ("search", "query"))


@dataclass(frozen=True)
class Preset:
    """A named attack suite. DLR attacks become margin attacks on binary models (DLR needs 3 classes).

    ``discrete`` is the suite used over a discrete space: the gradient-guided search (with restarts
    over other samples of the space's candidates and random-greedy moves), then a black-box query search
    on the examples it left, and the worst case per example. With ``cascade`` (always over a discrete
    space) each attack runs only on the examples no earlier attack broke (AutoAttack's per-example early
    exit), and the report's row of an attack gives the robust accuracy after it and every attack before
    it, as the reference's log does; its settings name those attacks (``runs_after``).
    """

    name: str
    attacks: tuple[AttackSpec, ...]
    description: str
    discrete: tuple[AttackSpec, ...] = ()
    cascade: bool = False
    min_classes: int = 2

    def attacks_for(self, n_classes: int, discrete: bool = False) -> list[AttackSpec]:
        """The suite for a model with ``n_classes`` outputs (over a discrete space if ``discrete``)."""
        if discrete:
            if not self.discrete:
                raise ConfigError(f"preset {self.name!r} attacks continuous inputs only: use 'standard' over a "
                                  "discrete space")
            return list(self.discrete)
        if n_classes < self.min_classes:
            raise ConfigError(f"preset {self.name!r} needs {self.min_classes}+ classes (its targeted DLR loss), the "
                              f"model has {n_classes}: use 'standard' or 'thorough'")
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
        (_pgd(50, restarts=5), _apgd("ce", 100), _apgd("dlr", 100), _random_search(1000)),
        "PGD-50 x 5 restarts, APGD-CE-100, APGD-DLR-100 (margin if binary), random search 1000 queries",
        (_search(32, restarts=5), _query(8, 64, restarts=2)),
    ),
    "autoattack": Preset(
        "autoattack",
        (_apgd("ce", 100), _APGD_T, _FAB_T, _SQUARE),
        "AutoAttack standard: APGD-CE-100, APGD-T-100 (9 targets), FAB-T-100 (9 targets), Square 5000 queries, "
        "each on the examples still robust",
        cascade=True,
        min_classes=4,
    ),
    "aa-rand": Preset(
        "aa-rand",
        (_apgd("ce", 100, eot=20), _apgd("dlr", 100, eot=20)),
        "AutoAttack rand (randomised defences): APGD-CE-100 and APGD-DLR-100 with 20 EOT samples per step, "
        "each on the examples still robust",
        cascade=True,
        min_classes=3,
    ),
}
#: AutoAttack's own name for its standard version.
PRESETS["aa-standard"] = PRESETS["autoattack"]

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
    lines = [f"{name}: {p.cost}" if name == p.name else f"{name}: the same as {p.name}" for name, p in PRESETS.items()]
    discrete = "; ".join(
        f"{p.name} {s.options['candidates_per_step']} x {s.options['restarts']} restarts, "
        f"query {q.options['positions_per_step']} x {q.options['queries_per_position']}"
        for p in PRESETS.values() if len(p.discrete) == 2 for s, q in [p.discrete]
    )
    search = (
        "over discrete spaces each preset is the gradient-guided search (candidates per edit x restarts), then "
        "a black-box query search (positions x queries per position per edit) on the examples it left, worst case "
        f"per example: {discrete}; "
        "per edit the search costs 1 backward and 1 + candidates forward passes per example and restart, the "
        "query search about 2 per position of the text plus positions x queries forward passes"
    )
    return "\n".join([*lines, search, CHECKS_COST])
