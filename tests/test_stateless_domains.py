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
    spec, options, budget = WALKS[name]
    domain = rk.get_domain(name)
    before = _snapshot(domain)
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
