"""The result of :func:`robustkit.evaluate`: numbers, checks and verdict, as tables, plots, JSON and HTML.

Example:
    >>> from robustkit.evaluation.report import RobustnessReport
    >>> report = RobustnessReport.from_json({
    ...     "clean_accuracy": 0.9, "robust_accuracy": {"pgd": 0.5, "worst": 0.5},
    ...     "per_eps": [{"eps": 0.1, "attacks": {
    ...         "pgd": {"robust_accuracy": 0.5, "attack_success_rate": 0.44, "forward_passes": 2100,
    ...                 "backward_passes": 2000, "seconds": 0.3},
    ...         "worst": {"robust_accuracy": 0.5, "attack_success_rate": 0.44, "forward_passes": 2100,
    ...                   "backward_passes": 2000, "seconds": 0.3}}}],
    ...     "checks": [], "verdict": "robust at budget 0.1", "attacks": {"pgd": {"steps": 20}},
    ...     "threat": {"space": "linf", "budget": 0.1}, "n_examples": 100})
    >>> report.table[["attack", "eps", "robust_accuracy"]].values.tolist()
    [['pgd', 0.1, 0.5], ['worst', 0.1, 0.5]]
"""

from __future__ import annotations

import base64
import copy
import html
import io
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robustkit.errors import DataError
from robustkit.evaluation.checks import Check

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["COLUMNS", "RobustnessReport", "figure_text", "heading"]

#: Columns of :attr:`RobustnessReport.table`.
COLUMNS = ["attack", "eps", "robust_accuracy", "attack_success_rate", "forward_passes", "backward_passes", "seconds"]
_ENTRY_KEYS = COLUMNS[2:]
WORST = "worst"

#: words of a figure's name that make it a share of examples, shown as a percentage
_SHARES = {"accuracy", "recall", "precision", "f1", "fpr", "tpr", "rate", "share"}
_HEADINGS = {"eps": "budget", "fpr": "false-positive rate", "f1": "F1", "roc": "ROC", "auc": "AUC"}


def heading(name: str) -> str:
    """A figure's name as a person reads it: ``robust_accuracy`` -> ``robust accuracy``, ``eps`` -> ``budget``.

    Example:
        >>> heading("fpr_clean"), heading("attack_success_rate")
        ('false-positive rate clean', 'attack success rate')
    """
    return " ".join(_HEADINGS.get(word, word) for word in name.split("_"))


