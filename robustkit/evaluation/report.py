"""The result of :func:`robustkit.evaluate`: numbers, checks and verdict, as tables, plots, JSON and HTML.

Example:
    >>> from robustkit.evaluation.report import RobustnessReport
    >>> report = RobustnessReport.from_json({
    ...     "clean_accuracy": 0.9, "robust_accuracy": {"pgd": 0.5, "worst": 0.5},
    ...     "per_budget": [{"budget": 0.1, "attacks": {
    ...         "pgd": {"robust_accuracy": 0.5, "attack_success_rate": 0.44, "forward_passes": 2100,
    ...                 "backward_passes": 2000, "seconds": 0.3},
    ...         "worst": {"robust_accuracy": 0.5, "attack_success_rate": 0.44, "forward_passes": 2100,
    ...                   "backward_passes": 2000, "seconds": 0.3}}}],
    ...     "checks": [], "verdict": "robust at budget 0.1", "attacks": {"pgd": {"steps": 20}},
    ...     "threat": {"space": "linf", "budget": 0.1}, "n_examples": 100})
    >>> report.table[["attack", "budget", "robust_accuracy"]].values.tolist()
    [['pgd', 0.1, 0.5], ['worst', 0.1, 0.5]]
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import io
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robustkit.errors import DataError
from robustkit.evaluation.checks import Check, verdict
from robustkit.files import atomic_write_text
from robustkit.rendering import render

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["COLUMNS", "Headline", "RobustnessReport", "figure_text", "heading"]

#: Columns of :attr:`RobustnessReport.table`.
COLUMNS = ["attack", "budget", "robust_accuracy", "attack_success_rate", "forward_passes", "backward_passes", "seconds"]
_ENTRY_KEYS = COLUMNS[2:]
WORST = "worst"

#: words of a figure's name that make it a share of examples, shown as a percentage
_SHARES = {"accuracy", "recall", "precision", "f1", "fpr", "tpr", "rate", "share"}
_HEADINGS = {"fpr": "false-positive rate", "f1": "F1", "roc": "ROC", "auc": "AUC"}


def heading(name: str) -> str:
    """A figure's name as a person reads it: ``robust_accuracy`` -> ``robust accuracy``, ``fpr`` -> ``false-positive
    rate``.

    Example:
        >>> heading("fpr_clean"), heading("attack_success_rate")
        ('false-positive rate clean', 'attack success rate')
    """
    return " ".join(_HEADINGS.get(word, word) for word in name.split("_"))


def figure_text(name: str, value: Any) -> str:
    """A figure as reports show it: shares (accuracy, recall, rates ...) as percentages with one decimal,
    seconds with one decimal, budgets as given, counts whole, other numbers to 4 significant digits.

    Example:
        >>> figure_text("robust_accuracy", 0.83333), figure_text("seconds", 12.3456), figure_text("budget", 0.15)
        ('83.3%', '12.3', '0.15')
        >>> figure_text("forward_passes", 2100), figure_text("words_edited", 1.23456)
        ('2100', '1.235')
        >>> figure_text("forward_passes", float("nan")), figure_text("forward_passes", None)  # not counted
        ('-', '-')
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"  # a figure not measured (passes of an attack a domain ran itself)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if name == "budget":
        return f"{value:g}"
    if _SHARES & set(name.split("_")):
        return f"{100 * value:.1f}%"
    if name.endswith("passes"):
        return str(int(value))
    if name == "seconds" or name.endswith("_seconds"):
        return f"{value:.1f}"
    return str(value) if isinstance(value, int) else f"{value:.4g}"


