"""evaluate() and RobustnessReport: hand-computed robust accuracy, masks, batch invariance, errors, outputs.

The toy data (Gaussian blobs in a [-1, 1] box, 3 classes) and a small MLP trained in-test live here;
test_checks.py imports them.
"""

from __future__ import annotations

import functools
import itertools
import json
import math

import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

import robustkit as rk
from robustkit.evaluation import PRESETS, CheckSettings, RobustnessReport, describe_presets, evaluate
from tests.toy_discrete import CategoricalSpace, logistic_model, score

BOX = (-1.0, 1.0)
CENTERS = torch.tensor([[-0.5, -0.5], [0.5, -0.5], [0.0, 0.5]])
FAST = CheckSettings(search_queries=200, cover_examples=64)


def blobs(n: int = 200, seed: int = 0, spread: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Three Gaussian blobs in 2-D, clipped to the [-1, 1] box; labels cycle 0, 1, 2."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = CENTERS[y] + spread * torch.randn(n, 2, generator=g)
    return x.clamp(*BOX), y


@functools.cache
def _trained_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = mlp()
    x, y = blobs(600, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return {k: v.clone() for k, v in model.state_dict().items()}


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 3))


def trained_mlp() -> nn.Sequential:
    """A fresh copy of a small MLP trained on the blobs (trained once per process, about a second)."""
    model = mlp()
    model.load_state_dict(_trained_state())
    return model


def sign_model() -> nn.Linear:
    """Class 0 when x0 > 0, class 1 when x0 < 0: an Linf attack flips exactly the examples with |x0| < eps."""
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
    return model


def sign_data() -> tuple[torch.Tensor, torch.Tensor]:
    """x0 on a grid that never equals an eps used below; every 7th label is wrong."""
    x0 = (torch.arange(40, dtype=torch.float32) - 19.5) * 0.05
    x1 = torch.linspace(-0.9, 0.9, 40).flip(0)
    y = (x0 < 0).long()
    y[::7] = 1 - y[::7]
    return torch.stack([x0, x1], dim=1), y


def space(eps: float = 0.1) -> rk.LinfBall:
    return rk.LinfBall(eps=eps, bounds=BOX)


# ---------------------------------------------------------------------------- numbers
def test_robust_accuracy_matches_hand_computation_on_a_linear_model():
    x, y = sign_data()
    report = evaluate(sign_model(), (x, y), space(0.1), budgets=[0.1, 0.3], attacks=["fgsm", "pgd"], checks=FAST)
    correct = (x[:, 0] < 0).long() == y
    assert report.clean_accuracy == pytest.approx(correct.float().mean().item())
    for point in report.per_budget:
        e = point["budget"]
        robust = correct & (x[:, 0].abs() > e)
        broken = int(correct.sum() - robust.sum())
        for name in ("fgsm", "pgd", "worst"):
            entry = point["attacks"][name]
            assert entry["robust_accuracy"] == pytest.approx(robust.float().mean().item()), (name, e)
            assert entry["attack_success_rate"] == pytest.approx(broken / int(correct.sum()))
    assert report.robust_accuracy["worst"] == pytest.approx((correct & (x[:, 0].abs() > 0.1)).float().mean().item())
    assert report.budget == 0.1 and report.budgets == [0.1, 0.3]
    pgd_01 = report.per_budget[0]["attacks"]["pgd"]
    assert pgd_01["backward_passes"] > 0 and pgd_01["forward_passes"] > pgd_01["backward_passes"]
    assert report.per_budget[0]["attacks"]["fgsm"]["backward_passes"] == int(correct.sum())  # one step each
    assert all(c.passed is not False for c in report.checks), [c.line for c in report.checks]


def test_main_budget_is_the_spaces_when_listed_else_the_largest():
    x, y = sign_data()
    listed = evaluate(sign_model(), (x, y), space(0.1), budgets=[0.3, 0.1, 0.2], attacks="fgsm", checks=False)
    assert listed.budget == 0.1 and listed.budgets == [0.1, 0.2, 0.3]
    unlisted = evaluate(sign_model(), (x, y), space(0.1), budgets=[0.05, 0.2], attacks="fgsm", checks=False)
    assert unlisted.budget == 0.2
    assert unlisted.robust_accuracy["fgsm"] == unlisted.per_budget[1]["attacks"]["fgsm"]["robust_accuracy"]
    default = evaluate(sign_model(), (x, y), space(0.25), attacks="fgsm", checks=False)
    assert default.budgets == [0.25] and default.threat == {"space": "linf", "budget": 0.25}


