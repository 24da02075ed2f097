"""``report.md`` and ``report.html`` of a run directory: what a person looks at after a run.

The HTML page is one self-contained file: plots (robust accuracy vs budget for every model, the
training history, per-class or per-segment bars) and any PNG the domain wrote to ``examples/`` are
embedded as base64 images; the domain's own view of its examples (a table of changed cells, text pairs
with the edits highlighted) comes in as an HTML fragment (:meth:`robustkit.Domain.examples_html`).
The page is rendered from ``robustkit/templates/run_report.html.j2`` (:mod:`robustkit.rendering`).
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from robustkit.evaluation import RobustnessReport
from robustkit.evaluation.report import figure_text, heading
from robustkit.files import atomic_write_text
from robustkit.rendering import render

__all__ = ["breakdown_figure", "budget_figure", "describe_plan", "history_figure", "write_reports"]

#: font size of every chart's text, in points: the charts are drawn at 100 dpi at most 9 inches wide,
#: so the page (at most 64em) shows them at full size and this reads like the page's own text
FONT = 10
#: widest chart, inches
MAX_WIDTH = 9.0


def _style(ax: Any) -> None:
    ax.tick_params(labelsize=FONT)
    ax.xaxis.label.set_size(FONT + 1)
    ax.yaxis.label.set_size(FONT + 1)
    ax.title.set_size(FONT + 1)


def _whole_budgets(ax: Any, budgets: list[float]) -> None:
    """Whole-number ticks where every budget is whole (words edited, cost units): no 1.5-word ticks."""
    if budgets and all(float(b).is_integer() for b in budgets):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def budget_figure(reports: dict[str, RobustnessReport]) -> Figure:
    """The headline measure under attack vs budget (robust accuracy, or the recall of the attacked class):
    the worst case of every model (solid) and each attack (dotted)."""
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    measure = next(iter(reports.values())).lead.measure
    key = "robust_accuracy_attackable" if measure == "recall" else "robust_accuracy"
    for i, (name, rep) in enumerate(reports.items()):
        colour = f"C{i}"
        for attack in rep.attack_names:
            points = [(float(p["budget"]), p["attacks"][attack].get(key, p["attacks"][attack]["robust_accuracy"]))
                      for p in rep.per_budget if attack in p["attacks"]]
            worst = attack == "worst"
            ax.plot([e for e, _ in points], [v for _, v in points], color=colour, linestyle="-" if worst else ":",
                    marker="o" if worst else None, linewidth=2 if worst else 1,
                    label=f"{name}: worst case" if worst else f"{name}: {attack}")
        ax.axhline(rep.lead.clean, color=colour, linestyle="--", linewidth=0.8)
    ax.set_xlabel(f"budget ({next(iter(reports.values())).threat.get('space', '')})")
    ax.set_ylabel(measure)
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{measure.capitalize()} under attack vs budget (dashed: clean)")
    ax.legend(fontsize=FONT - 1, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: it covers no line
    ax.grid(alpha=0.3)
    _whole_budgets(ax, [e for rep in reports.values() for e in rep.budgets])
    _style(ax)
    return fig


def history_figure(history: pd.DataFrame) -> Figure:
    """Per-epoch training loss and validation accuracy (clean and robust) of every model."""
    fig = Figure(figsize=(9.0, 3.4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    for i, (name, rows) in enumerate(history.groupby("model", sort=False)):
        colour = f"C{i}"
        ax_loss.plot(rows["epoch"], rows["train_loss"], color=colour, marker="o", label=str(name))
        if "val_clean_accuracy" in rows:
            ax_acc.plot(rows["epoch"], rows["val_clean_accuracy"], color=colour, linestyle="--", label=f"{name}: clean")
        if "val_robust_accuracy" in rows:
            ax_acc.plot(rows["epoch"], rows["val_robust_accuracy"], color=colour, marker="o", label=f"{name}: robust")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss")
    ax_loss.legend(fontsize=FONT - 1)
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("validation accuracy")
    ax_acc.set_ylim(0, 1.02)
    ax_acc.legend(fontsize=FONT - 1, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _style(ax)
    fig.suptitle("Training history", fontsize=FONT + 2)
    return fig


def _breakdowns(metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Every ``domain_metrics`` entry named ``..._per_GROUP`` (``_per_class``, ``_per_segment``) that maps names to
    numbers, as "model: metric"; other mappings (per attack, counts of rows) are not a breakdown of the data."""
    out: dict[str, dict[str, float]] = {}
    for name, m in metrics["models"].items():
        for key, value in m.get("domain_metrics", {}).items():
            if "_per_" in key and isinstance(value, dict) and value and all(isinstance(v, int | float) or v is None
                                                                             for v in value.values()):
                out[f"{name}: {key.replace('_', ' ')}"] = {str(k): float(v or 0.0) for k, v in value.items()}
    return out