def figure_text(name: str, value: Any) -> str:
    """A figure as reports show it: shares (accuracy, recall, rates ...) as percentages with one decimal,
    seconds with one decimal, budgets as given, counts whole, other numbers to 4 significant digits.

    Example:
        >>> figure_text("robust_accuracy", 0.83333), figure_text("seconds", 12.3456), figure_text("eps", 0.15)
        ('83.3%', '12.3', '0.15')
        >>> figure_text("forward_passes", 2100), figure_text("words_edited", 1.23456)
        ('2100', '1.235')
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if name == "eps":
        return f"{value:g}"
    if _SHARES & set(name.split("_")):
        return f"{100 * value:.1f}%"
    if name.endswith("passes"):
        return str(int(value))
    if name == "seconds" or name.endswith("_seconds"):
        return f"{value:.1f}"
    return str(value) if isinstance(value, int) else f"{value:.4g}"


@dataclass
class RobustnessReport:
    """Clean and robust accuracy of one model under attack, per attack and budget, with the checks.

    Attributes:
        clean_accuracy: accuracy on the clean inputs, over all examples.
        robust_accuracy: attack name -> robust accuracy at the main budget, plus "worst" (an example
            counts as robust only if it survives every attack, the checks' attacks included).
        per_eps: one dict per budget, ascending: ``{"eps": e, "attacks": {name: {robust_accuracy,
            attack_success_rate, forward_passes, backward_passes, seconds, ...}}}`` ("worst" included).
        checks: the gradient-masking checks (see :mod:`robustkit.evaluation.checks`).
        verdict: "robust at budget B", "not robust" or "inconclusive: <failed check>".
        attacks: attack name -> its settings at the main budget.
        threat: ``{"space": name, "budget": main budget, "eps": main budget}``.
        n_examples: examples evaluated; n_attackable: those the mask let be attacked.
        clean_accuracy_attackable: clean accuracy among the attackable examples.
        seconds: wall time of the whole evaluation.
        outcomes: per example, in data order, at the main budget: ``label``, ``attackable``,
            ``clean_correct`` and ``robust`` (correct and unbroken by every attack, the worst case);
            for per-class or per-segment figures. Not written to JSON.
    """

    clean_accuracy: float
    robust_accuracy: dict[str, float]
    per_eps: list[dict[str, Any]]
    checks: list[Check]
    verdict: str
    attacks: dict[str, dict[str, Any]]
    threat: dict[str, Any]
    n_examples: int
    n_attackable: int | None = None
    clean_accuracy_attackable: float | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    outcomes: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

    # ------------------------------------------------------------------ views
    @property
    def budget(self) -> float:
        """The main budget, at which :attr:`robust_accuracy` and the verdict are given."""
        return float(self.threat["budget"])

    @property
    def budgets(self) -> list[float]:
        """Every budget evaluated, ascending."""
        return [float(p["eps"]) for p in self.per_eps]

    @property
    def attack_names(self) -> list[str]:
        """Names of the attacks in table order, "worst" last."""
        names: list[str] = []
        for p in self.per_eps:
            names += [a for a in p["attacks"] if a not in names and a != WORST]
        return [*names, WORST]

    def _rows(self) -> list[dict[str, Any]]:
        rows = []
        for name in self.attack_names:
            for p in self.per_eps:
                entry = p["attacks"].get(name)
                if entry is not None:
                    rows.append({"attack": name, "eps": float(p["eps"]), **{k: entry.get(k) for k in _ENTRY_KEYS}})
        return rows

    @property
    def table(self) -> pd.DataFrame:
        """pandas DataFrame, one row per (attack, eps), "worst" rows last, with :data:`COLUMNS`."""
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
        """matplotlib Figure of robust accuracy vs eps per attack, the worst case in bold.

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
        eps = self.budgets
        for name in self.attack_names:
            points = [
                (e, p["attacks"][name]["robust_accuracy"])
                for e, p in zip(eps, self.per_eps, strict=True)
                if name in p["attacks"]
            ]
            xs, ys = [pt[0] for pt in points], [pt[1] for pt in points]
            if name == WORST:
                ax.plot(xs, ys, color="black", linewidth=2.5, marker="o", label="worst case", zorder=3)
            else:
                ax.plot(xs, ys, marker="o", linewidth=1.2, alpha=0.85, label=name)
        ax.axhline(self.clean_accuracy, color="grey", linestyle=":", linewidth=1, label="clean")
        ax.axvline(self.budget, color="grey", linestyle="--", linewidth=0.8)
        if eps and all(float(e).is_integer() for e in eps):  # words edited, cost units: no 1.5-word ticks
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(f"budget eps ({self.threat.get('space', 'space')})")
        ax.set_ylabel("robust accuracy")
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

        Keys: clean_accuracy, robust_accuracy, per_eps, checks (list of {name, passed, detail}),
        verdict, attacks, threat, n_examples, plus n_attackable, clean_accuracy_attackable, seconds.
        """
        data: dict[str, Any] = {
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": dict(self.robust_accuracy),
            "per_eps": self.per_eps,
            "checks": [c.to_dict() for c in self.checks],
            "verdict": self.verdict,
            "attacks": self.attacks,
            "threat": dict(self.threat),
            "n_examples": self.n_examples,
            "n_attackable": self.n_attackable,
            "clean_accuracy_attackable": self.clean_accuracy_attackable,
            "seconds": self.seconds,
            **self.extra,
        }
        data = json.loads(json.dumps(data, allow_nan=False, default=_jsonable))
        if path is not None:
            _write_atomic(Path(path), json.dumps(data, indent=2) + "\n")
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any] | str | os.PathLike[str]) -> RobustnessReport:
        """Read a report back from :meth:`to_json`'s dict (or the path of a file it wrote)."""
        if not isinstance(data, dict):
            try:
                data = json.loads(Path(data).read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise DataError(f"cannot read a report from {data!s}: {exc}") from None
            if not isinstance(data, dict):
                raise DataError("a report file must hold a JSON object")
        data = copy.deepcopy(data)
        required = ["clean_accuracy", "robust_accuracy", "per_eps", "verdict", "threat", "n_examples"]
        missing = [k for k in required if k not in data]
        if missing:
            raise DataError(f"not a robustkit report: missing keys {missing}")
        known = {*required, "checks", "attacks", "n_attackable", "clean_accuracy_attackable", "seconds"}
        return cls(
            clean_accuracy=float(data["clean_accuracy"]),
            robust_accuracy={str(k): float(v) for k, v in data["robust_accuracy"].items()},
            per_eps=[dict(p) for p in data["per_eps"]],
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
            extra={k: v for k, v in data.items() if k not in known},
        )

    # ------------------------------------------------------------------ text
    def _summary(self) -> list[tuple[str, str]]:
        items = [
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
    def _html_body(self) -> str:
        esc = html.escape
        parts = [f'<h1>Robustness report</h1><p class="verdict">{esc(self.verdict)}</p><table class="summary">']
        parts += [f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in self._summary()]
        parts.append("</table>")
        parts.append(
            f'<h2>Robust accuracy vs budget</h2><img src="data:image/png;base64,{self._png_base64()}" '
            'alt="robust accuracy vs eps">'
        )
        parts.append("<h2>Results</h2><table><tr>" + "".join(f"<th>{esc(heading(c))}</th>" for c in COLUMNS) + "</tr>")
        for row in self._rows():
            cls = ' class="worst"' if row["attack"] == WORST else ""
            parts.append(f"<tr{cls}>" + "".join(f"<td>{esc(c)}</td>" for c in self._cells(row)) + "</tr>")
        parts.append("</table><h2>Gradient-masking checks</h2><ul>")
        for c in self.checks:
            cls = {True: "pass", False: "fail", None: "na"}[c.passed]
            parts.append(
                f'<li class="{cls}"><b>{esc(c.status)}</b>: {esc(c.name)}<br><small>{esc(c.detail)}</small></li>'
            )
        if not self.checks:
            parts.append("<li>checks were not run</li>")
        parts.append("</ul><h2>Attacks</h2><ul>")
        parts += [f"<li><b>{esc(k)}</b>: {esc(_settings(v))}</li>" for k, v in self.attacks.items()]
        parts.append("</ul>")
        return "\n".join(parts)

    def to_html(self, path: str | os.PathLike[str] | None = None) -> str:
        """One self-contained HTML page (plot embedded as a base64 PNG); with ``path``, also written there."""
        page = (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>robustkit report</title>'
            f"<style>{_CSS}</style></head><body>\n{self._html_body()}\n</body></html>\n"
        )
        if path is not None:
            _write_atomic(Path(path), page)
        return page

    def _repr_html_(self) -> str:
        return f"<div><style>{_CSS}</style>{self._html_body()}</div>"


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}"
    "th{background:#f3f3f3}.summary th,.summary td{text-align:left}tr.worst{font-weight:bold}"
    ".verdict{font-size:1.3em;font-weight:bold}li.pass b{color:#2a7a2a}li.fail b{color:#b00}li.na b{color:#777}"
    "img{max-width:100%}"
)


def _settings(config: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in config.items())


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, tuple | set):
        return list(obj)
    return str(obj)


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as f:  # "x": a fresh file, permissions from the umask
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