@pytest.mark.parametrize("kind", ["tensor", "callable"])
def test_mask_leaves_unattacked_examples_clean_and_misclassified_ones_non_robust(kind):
    x, y = sign_data()
    attackable = x[:, 1] > 0
    mask = attackable if kind == "tensor" else (lambda xb, yb: xb[:, 1] > 0)
    report = evaluate(sign_model(), (x, y), space(0.3), attacks=["pgd"], mask=mask, batch_size=16, checks=False)
    correct = (x[:, 0] < 0).long() == y
    robust = correct & (~attackable | (x[:, 0].abs() > 0.3))
    assert report.robust_accuracy["pgd"] == pytest.approx(robust.float().mean().item())
    assert report.n_attackable == int(attackable.sum())
    assert report.clean_accuracy_attackable == pytest.approx(correct[attackable].float().mean().item())
    worst = report.per_budget[0]["attacks"]["worst"]
    assert worst["robust_accuracy_attackable"] == pytest.approx(robust[attackable].float().mean().item())
    # the misclassified attackable examples were never attacked: success rate is over the correct ones
    targets = attackable & correct
    assert worst["attack_success_rate"] == pytest.approx(int((targets & ~robust).sum()) / int(targets.sum()))


def test_numbers_do_not_depend_on_batch_size():
    x, y = blobs(120)
    sp = space(0.15)
    attacks = ["fgsm", "pgd", "apgd-ce", rk.RandomSearch(sp, queries=30)]
    reports = [
        evaluate(trained_mlp(), (x, y), sp, budgets=[0.15, 0.3], attacks=attacks, batch_size=b, checks=FAST)
        for b in (11, 64)
    ]
    small, large = (r.to_json() for r in reports)
    for d in (small, large):
        d.pop("seconds")
        for point in d["per_budget"]:
            for entry in point["attacks"].values():
                entry.pop("seconds")
    assert small == large
    assert small["robust_accuracy"]["worst"] < small["clean_accuracy"]


def test_dataloader_and_tuple_give_the_same_report():
    x, y = blobs(90)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y, torch.zeros(90)), batch_size=32)
    a = evaluate(trained_mlp(), loader, space(0.2), attacks="quick", checks=False).robust_accuracy
    b = evaluate(trained_mlp(), (x, y), space(0.2), attacks="quick", checks=False).robust_accuracy
    assert a == b


def test_model_mode_and_flags_are_restored():
    model = trained_mlp().train()
    model[0].weight.requires_grad_(False)
    x, y = blobs(60)
    evaluate(model, (x, y), space(), attacks="quick", checks=FAST)
    assert model.training and all(m.training for m in model.modules())
    assert not model[0].weight.requires_grad and model[0].bias.requires_grad


def test_standard_preset_uses_margin_for_binary_models():
    x, y = sign_data()
    report = evaluate(sign_model(), (x, y), space(0.1), checks=False)
    assert list(report.robust_accuracy) == ["pgd", "apgd-ce", "apgd-margin", "worst"]
    assert report.attacks["apgd-margin"]["loss"] == "margin" and report.attacks["pgd"]["steps"] == 20
    assert [s.label for s in PRESETS["thorough"].attacks_for(10)] == ["pgd", "apgd-ce", "apgd-dlr", "random-search"]
    assert "forward" in describe_presets() and PRESETS["quick"].backward_passes == 10


def test_attack_instances_are_rebuilt_per_budget_and_labelled():
    x, y = sign_data()
    pgd = rk.PGD(rk.LinfBall(eps=0.9), steps=5, loss="margin")
    report = evaluate(sign_model(), (x, y), space(0.1), budgets=[0.1, 0.3], attacks=[pgd, "pgd"], checks=False)
    assert list(report.robust_accuracy) == ["pgd-margin", "pgd", "worst"]
    assert report.robust_accuracy["pgd-margin"] == report.robust_accuracy["pgd"]  # eps 0.1, not 0.9
    assert pgd.space.budget == 0.9  # the instance itself is left alone


def test_discrete_space_with_the_search():
    weights = [[0.0, 1.0, 3.0], [0.0, 2.0], [0.0, -1.0, 2.5, 0.5]]
    model = logistic_model(weights, bias=-3.0)
    sp = CategoricalSpace([3, 2, 4], budget=1)
    objs = list(itertools.product(range(3), range(2), range(4)))
    y = torch.tensor([int(score(weights, -3.0, o) > 0) for o in objs])
    report = evaluate(model, (objs, y), sp, budgets=[0, 1, 2], attacks="standard", checks=True)
    for point in report.per_budget:
        budget = int(point["budget"])
        robust = [
            all((score(weights, -3.0, o) > 0) == bool(label) for o in sp.objects() if sp.changed(o, x) <= budget)
            for x, label in zip(objs, y.tolist(), strict=True)
        ]
        assert point["attacks"]["search"]["robust_accuracy"] == pytest.approx(sum(robust) / len(objs))
    assert report.robust_accuracy["search"] < 1.0
    assert {c.name: c.passed for c in report.checks}["input gradients are informative"] is True


