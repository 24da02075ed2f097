"""Honest numbers end to end: `robustkit evaluate` and `harden` on deliberately masked models.

A trained digits CNN is wrapped, through ``--model-factory``, in a defence that hides its gradients
without making it robust: a non-differentiable quantisation layer, probabilities passed through
``log`` (a saturated softmax: zero gradients), and fresh input noise on every call. Each failed check
is named; the verdict is "inconclusive: <check>" unless the attacks broke the model anyway ("not
robust"), never "robust"; and the worst case counts the gradient-free search's successes, which lower
the number the gradient attacks alone would report.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from safetensors.torch import save_file

import robustkit as rk
from domains.images import ImagesDomain, ImagesOptions
from robustkit.cli import main
from robustkit.evaluation import checks as ck

NETS = textwrap.dedent(
    """
    import torch
    from torch import nn

    from domains.images import build


    class Quantise(nn.Module):
        def forward(self, x):
            return torch.round(x * 2) / 2


    class SoftmaxLog(nn.Module):
        def forward(self, z):
            return torch.log(torch.softmax(z * 20, dim=1) + 1e-12)  # saturated: zero gradients


    class Noise(nn.Module):
        def forward(self, x):
            return (x + 0.2 * torch.randn_like(x)).clamp(0, 1)


    def cnn(channels, size, classes, mean, std):
        return build({"kind": "small-cnn", "channels": channels, "size": size, "classes": classes,
                      "mean": mean, "std": std, "width": 16})


    def quantised(channels, size, classes, mean, std):
        return nn.Sequential(Quantise(), cnn(channels, size, classes, mean, std))


    def softmax_log(channels, size, classes, mean, std):
        return nn.Sequential(nn.Identity(), cnn(channels, size, classes, mean, std), SoftmaxLog())


    def noisy(channels, size, classes, mean, std):
        return nn.Sequential(Noise(), cnn(channels, size, classes, mean, std))
    """
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weights of a standard digits CNN (12 epochs: confident, so a softmax saturates), keyed for
    ``nn.Sequential(defence, cnn, ...)`` (prefix ``1.``)."""
    folder = tmp_path_factory.mktemp("masked")
    (folder / "masked_nets.py").write_text(NETS)
    (folder / "small.yaml").write_text("options:\n  max_test: 120\n")
    domain = ImagesDomain()
    data = domain.load_data("digits", 0, ImagesOptions(max_test=120))
    model = domain.build_model(domain.model_spec(data, ImagesOptions()))
    trainer = rk.AdversarialTrainer(model, domain.space(0.15, data), "standard", progress=False)
    trainer.fit(domain.loader(data.train, 64, shuffle=True), epochs=12)
    save_file({f"1.{k}": v.contiguous() for k, v in model.state_dict().items()}, str(folder / "wrapped.safetensors"))
    return folder


def evaluate(folder: Path, factory: str, monkeypatch: pytest.MonkeyPatch, out: Path) -> dict:
    monkeypatch.chdir(folder)
    monkeypatch.delitem(__import__("sys").modules, "masked_nets", raising=False)
    assert main(["evaluate", "images", "--config", str(folder / "small.yaml"), "--model-factory",
                 f"masked_nets:{factory}", "--weights", str(folder / "wrapped.safetensors"), "--preset", "quick",
                 "--threads", "1", "--quiet", "--out", str(out)]) == 0
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize(
    ("factory", "check"), [("quantised", ck.GRADIENTS), ("softmax_log", ck.GRADIENTS), ("noisy", ck.DETERMINISTIC)]
)
def test_masked_models_are_never_called_robust_and_the_check_is_named(trained, monkeypatch, tmp_path, factory, check):
    metrics = evaluate(trained, factory, monkeypatch, tmp_path / "out")
    assert check in [c["name"] for c in metrics["checks"] if c["passed"] is False]
    verdict = metrics["models"]["evaluated"]["verdict"]
    assert verdict in (f"inconclusive: {check}", "not robust"), verdict
    if factory != "noisy":  # gradient masking inflates the number: the plain model falls below half its accuracy
        assert verdict == f"inconclusive: {check}"
    if factory == "quantised":  # the search's successes lower the worst case below every gradient attack's
        robust = metrics["models"]["evaluated"]["robust_accuracy"]
        assert robust["worst"] < min(v for k, v in robust.items() if k != "worst") - 0.05, robust
