"""How reports and ``--help`` read: chart sizes and fonts, whole-number word budgets, help laid out as written."""

from __future__ import annotations

import itertools
import re

import pandas as pd
import pytest

from domains.tabular import TabularDomain
from robustkit.cli import main
from robustkit.evaluation import RobustnessReport
from robustkit.reporting import FONT, MAX_WIDTH, _breakdowns, breakdown_figure, budget_figure


def _report(budgets: list[float]) -> RobustnessReport:
    entry = {"robust_accuracy": 0.5, "attack_success_rate": 0.4, "forward_passes": 10, "backward_passes": 8,
             "seconds": 0.1}
    return RobustnessReport.from_json({
        "clean_accuracy": 0.9, "robust_accuracy": {"search": 0.5, "worst": 0.5},
        "per_budget": [{"budget": b, "attacks": {"search": entry, "worst": entry}} for b in budgets],
        "verdict": "not robust", "threat": {"space": "obfuscation", "budget": budgets[-1]}, "n_examples": 10})


@pytest.mark.parametrize(("budgets", "whole"), [([1.0, 2.0, 3.0, 6.0], True), ([0.05, 0.1, 0.15], False)])
def test_word_budgets_get_whole_number_ticks(budgets, whole) -> None:
    for fig in (budget_figure({"hardened": _report(budgets)}), _report(budgets).plot()):
        fig.canvas.draw()
        ticks = [t for t in fig.axes[0].get_xticks() if budgets[0] <= t <= budgets[-1]]
        assert all(float(t).is_integer() for t in ticks) == whole


def test_breakdown_chart_keeps_its_text_readable_with_many_segments() -> None:
    segments = {f"segment {i} with a long name": i / 40 for i in range(40)}
    breakdowns = {f"{model}: {metric} recall per segment": segments
                  for model in ("standard", "hardened") for metric in ("clean", "attacked")}
    fig = breakdown_figure(breakdowns)
    fig.canvas.draw()
    # drawn at 100 dpi and never wider than the page: the page shows it at full size, text at FONT points
    assert fig.get_figwidth() <= MAX_WIDTH
    (ax,) = fig.axes
    labels = [t for t in ax.get_yticklabels() if t.get_text()]
    assert [t.get_text() for t in labels] == list(segments)
    assert all(t.get_fontsize() >= FONT for t in labels)
    # one label per bar group, none overlapping the next
    boxes = sorted((t.get_window_extent() for t in labels), key=lambda b: b.y0)
    assert all(low.y1 <= high.y0 + 0.5 for low, high in itertools.pairwise(boxes))


def test_breakdowns_are_per_class_or_segment_never_per_attack() -> None:
    domain = {"recall_clean_per_segment": {"fuel": 1.0, "travel": 0.5},
              "recall_attacked_by_attack": {"pgd": 0.4, "search": 0.3}, "rows_evaded_by_attack": {"pgd": 7},
              "clean_accuracy_per_class": {"0": 0.9}}
    found = _breakdowns({"models": {"hardened": {"domain_metrics": domain}}})
    assert found == {"hardened: recall clean per segment": {"fuel": 1.0, "travel": 0.5},
                     "hardened: clean accuracy per class": {"0": 0.9}}


def test_changed_cells_show_numbers_at_their_columns_places(tmp_path) -> None:
    pd.DataFrame({"index": [3], "fooled": [True], "cost": [1.5]}).set_index("index").to_csv(tmp_path / "examples.csv")
    pd.DataFrame({"row": [3, 3, 3, 3], "column": ["amount", "amount", "hour", "country"],
                  "original": [164.13, 20.5, 2, "home"], "adversarial": [52.45005245, 19.25, 7, "abroad"],
                  "cost": [0.2, 0.1, 0.5, 0.7]}).to_csv(tmp_path / "changes.csv", index=False)
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", TabularDomain().examples_html(tmp_path))
    shown = [cells[i:i + 3] for i in range(3, len(cells), 4)]  # column, original, adversarial (after the row's 3)
    assert shown == [["amount", "164.13", "≈52.45"], ["amount", "20.50", "19.25"], ["hour", "2", "7"],
                     ["country", "home", "abroad"]]


def test_help_keeps_one_line_per_preset(capsys) -> None:
    assert main(["harden", "--help"]) == 0
    lines = [line.strip() for line in capsys.readouterr().out.splitlines()]
    starts = [next(i for i, line in enumerate(lines) if line.startswith(f"{name}:"))
              for name in ("quick", "standard", "thorough")]
    assert starts == sorted(starts) and lines[starts[0] - 1].endswith("(default standard):")
    assert any("APGD-DLR-100" in line for line in lines)  # names are not cut at their hyphens