# ---------------------------------------------------------------------------- errors before any work
class Counting(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.model(x)


class FirstRow(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(1, 3) + x[:1, :1]


def _bad_cases():
    x, y = blobs(30)
    empty = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:0], y[:0]), batch_size=4)
    return {
        "empty tuple": (dict(data=(x[:0], y[:0])), rk.DataError),
        "empty loader": (dict(data=empty), rk.DataError),
        "negative budget": (dict(budgets=[0.1, -0.1]), rk.ConfigError),
        "nan budget": (dict(budgets=[math.nan]), rk.ConfigError),
        "empty budgets": (dict(budgets=[]), rk.ConfigError),
        "labels too large": (dict(data=(x, y + 3)), rk.DataError),
        "labels not 1-D": (dict(data=(x, torch.nn.functional.one_hot(y, 3))), rk.DataError),
        "fewer labels": (dict(data=(x, y[:-1])), rk.DataError),
        "inputs outside the box": (dict(data=(x * 3, y)), rk.DataError),
        "nan inputs": (dict(data=(x.clone().fill_(math.nan), y)), rk.DataError),
        "unknown attack": (dict(attacks=["pgd", "cw"]), rk.ConfigError),
        "preset in a list": (dict(attacks=["quick"]), rk.ConfigError),
        "no attacks": (dict(attacks=[]), rk.ConfigError),
        "targeted attack": (dict(attacks=[rk.PGD(space(), targeted=True)]), rk.ConfigError),
        "mask length": (dict(mask=torch.ones(29, dtype=torch.bool)), rk.DataError),
        "mask selects none": (dict(mask=torch.zeros(30, dtype=torch.bool)), rk.DataError),
        "mask not bool": (dict(mask=torch.full((30,), 2)), rk.DataError),
        "callable mask shape": (dict(mask=lambda xb, yb: torch.ones(3, dtype=torch.bool)), rk.DataError),
        "batch size": (dict(batch_size=0), rk.ConfigError),
        "checks": (dict(checks="yes"), rk.ConfigError),
        "data is a tensor": (dict(data=x), rk.DataError),
    }


@pytest.mark.parametrize("case", list(_bad_cases()))
def test_bad_inputs_raise_before_attacking(case):
    kwargs, error = _bad_cases()[case]
    model = Counting(trained_mlp())
    data = kwargs.pop("data", blobs(30))
    with pytest.raises(error):
        evaluate(model, data, space(), attacks=kwargs.pop("attacks", "quick"), **kwargs)
    assert model.calls <= 1  # at most the probe batch


def test_bad_models_raise_model_error():
    x, y = blobs(30)
    with pytest.raises(rk.ModelError, match="rows"):
        evaluate(FirstRow(), (x, y), space(), attacks="quick")
    with pytest.raises(rk.ModelError):
        evaluate(lambda t: t, (x, y), space(), attacks="quick")  # type: ignore[arg-type]
    with pytest.raises(rk.ConfigError, match="DLR"):
        evaluate(sign_model(), sign_data(), space(), attacks=["apgd-dlr"])
    with pytest.raises(rk.ConfigError):
        evaluate(trained_mlp(), (x, y), "linf", attacks="quick")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- the report
@pytest.fixture(scope="module")
def report() -> RobustnessReport:
    x, y = blobs(120)
    return evaluate(trained_mlp(), (x, y), space(0.1), budgets=[0.05, 0.1, 0.2], attacks=["fgsm", "pgd"], checks=FAST)


def test_table_has_one_row_per_attack_and_budget(report):
    table = report.table
    assert list(table.columns) == [
        "attack", "budget", "robust_accuracy", "attack_success_rate", "forward_passes", "backward_passes", "seconds"
    ]  # fmt: skip
    assert len(table) == 3 * 3 and table["attack"].tolist()[-3:] == ["worst"] * 3
    main = table[(table.attack == "pgd") & (table.budget == 0.1)].iloc[0]
    assert main.robust_accuracy == report.robust_accuracy["pgd"]
    best = table[table.attack != "worst"].groupby("budget").robust_accuracy.min()
    assert (table[table.attack == "worst"].set_index("budget").robust_accuracy <= best).all()