@dataclass(frozen=True)
class Headline:
    """What a report leads with: the domain's measure, clean and under the worst case of every attack run.

    ``measure`` is "recall" where one class of a binary problem is attacked (fraud, spam: accuracy there
    is dominated by the untouched class) and "accuracy" otherwise; ``baseline`` is what a model without
    skill scores on it (recall: flagging at random at ``false_positive_rate``, the share of the other
    class flagged on this data; accuracy: guessing, 1/classes, or 0 where not applicable).

    Example:
        >>> Headline("recall", 0.984, 0.721, 0.01, 0.01).line
        'recall 98.4% clean, 72.1% under the worst attack (false-positive rate 1.0%)'
    """

    measure: str
    clean: float
    attacked: float
    baseline: float = 0.0
    false_positive_rate: float | None = None

    @property
    def line(self) -> str:
        """One line: the measure, clean and attacked, and the false-positive rate where it applies."""
        fpr = "" if self.false_positive_rate is None else f" (false-positive rate {self.false_positive_rate:.1%})"
        return f"{self.measure} {self.clean:.1%} clean, {self.attacked:.1%} under the worst attack{fpr}"

    def to_dict(self) -> dict[str, Any]:
        return {"measure": self.measure, "clean": self.clean, "attacked": self.attacked, "baseline": self.baseline,
                "false_positive_rate": self.false_positive_rate}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Headline:
        fpr = data.get("false_positive_rate")
        return cls(str(data["measure"]), float(data["clean"]), float(data["attacked"]),
                   float(data.get("baseline", 0.0)), None if fpr is None else float(fpr))

    def measured(self, outcomes: dict[str, torch.Tensor]) -> Headline:
        """The same measure and baseline, with the clean and attacked figures of ``outcomes``."""
        att = outcomes["attackable"].bool()
        clean, robust = outcomes["clean_correct"].bool(), outcomes["robust"].bool()
        if self.measure == "recall":
            fpr = _share(~clean[~att])
            return Headline("recall", _share(clean[att]), _share(robust[att]), fpr, fpr)
        return Headline("accuracy", _share(clean), _share(robust), self.baseline)

    @classmethod
    def from_outcomes(cls, outcomes: dict[str, torch.Tensor], n_classes: int) -> Headline:
        """The headline of per-example outcomes (``label``, ``attackable``, ``clean_correct``, ``robust``)."""
        att = outcomes["attackable"].bool()
        clean, robust = outcomes["clean_correct"].bool(), outcomes["robust"].bool()
        labels = outcomes["label"][att]
        one_class = n_classes == 2 and bool(att.any()) and not bool(att.all()) and bool((labels == labels[0]).all())
        if one_class:
            return cls("recall", 0.0, 0.0).measured(outcomes)
        chance = 1.0 / n_classes if bool(att.all()) and n_classes >= 2 else 0.0
        return cls("accuracy", _share(clean), _share(robust), chance)


def _share(flags: torch.Tensor) -> float:
    """The share of True in ``flags``, exactly as a count over a count (0 for none)."""
    return int(flags.sum()) / len(flags) if len(flags) else 0.0


def judge(checks: list[Check], budget: float, outcomes: dict[str, torch.Tensor], headline: Headline) -> str:
    """:func:`~robustkit.evaluation.checks.verdict` on the attackable examples of ``outcomes``."""
    att = outcomes["attackable"].bool()
    n_att = max(1, int(att.sum()))
    clean = int((outcomes["clean_correct"].bool() & att).sum()) / n_att
    worst = int((outcomes["robust"].bool() & att).sum()) / n_att
    return verdict(checks, budget, worst, clean, headline.baseline, headline.measure)


