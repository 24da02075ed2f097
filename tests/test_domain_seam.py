"""Domains keep no state: whatever a call needs travels in its arguments (data, model), so no result can
depend on which call came before. Each domain is walked through what harden, evaluate and attack call."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

import robustkit as rk
from robustkit.domain import Examples

WALKS = {  # domain: (data spec, options, budget)
    "images": ("digits", {}, 0.1),
    "tabular": ("synthetic", {"n_rows": 300, "fraud_rate": 0.2}, 3.0),
    "text": ("demo:80", {"normalise": True}, 2.0),
    "toy": ("toy", {}, 0.25),
}


def _snapshot(domain: rk.Domain) -> dict[str, Any]:
    return copy.deepcopy(vars(domain))


@pytest.mark.parametrize("name", sorted(WALKS))
def test_a_domain_walked_through_harden_evaluate_and_attack_keeps_no_state(name: str, tmp_path: Path) -> None:
    spec, values, budget = WALKS[name]
    domain = rk.get_domain(name)
    before = _snapshot(domain)
    options = domain.parse_options(values)
    data = domain.load_data(spec, 0, options)
    torch.manual_seed(0)
    model_spec = domain.model_spec(data, options)
    model = domain.build_model(model_spec).eval()
    domain.space(budget, data)
    threshold = domain.choose_threshold(model, data)
    decided = domain.decided(model, threshold)
    space = domain.eval_space(budget, data, decided)
    x, y = next(iter(domain.loader(data.test, 64, shuffle=False)))[:2]
    report = rk.evaluate(decided, (x, y), space, attacks="quick", mask=domain.attackable_mask(x, y), checks=False)
    assessment = domain.assess(decided, data, report)
    domain.save_model(model, tmp_path / "m", model_spec, threshold)
    loaded, _ = domain.load_model(tmp_path / "m")
    x_adv = x.clone() if isinstance(x, torch.Tensor) else list(x)
    pred = torch.zeros(len(y), dtype=torch.long)
    domain.write_examples(tmp_path / "ex", Examples(x, x_adv, y, pred, pred.clone(),
                                                   torch.zeros(len(y), dtype=torch.bool), evidence=assessment.evidence),
                          data)
    domain.eval_space(budget, data, domain.decided(loaded, threshold))
    assert _snapshot(domain) == before == {}, f"{name} kept state: {sorted(set(vars(domain)))}"


class TwoFeatures(rk.Domain):
    """A new domain written as a third party would: a 2-feature fraud-like problem, three methods and two
    optional hooks (binary: only the positive class is attacked, decided at a threshold), nothing else."""

    name = "two-features"
    default_data = "two"
    default_budget = 0.3
    default_epochs = 2

    def load_data(self, spec: str, seed: int, options: dict[str, Any]) -> rk.DomainData:
        g = torch.Generator().manual_seed(seed)
        y = (torch.rand(900, generator=g) < 0.3).long()
        x = torch.randn(900, 2, generator=g) * 0.4 + y[:, None] * torch.tensor([1.0, 1.0])
        parts = [torch.utils.data.TensorDataset(x[i:i + 300], y[i:i + 300]) for i in (0, 300, 600)]
        return rk.DomainData(*parts, rk.DatasetInfo("two", split="300/300/300", n_classes=2))

    def build_model(self, spec: dict[str, Any]) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))

    def space(self, budget: float, data: rk.DomainData) -> rk.LinfBall:
        return rk.LinfBall(eps=budget, bounds=(-3.0, 4.0))

    def attackable(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y == 1

    def choose_threshold(self, model: torch.nn.Module, data: rk.DomainData) -> float:
        x, y = data.val.tensors  # type: ignore[attr-defined]
        with torch.no_grad():
            scores = torch.softmax(model(x), dim=1)[:, 1]
        return rk.evaluation.binary.threshold_at_fpr(scores[y == 0], 0.05)


def test_a_new_domain_needs_three_methods_and_gets_the_whole_pipeline(tmp_path: Path) -> None:
    import json

    from robustkit.cli import main

    rk.register_domain(TwoFeatures)
    out = tmp_path / "run"
    assert main(["harden", "two-features", "--out", str(out), "--preset", "quick", "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    hardened = metrics["models"]["hardened"]
    assert hardened["headline"]["measure"] == "recall"  # one class of a binary problem is attacked
    assert {"recall_clean", "recall_attacked", "fpr_clean", "threshold"} <= set(hardened["domain_metrics"])
    assert hardened["headline"]["attacked"] == hardened["domain_metrics"]["recall_attacked"]

    class Incomplete(rk.Domain):
        name = "incomplete"

        def load_data(self, spec: str, seed: int, options: dict[str, Any]) -> rk.DomainData:
            raise AssertionError

    rk.register_domain(Incomplete)
    with pytest.raises(rk.ConfigError, match="does not implement build_model, space"):
        rk.get_domain("incomplete")