def breakdown_figure(breakdowns: dict[str, dict[str, float]]) -> Figure:
    """Grouped horizontal bars: one group per class or segment (its name written along the bars, however
    long), one bar per (model, metric); one panel per set of names (e.g. classes, or a fraud model's
    segments and attacks). The figure grows in height with the bars, never in width, so its text stays
    at :data:`FONT` points on the page."""
    panels: dict[tuple[str, ...], dict[str, dict[str, float]]] = {}
    for label, values in breakdowns.items():
        panels.setdefault(tuple(values), {})[label] = values
    heights = [1.2 + 0.18 * len(keys) * len(panel) + 0.2 * len(panel) for keys, panel in panels.items()]
    fig = Figure(figsize=(MAX_WIDTH, sum(heights) + 0.4), layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    for ax, (keys, panel) in zip(axes, panels.items(), strict=True):
        height = 0.8 / len(panel)
        for i, (label, values) in enumerate(panel.items()):
            ax.barh([k + i * height for k in range(len(keys))], [values[key] for key in keys], height, label=label)
        ax.set_yticks([k + 0.4 - height / 2 for k in range(len(keys))], keys)
        ax.invert_yaxis()  # the first class or segment on top
        ax.set_xlim(0, 1.02)
        ax.xaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_xlabel(next((w for w in ("accuracy", "recall") if all(w in name for name in panel)), "share"))
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=FONT - 1, loc="lower left", bbox_to_anchor=(1.01, 0.0))
        _style(ax)
    fig.suptitle("Per class or segment", fontsize=FONT + 2)
    return fig


#: what the report says of an evaluation that ran no gradient-masking checks (a model without gradients)
NO_CHECKS = "Checks: none run (the gradient-masking checks compare gradient attacks; this evaluation ran without them)."


def _scalars(metrics: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(name, heading(key), figure_text(key, v))
            for name, m in metrics["models"].items() for key, v in m.get("domain_metrics", {}).items()
            if isinstance(v, int | float | str)]


def _pct(v: Any) -> str:
    return f"{100 * float(v):.1f}%" if isinstance(v, int | float) else str(v)


def _lead(m: dict[str, Any]) -> dict[str, Any]:
    """A model entry's headline (accuracy for runs written before headlines)."""
    return m.get("headline") or {"measure": "accuracy", "clean": m["clean_accuracy"],
                                 "attacked": m["robust_accuracy"].get("worst"), "false_positive_rate": None}


def describe_plan(plan: dict[str, Any]) -> str:
    """A :meth:`~robustkit.domain.Domain.training_plan` in words.

    Example:
        >>> describe_plan({"method": "pgd", "epochs": 8})
        'pgd for 8 epochs'
        >>> describe_plan({"method": "augmentation", "model_type": "hgb", "rounds": 2})
        'augmentation (model_type hgb, rounds 2)'
    """
    rest = {k: v for k, v in plan.items() if k != "method"}
    if set(rest) == {"epochs"}:
        return f"{plan['method']} for {rest['epochs']} epoch{'s' if rest['epochs'] != 1 else ''}"
    return f"{plan['method']} ({', '.join(f'{k} {v}' for k, v in rest.items())})"