@dataclass
class RobustnessReport:
    """Clean and robust accuracy of one model under attack, per attack and budget, with the checks.

    Attributes:
        clean_accuracy: accuracy on the clean inputs, over all examples.
        robust_accuracy: attack name -> robust accuracy at the main budget, plus "worst" (an example
            counts as robust only if it survives every attack, the checks' attacks included).
        per_budget: one dict per budget, ascending: ``{"budget": b, "attacks": {name: {robust_accuracy,
            attack_success_rate, forward_passes, backward_passes, seconds, ...}}}`` ("worst" included).
        checks: the gradient-masking checks (see :mod:`robustkit.evaluation.checks`).
        verdict: "robust at budget B", "not robust" or "inconclusive: <failed check>".
        attacks: attack name -> its settings at the main budget.
        threat: ``{"space": name, "budget": main budget}``.
        n_examples: examples evaluated; n_attackable: those the mask let be attacked.
        clean_accuracy_attackable: clean accuracy among the attackable examples.
        seconds: wall time of the whole evaluation.
        headline: what the report leads with (:class:`Headline`): recall of the attacked class at the
            model's decision for binary problems where one class is attacked, else accuracy.
        outcomes: per example, in data order, at the main budget: ``label``, ``attackable``,
            ``clean_correct`` and ``robust`` (correct and unbroken by every attack, the worst case);
            for per-class or per-segment figures. Not written to JSON.
    """

    clean_accuracy: float
    robust_accuracy: dict[str, float]
    per_budget: list[dict[str, Any]]
    checks: list[Check]
    verdict: str
    attacks: dict[str, dict[str, Any]]
    threat: dict[str, Any]
    n_examples: int
    n_attackable: int | None = None
    clean_accuracy_attackable: float | None = None
    seconds: float = 0.0
    headline: Headline | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    outcomes: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.headline is None:  # a report built by hand or read from an older file: accuracy
            self.headline = Headline("accuracy", self.clean_accuracy, self.robust_accuracy.get(WORST, 0.0))

    @property
    def lead(self) -> Headline:
        """:attr:`headline`, never None."""
        assert self.headline is not None
        return self.headline

    def with_attack(self, label: str, survived: torch.Tensor, seconds: float = 0.0) -> RobustnessReport:
        """This report with one more attack run at the main budget outside :func:`~robustkit.evaluate` (a
        domain's own search): ``survived`` says per example, in data order, whether it withstood that
        attack. The worst case, the headline and the verdict take it in, so nothing printed or written
        from the report can show a figure weaker than every attack that was run.

        Example:
            >>> import torch
            >>> from robustkit.evaluation.report import RobustnessReport
            >>> r = RobustnessReport(0.75, {"pgd": 0.75, "worst": 0.75}, [{"budget": 0.1, "attacks": {
            ...     "pgd": {"robust_accuracy": 0.75}, "worst": {"robust_accuracy": 0.75}}}], [], "", {},
            ...     {"budget": 0.1}, 4, outcomes={"label": torch.tensor([1, 1, 0, 0]),
            ...     "attackable": torch.tensor([True, True, True, True]),
            ...     "clean_correct": torch.tensor([True, True, True, False]),
            ...     "robust": torch.tensor([True, True, True, False])})
            >>> r2 = r.with_attack("search", torch.tensor([True, False, True, True]))
            >>> r2.robust_accuracy, r2.verdict
            ({'pgd': 0.75, 'search': 0.5, 'worst': 0.5}, 'partly robust at budget 0.1: keeps 67% of clean accuracy')
        """
        import torch

        if not self.outcomes:
            raise DataError("this report holds no per-example outcomes (read from JSON?): run evaluate again")
        n = len(self.outcomes["robust"])
        survived = torch.as_tensor(survived, dtype=torch.bool).cpu()
        if survived.shape != (n,):
            raise DataError(f"survived must be one bool per example ({n}), got shape {tuple(survived.shape)}")
        outcomes = dict(self.outcomes)
        att, clean = outcomes["attackable"].bool(), outcomes["clean_correct"].bool()
        alone = clean & (survived | ~att)
        outcomes["robust"] = outcomes["robust"].bool() & alone
        accuracy = dict(self.robust_accuracy)
        accuracy.pop(WORST, None)
        accuracy[label] = _share(alone)
        accuracy[WORST] = _share(outcomes["robust"])  # it holds the checks' attacks too
        n_att = max(1, int(att.sum()))
        detected = max(1, int((clean & att).sum()))
        per_budget = copy.deepcopy(self.per_budget)
        for p in per_budget:
            if float(p["budget"]) == self.budget:
                entries = p["attacks"]
                last = entries.pop(WORST, {})
                entries[label] = {"robust_accuracy": accuracy[label],
                                  "attack_success_rate": int((clean & att & ~survived).sum()) / detected,
                                  "forward_passes": None, "backward_passes": None, "seconds": seconds,
                                  "robust_accuracy_attackable": int((clean & att & survived).sum()) / n_att}
                entries[WORST] = {**last, "robust_accuracy": accuracy[WORST],
                                  "robust_accuracy_attackable": int((outcomes["robust"] & att).sum()) / n_att}
        headline = self.lead.measured(outcomes)
        return dataclasses.replace(
            self, robust_accuracy=accuracy, per_budget=per_budget, headline=headline, outcomes=outcomes,
            attacks={**self.attacks, label: {"run": "by the domain"}},
            verdict=judge(self.checks, self.budget, outcomes, headline),
        )

    # ------------------------------------------------------------------ views
    @property
    def budget(self) -> float:
        """The main budget, at which :attr:`robust_accuracy` and the verdict are given."""
        return float(self.threat["budget"])

    @property
    def budgets(self) -> list[float]:
        """Every budget evaluated, ascending."""
        return [float(p["budget"]) for p in self.per_budget]

    @property
    def per_eps(self) -> list[dict[str, Any]]:
        """Deprecated (removed in robustkit 0.3): :attr:`per_budget` in the first version's form, each
        budget under ``"eps"``."""
        warnings.warn("RobustnessReport.per_eps is deprecated and will be removed in robustkit 0.3: use "
                      "per_budget (each budget under 'budget')", DeprecationWarning, stacklevel=2)
        return [{"eps": p["budget"], **{k: v for k, v in p.items() if k != "budget"}} for p in self.per_budget]

    @property
    def attack_names(self) -> list[str]:
        """Names of the attacks in table order, "worst" last."""
        names: list[str] = []
        for p in self.per_budget:
            names += [a for a in p["attacks"] if a not in names and a != WORST]
        return [*names, WORST]

    def _rows(self) -> list[dict[str, Any]]:
        rows = []
        for name in self.attack_names:
            for p in self.per_budget:
                entry = p["attacks"].get(name)
                if entry is not None:
                    rows.append({"attack": name, "budget": float(p["budget"]),
                                 **{k: entry.get(k) for k in _ENTRY_KEYS}})
        return rows

    @property
    def table(self) -> pd.DataFrame:
        """pandas DataFrame, one row per (attack, budget), "worst" rows last, with :data:`COLUMNS`."""
        import pandas as pd

        return pd.DataFrame(self._rows(), columns=COLUMNS)

    @property
    def failed_checks(self) -> list[Check]:
        """The checks that failed."""
        return [c for c in self.checks if c.passed is False]

    def __repr__(self) -> str:
        return (
            f"RobustnessReport(verdict={self.verdict!r}, clean_accuracy={self.clean_accuracy:.4f}, "
            f"robust_accuracy={{{', '.join(f'{k!r}: {v:.4f}' for k, v in self.robust_accuracy.items())}}}, "
            f"n_examples={self.n_examples})"
        )

    # ------------------------------------------------------------------ plot
    def plot(self, ax: Axes | None = None) -> Figure:
        """matplotlib Figure of the headline measure (robust accuracy, or recall of the attacked class) vs
        budget per attack, the worst case in bold.

        Draws on ``ax`` when given (and returns its figure); otherwise builds a new Figure without
        pyplot, so no global state is touched and it works under any backend.
        """
        from matplotlib.figure import Figure

        if ax is None:
            fig = Figure(figsize=(6.0, 4.0), layout="constrained")
            ax = fig.add_subplot()
        else:
            parent: Any = ax.figure
            while not isinstance(parent, Figure):  # a SubFigure: climb to the Figure holding it
                parent = parent.figure
            fig = parent
        budgets = self.budgets
        lead = self.lead
        # recall is the robust accuracy of the attacked class: the figure the headline gives
        key = "robust_accuracy_attackable" if lead.measure == "recall" else "robust_accuracy"
        for name in self.attack_names:
            points = [
                (e, p["attacks"][name].get(key, p["attacks"][name]["robust_accuracy"]))
                for e, p in zip(budgets, self.per_budget, strict=True)
                if name in p["attacks"]
            ]
            xs, ys = [pt[0] for pt in points], [pt[1] for pt in points]
            if name == WORST:
                ax.plot(xs, ys, color="black", linewidth=2.5, marker="o", label="worst case", zorder=3)
            else:
                ax.plot(xs, ys, marker="o", linewidth=1.2, alpha=0.85, label=name)
        ax.axhline(lead.clean, color="grey", linestyle=":", linewidth=1, label="clean")
        ax.axvline(self.budget, color="grey", linestyle="--", linewidth=0.8)
        if budgets and all(float(e).is_integer() for e in budgets):  # words edited, cost units: no 1.5-word ticks
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(f"budget ({self.threat.get('space', 'space')})")
        ax.set_ylabel("recall of the attacked class under attack" if lead.measure == "recall" else "robust accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(self.verdict)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
        return fig

    def _png_base64(self) -> str:
        buf = io.BytesIO()
        self.plot().savefig(buf, format="png", dpi=100)
        return base64.b64encode(buf.getvalue()).decode("ascii")

    # ------------------------------------------------------------------ JSON
    def to_json(self, path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
        """The report as a JSON-ready dict; with ``path``, also written there atomically.

        Keys: clean_accuracy, robust_accuracy, per_budget, checks (list of {name, passed, detail}),
        verdict, attacks, threat, n_examples, plus n_attackable, clean_accuracy_attackable, seconds.
        """
        data: dict[str, Any] = {
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": dict(self.robust_accuracy),
            "per_budget": self.per_budget,
            "checks": [c.to_dict() for c in self.checks],
            "verdict": self.verdict,
            "attacks": self.attacks,
            "threat": dict(self.threat),
            "n_examples": self.n_examples,
            "n_attackable": self.n_attackable,
            "clean_accuracy_attackable": self.clean_accuracy_attackable,
            "seconds": self.seconds,
            "headline": self.lead.to_dict(),
            **self.extra,
        }
        data = json.loads(json.dumps(data, allow_nan=False, default=_jsonable))
        if path is not None:
            atomic_write_text(Path(path), json.dumps(data, indent=2) + "\n")
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any] | str | os.PathLike[str]) -> RobustnessReport:
        """Read a report back from :meth:`to_json`'s dict (or the path of a file it wrote); a file of the first
        version (``per_eps``, each budget under ``"eps"``) reads the same."""
        if not isinstance(data, dict):
            try:
                data = json.loads(Path(data).read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise DataError(f"cannot read a report from {data!s}: {exc}") from None
            if not isinstance(data, dict):
                raise DataError("a report file must hold a JSON object")
        data = copy.deepcopy(data)
        if "per_eps" in data and "per_budget" not in data:
            data["per_budget"] = [{"budget": p.pop("eps"), **p} if isinstance(p, dict) and "eps" in p else p
                                  for p in data.pop("per_eps")]
        if isinstance(data.get("threat"), dict):
            data["threat"].pop("eps", None)  # the first version repeated the main budget there
        required = ["clean_accuracy", "robust_accuracy", "per_budget", "verdict", "threat", "n_examples"]
        missing = [k for k in required if k not in data]
        if missing:
            raise DataError(f"not a robustkit report: missing keys {missing}")
        known = {*required, "checks", "attacks", "n_attackable", "clean_accuracy_attackable", "seconds", "headline"}
        return cls(
            clean_accuracy=float(data["clean_accuracy"]),
            robust_accuracy={str(k): float(v) for k, v in data["robust_accuracy"].items()},
            per_budget=[dict(p) for p in data["per_budget"]],
            checks=[Check.from_dict(c) for c in data.get("checks", [])],
            verdict=str(data["verdict"]),
            attacks={str(k): dict(v) for k, v in data.get("attacks", {}).items()},
            threat=dict(data["threat"]),
            n_examples=int(data["n_examples"]),
            n_attackable=None if data.get("n_attackable") is None else int(data["n_attackable"]),
            clean_accuracy_attackable=None
            if data.get("clean_accuracy_attackable") is None
            else float(data["clean_accuracy_attackable"]),
            seconds=float(data.get("seconds", 0.0)),
            headline=Headline.from_dict(data["headline"]) if isinstance(data.get("headline"), dict) else None,
            extra={k: v for k, v in data.items() if k not in known},
        )

    # ------------------------------------------------------------------ text
    def _summary(self) -> list[tuple[str, str]]:
        lead = self.lead
        items = [
            (lead.measure, lead.line),
            ("verdict", self.verdict),
            ("threat", f"{self.threat.get('space', '?')}, budget {self.budget:g}"),
            (
                "examples",
                f"{self.n_examples}" + ("" if self.n_attackable is None else f" ({self.n_attackable} attackable)"),
            ),
            ("clean accuracy", figure_text("clean_accuracy", self.clean_accuracy)),
        ]
        items += [(f"robust accuracy ({name})", figure_text("robust_accuracy", acc))
                  for name, acc in self.robust_accuracy.items()]
        items.append(("seconds", f"{self.seconds:.1f}"))
        return items

    @staticmethod
    def _cells(row: dict[str, Any]) -> list[str]:
        return [figure_text(c, row[c]) for c in COLUMNS]

    def to_markdown(self) -> str:
        """The report as Markdown: summary, table of results, checks and attack settings."""
        lines = ["# Robustness report", ""]
        lines += [f"- **{k}**: {v}" for k, v in self._summary()]
        lines += ["", "## Results", "", "| " + " | ".join(map(heading, COLUMNS)) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(self._cells(r)) + " |" for r in self._rows()]
        lines += ["", "## Gradient-masking checks", ""]
        lines += [f"- {c.line}" for c in self.checks] or ["- (checks were not run)"]
        lines += ["", "## Attacks", ""]
        lines += [f"- **{k}**: {_settings(v)}" for k, v in self.attacks.items()]
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------ HTML
    def _html(self, layout: str) -> str:
        rows = [(self._cells(row), row["attack"] == WORST) for row in self._rows()]
        return render("evaluation.html.j2", layout=layout, verdict=self.verdict, summary=self._summary(),
                      plot=self._png_base64(), head=[heading(c) for c in COLUMNS], rows=rows, checks=self.checks,
                      attacks=[(k, _settings(v)) for k, v in self.attacks.items()])

    def to_html(self, path: str | os.PathLike[str] | None = None) -> str:
        """One self-contained HTML page (plot embedded as a base64 PNG); with ``path``, also written there."""
        page = self._html("page.html.j2")
        if path is not None:
            atomic_write_text(Path(path), page)
        return page

    def _repr_html_(self) -> str:
        """The same report in a notebook cell: one ``div`` whose styles apply inside it only."""
        return self._html("fragment.html.j2")


def _settings(config: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in config.items())


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, tuple | set):
        return list(obj)
    return str(obj)


