"""One budget vocabulary: ``budget`` for one threat size, ``budgets`` for several, in Python, config files and
flags. The first version's ``eps`` names still work for one release, warn, and give the same result; both names
together are refused."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import robustkit as rk
from robustkit.cli import _domain_options, _parser, _run_config
from robustkit.config import RunConfig
from robustkit.evaluation import robustness_curve
from robustkit.evaluation.report import RobustnessReport


def sign_model() -> torch.nn.Module:
    """Class 0 when x > 0, else class 1: an example at x is broken by a perturbation just over |x|."""
    model = torch.nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0], [-1.0]]))
    return model


X = torch.tensor([[0.05], [0.15], [0.25], [0.35]])
Y = torch.zeros(4, dtype=torch.long)
SPACE = rk.LinfBall(eps=0.3, bounds=(-1.0, 1.0))


def run(**kw) -> RobustnessReport:
    return rk.evaluate(sign_model(), (X, Y), SPACE, attacks="fgsm", checks=False, **kw)


def test_evaluate_takes_budgets_and_the_old_eps_with_a_warning_and_the_same_report() -> None:
    new = run(budgets=[0.1, 0.3])
    assert new.budgets == [0.1, 0.3]
    assert [p["attacks"]["worst"]["robust_accuracy"] for p in new.per_budget] == [0.75, 0.25]
    assert list(new.table["budget"]) == [0.1, 0.3, 0.1, 0.3]
    with pytest.warns(DeprecationWarning, match="rk.evaluate: eps is deprecated.*use budgets"):
        old = run(eps=[0.1, 0.3])
    untimed = [r.table.drop(columns="seconds") for r in (old, new)]
    assert untimed[0].equals(untimed[1]) and (old.robust_accuracy, old.verdict) == (new.robust_accuracy, new.verdict)
    assert all(torch.equal(old.outcomes[k], new.outcomes[k]) for k in new.outcomes)
    with pytest.raises(rk.ConfigError, match="give budgets only"):
        run(budgets=[0.1], eps=[0.1])


def test_a_report_of_the_first_version_reads_the_same_and_per_eps_still_answers_with_a_warning() -> None:
    report = run(budgets=[0.1, 0.3])
    saved = report.to_json()
    assert "per_budget" in saved and "per_eps" not in saved and saved["threat"] == {"space": "linf", "budget": 0.3}
    old = {k: v for k, v in saved.items() if k != "per_budget"}
    old["per_eps"] = [{"eps": p["budget"], "attacks": p["attacks"]} for p in saved["per_budget"]]
    old["threat"] = {**saved["threat"], "eps": 0.3}
    assert RobustnessReport.from_json(old).to_json() == saved
    with pytest.warns(DeprecationWarning, match="per_budget"):
        assert report.per_eps == old["per_eps"]


def test_robustness_curve_takes_budgets_and_the_old_eps_with_a_warning() -> None:
    new = robustness_curve(sign_model(), X, Y, SPACE, budgets=[0.1, 0.3], steps=20)
    with pytest.warns(DeprecationWarning, match="use budgets"):
        old = robustness_curve(sign_model(), X, Y, SPACE, eps=[0.1, 0.3], steps=20)
    assert new.budgets == old.budgets == [0.1, 0.3] and new.robust_accuracy == old.robust_accuracy
    with pytest.warns(DeprecationWarning):
        assert new.eps == new.budgets
    with pytest.raises(rk.ConfigError, match="not both"):
        robustness_curve(sign_model(), X, Y, SPACE, budgets=[0.1], eps=[0.1])


def test_the_trainer_takes_budget_warmup_and_the_old_eps_warmup_with_a_warning() -> None:
    data = DataLoader(TensorDataset(X, Y), batch_size=2)

    def history(**kw):
        torch.manual_seed(0)
        trainer = rk.AdversarialTrainer(sign_model(), SPACE, method="fgsm-mix", progress=False, **kw)
        return trainer.fit(data, epochs=2)

    new = history(budget_warmup=2)
    assert list(new["budget"]) == pytest.approx([0.15, 0.3])
    with pytest.warns(DeprecationWarning, match="AdversarialTrainer: eps_warmup is deprecated"):
        old = history(eps_warmup=2)
    assert list(old["budget"]) == list(new["budget"]) and list(old["train_loss"]) == list(new["train_loss"])
    with pytest.raises(rk.ConfigError, match="give budget_warmup only"):
        rk.AdversarialTrainer(sign_model(), SPACE, budget_warmup=1, eps_warmup=1)


def test_a_config_with_the_old_keys_warns_and_means_the_same() -> None:
    new = RunConfig.from_dict({"domain": "toy", "budgets": [0.1, 0.2], "budget_warmup": 1})
    with pytest.warns(DeprecationWarning, match="is deprecated") as caught:
        old = RunConfig.from_dict({"domain": "toy", "eps": [0.1, 0.2], "eps_warmup": 1})
    assert sorted(str(w.message).split(" is ")[0] for w in caught) == ["config: eps", "config: eps_warmup"]
    assert old == new and "eps" not in old.to_yaml()
    for both in ({"eps": [0.1], "budgets": [0.1]}, {"eps_warmup": 1, "budget_warmup": 1}):
        with pytest.raises(rk.ConfigError, match="not both"):
            RunConfig.from_dict({"domain": "toy", **both})


def config_of(argv: list[str]) -> RunConfig:
    options = _domain_options(argv)
    return _run_config(_parser(options).parse_args(argv), options)


def test_old_flags_and_config_keys_say_one_line_each_and_mean_the_same(tmp_path, capsys) -> None:
    new = config_of(["harden", "toy", "--budgets", "0.1", "0.2", "--budget-warmup", "1"])
    assert capsys.readouterr().err == ""
    assert (new.budgets, new.budget_warmup) == ([0.1, 0.2], 1.0)
    old = config_of(["harden", "toy", "--eps", "0.1", "0.2", "--eps-warmup", "1"])
    assert old == new
    assert capsys.readouterr().err.splitlines() == [
        "robustkit: --eps is deprecated and will be removed in robustkit 0.3: use --budgets",
        "robustkit: --eps-warmup is deprecated and will be removed in robustkit 0.3: use --budget-warmup"]
    file = tmp_path / "run.yaml"
    file.write_text("eps: [0.1, 0.2]\neps_warmup: 1\n", encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the command line says it in its own words, it raises no warning
        assert config_of(["harden", "toy", "--config", str(file)]) == new
    assert capsys.readouterr().err.splitlines() == [
        "robustkit: config: eps is deprecated and will be removed in robustkit 0.3: use budgets",
        "robustkit: config: eps_warmup is deprecated and will be removed in robustkit 0.3: use budget_warmup"]
    for both in (["--eps", "0.1", "--budgets", "0.1"], ["--eps-warmup", "1", "--budget-warmup", "1"]):
        with pytest.raises(rk.ConfigError, match="not both"):
            config_of(["harden", "toy", *both])


def test_evaluate_takes_one_budget_and_budgets_and_its_old_list_of_budgets_with_a_notice(capsys) -> None:
    one = config_of(["evaluate", "toy", "--model", "m", "--budget", "0.2"])
    assert (one.budget, one.budgets) == (0.2, [0.2])
    curve = config_of(["evaluate", "toy", "--model", "m", "--budgets", "0.1", "0.2"])
    assert (curve.budget, curve.budgets) == (0.2, [0.1, 0.2])
    assert capsys.readouterr().err == ""
    old = config_of(["evaluate", "toy", "--model", "m", "--budget", "0.1", "0.2"])
    assert (old.budget, old.budgets) == (0.2, [0.1, 0.2])
    assert capsys.readouterr().err == ("robustkit: --budget with several values is deprecated and will be removed "
                                       "in robustkit 0.3: use --budgets 0.1 0.2\n")
    with pytest.raises(rk.ConfigError, match="not both"):
        config_of(["evaluate", "toy", "--model", "m", "--budget", "0.1", "0.2", "--budgets", "0.1"])
