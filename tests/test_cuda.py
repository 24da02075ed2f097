"""On a CUDA device: every domain hardens from the command line, and PGD's GPU early-stop policy.

Skipped without CUDA (CI has none); run on a GPU machine with ``python -m pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import robustkit as rk
from robustkit.cli import main
from tests.test_pgd import RowwiseMLP, batch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

SMALL = {
    "images": ["--epochs", "1"],
    "tabular": ["--epochs", "2"],
    "text": ["--data", "demo:150", "--epochs", "2"],
}
OPTIONS = {"tabular": {"n_rows": 2500, "fraud_rate": 0.15}}


@pytest.mark.parametrize("domain", sorted(SMALL))
def test_every_domain_hardens_on_cuda(tmp_path: Path, domain: str) -> None:
    out = tmp_path / domain
    args = ["harden", domain, "--out", str(out), "--device", "cuda", "--preset", "quick", "--quiet", *SMALL[domain]]
    if domain in OPTIONS:
        config = tmp_path / "recipe.yaml"
        config.write_text(yaml.safe_dump({"domain": domain, "options": OPTIONS[domain]}))
        args += ["--config", str(config)]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["models"]) == {"standard", "hardened"}


def test_pgd_on_cuda_finds_what_it_finds_on_the_cpu() -> None:
    """Finished examples stay in the GPU batch (frozen) until an eighth is done; the CPU drops them at once.
    Both return points inside the ball whose success a fresh forward pass confirms, and agree."""
    x, y = batch(n=64, seed=1)
    space = rk.LinfBall(eps=0.15, bounds=(0.0, 1.0))
    attack = rk.PGD(space, steps=8, restarts=2, seed=5)
    model = RowwiseMLP()
    cpu = attack(model, x, y)
    gpu = attack(model.cuda(), x.cuda(), y.cuda())
    assert bool(space.contains(gpu.x_adv, x.cuda()).all())
    with torch.no_grad():
        assert torch.equal(model(gpu.x_adv).argmax(1) != y.cuda(), gpu.success)
    assert torch.equal(gpu.success.cpu(), cpu.success)
    torch.testing.assert_close(gpu.x_adv.cpu(), cpu.x_adv, atol=1e-5, rtol=0)