def _summary(metrics: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The summary table's columns and rows: the headline first. Where it is recall (one class of a binary problem
    attacked), the false-positive rate reached follows, then accuracy over every row, headed as such (the other
    class is never attacked, so it stays high beside a low recall); where it is accuracy, nothing repeats it."""
    recall = any(_lead(m)["measure"] == "recall" for m in metrics["models"].values())
    head = ["model", "measure", "clean", "under the worst attack"]
    head += ["false-positive rate", "verdict", "accuracy on all rows, clean",
             "accuracy on all rows, the attacked class attacked"] if recall else ["verdict"]
    planned = any("training" in m for m in metrics["models"].values())  # runs written before plans have none
    head += ["training", "training seconds"] if planned else ["training seconds"]
    rows = []
    for name, m in metrics["models"].items():
        seconds, lead = m.get("train_seconds"), _lead(m)
        fpr = lead.get("false_positive_rate")
        row = [name, str(lead["measure"]), _pct(lead["clean"]), _pct(lead["attacked"])]
        if recall:
            row += ["" if fpr is None else _pct(fpr), m.get("verdict", ""), _pct(m["clean_accuracy"]),
                    _pct(m["robust_accuracy"].get("worst"))]
        else:
            row.append(m.get("verdict", ""))
        if planned:
            row.append(describe_plan(m["training"]) if "training" in m else "")
        rows.append([*row, "" if seconds is None else f"{seconds:.1f}"])
    return head, rows


def _markdown(metrics: dict[str, Any], reports: dict[str, RobustnessReport], config_yaml: str, command: str) -> str:
    threat = metrics["threat"]
    lines = [
        f"# robustkit {metrics.get('command', 'run')}: {metrics['domain']}",
        "",
        f"**Verdict:** {metrics['verdict']}",
        "",
        f"Data: {metrics['dataset']['name']} ({metrics['dataset'].get('split', '')}); threat: "
        f"{threat.get('space')} budget {threat.get('budget')}; seed {metrics['seed']}.",
        "",
    ]
    head, rows = _summary(metrics)
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    for name, rep in reports.items():
        lines += ["", f"## {name} model", "", *_markdown_table(rep.table), "", "Checks:" if rep.checks else NO_CHECKS,
                  ""]
        lines += [f"- **{c.status}**: {c.name}: {c.detail}" for c in rep.checks]
    lines += ["", "## Reproduce", "", "```", command, "```", "", "```yaml", config_yaml.rstrip(), "```", "",
              "Versions: " + ", ".join(f"{k} {v}" for k, v in metrics["versions"].items()), ""]
    return "\n".join(lines)


def _cells(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Readable headings and formatted cells of a report's attack table."""
    rows = [[figure_text(c, v) for c, v in zip(table.columns, row, strict=True)]
            for row in table.itertuples(index=False)]
    return [heading(c) for c in table.columns], rows


def _markdown_table(table: pd.DataFrame) -> list[str]:
    head, rows = _cells(table)
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in rows)]


def _html(metrics: dict[str, Any], reports: dict[str, RobustnessReport], history: pd.DataFrame,
          examples: list[Path], config_yaml: str, command: str, examples_html: str) -> str:
    breakdowns = _breakdowns(metrics)
    models = []
    for name, rep in reports.items():
        head, rows = _cells(rep.table)
        models.append({"name": name, "head": head, "rows": rows, "checks": rep.checks})
    summary_head, summary_rows = _summary(metrics)
    return render(
        "run_report.html.j2",
        domain=metrics["domain"], command_name=str(metrics.get("command", "run")), verdict=metrics["verdict"],
        summary_head=summary_head, summary_rows=summary_rows,
        summary_left=[i for i, c in enumerate(summary_head) if c in ("model", "measure", "verdict")],
        measure=_lead(next(iter(metrics["models"].values())))["measure"], budget_plot=_png(budget_figure(reports)),
        history_plot="" if history.empty else _png(history_figure(history)),
        breakdown_plot=_png(breakdown_figure(breakdowns)) if breakdowns else "", scalars=_scalars(metrics),
        no_checks=NO_CHECKS.removeprefix("Checks: "),
        images=[(path.name, base64.b64encode(path.read_bytes()).decode("ascii")) for path in examples],
        examples_html=examples_html, models=models, command=command, config_yaml=config_yaml,
        versions=", ".join(f"{k} {v}" for k, v in metrics["versions"].items()),
    )


def write_reports(out: Path, metrics: dict[str, Any], reports: dict[str, RobustnessReport], history: pd.DataFrame,
                  config_yaml: str, command: str, examples_html: str = "") -> None:
    """Write ``report.md`` and the self-contained ``report.html`` into the run directory ``out``.

    ``examples_html``: the domain's view of its examples, embedded as is where it is markup that
    :func:`robustkit.rendering.render` made (a plain string is shown as text).
    """
    examples = sorted((out / "examples").glob("*.png"))
    atomic_write_text(out / "report.md", _markdown(metrics, reports, config_yaml, command))
    atomic_write_text(out / "report.html",
                      _html(metrics, reports, history, examples, config_yaml, command, examples_html))