def test_json_round_trip(report, tmp_path):
    path = tmp_path / "sub" / "metrics.json"
    data = report.to_json(path)
    assert json.loads(path.read_text()) == data
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]  # no temporary file left behind
    for key in ("clean_accuracy", "robust_accuracy", "per_budget", "checks", "verdict", "attacks", "threat",
                "n_examples"):
        assert key in data
    assert data["threat"] == {"space": "linf", "budget": 0.1}
    assert set(data["checks"][0]) == {"name", "passed", "detail"}
    again = RobustnessReport.from_json(data)
    assert again.to_json() == data and again.checks == report.checks
    assert RobustnessReport.from_json(path).table.equals(report.table)
    with pytest.raises(rk.DataError):
        RobustnessReport.from_json({"verdict": "x"})


def test_html_is_self_contained_with_plot_numbers_and_checks(report, tmp_path):
    page = report.to_html(tmp_path / "report.html")
    assert (tmp_path / "report.html").read_text() == page
    assert '<img src="data:image/png;base64,' in page
    assert f"{100 * report.clean_accuracy:.1f}%" in page and f"{100 * report.robust_accuracy['worst']:.1f}%" in page
    assert all(c.name in page for c in report.checks) and report.verdict in page
    assert "http" not in page  # nothing fetched from elsewhere
    assert "<table" in report._repr_html_()
    md = report.to_markdown()
    assert report.verdict in md and "| attack | budget | robust accuracy |" in md
    assert f"{100 * report.robust_accuracy['pgd']:.1f}%" in md


def test_plot_is_a_figure_and_draws_on_a_given_axes(report):
    fig = report.plot()
    assert isinstance(fig, Figure)
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert {"fgsm", "pgd", "worst case"} <= set(labels)
    own = Figure()
    ax = own.add_subplot()
    assert report.plot(ax=ax) is own and len(ax.get_lines()) >= 3


def test_evaluate_with_one_attacked_class_leads_with_its_recall_and_the_false_positive_rate():
    """rk.evaluate(..., mask=) on a binary problem reported accuracy, dominated by the class left alone."""
    torch.manual_seed(0)
    x = torch.cat([torch.randn(180, 2) - 1.0, torch.randn(20, 2) + 1.5])
    y = torch.cat([torch.zeros(180, dtype=torch.long), torch.ones(20, dtype=torch.long)])
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))
        model.bias.zero_()
    space = rk.LinfBall(eps=1.0, bounds=(-6.0, 6.0))
    report = rk.evaluate(model, (x, y), space, attacks="quick", mask=y == 1, checks=False)
    with torch.no_grad():
        pred = model(x).argmax(dim=1)
    lead = report.headline
    assert lead is not None and lead.measure == "recall"
    assert lead.clean == int((pred[y == 1] == 1).sum()) / 20
    assert lead.false_positive_rate == int((pred[y == 0] == 1).sum()) / 180
    assert lead.attacked == report.per_budget[-1]["attacks"]["worst"]["robust_accuracy_attackable"]
    assert lead.attacked < lead.clean and report.robust_accuracy["worst"] > lead.attacked  # accuracy hides it
    assert report.to_json()["headline"]["measure"] == "recall"
    assert "recall" in report.to_markdown().splitlines()[2]
    everyone = rk.evaluate(model, (x, y), space, attacks="quick", checks=False)
    assert everyone.headline is not None and everyone.headline.measure == "accuracy"


def test_a_report_with_a_domain_attack_renders_everywhere(tmp_path):
    """An attack a domain ran itself counts no passes: every view shows it without failing (the quickstart's
    tabular run failed writing report.md on the missing counts)."""
    from robustkit.reporting import write_reports

    torch.manual_seed(0)
    x, y = torch.randn(60, 2), torch.randint(0, 2, (60,))
    model = torch.nn.Linear(2, 2)
    report = rk.evaluate(model, (x, y), rk.LinfBall(eps=0.3, bounds=(-5.0, 5.0)), attacks="quick", mask=y == 1,
                         checks=False)
    merged = report.with_attack("strongest", torch.zeros(60, dtype=torch.bool))
    assert merged.lead.attacked == 0.0 and merged.robust_accuracy["worst"] <= report.robust_accuracy["worst"]
    assert "strongest" in merged.to_markdown() and "strongest" in merged.to_html()
    entry = {"headline": merged.lead.to_dict(), "clean_accuracy": merged.clean_accuracy,
             "robust_accuracy": merged.robust_accuracy, "domain_metrics": {}, "verdict": merged.verdict}
    metrics = {"domain": "toy", "dataset": {"name": "x"}, "threat": merged.threat, "seed": 0, "verdict": merged.verdict,
               "models": {"evaluated": entry}, "versions": {}}
    write_reports(tmp_path, metrics, {"evaluated": merged}, pd.DataFrame(), "", "robustkit evaluate")
    assert "strongest" in (tmp_path / "report.md").read_text()
