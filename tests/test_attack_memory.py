"""A batch too large for memory makes an attack slower, not a crash: it halves its chunk and goes on."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import robustkit as rk
from tests.test_evaluate import BOX, blobs, trained_mlp


class SmallMemory(nn.Module):
    """Wraps a model; a batch of more than ``limit`` examples fails like the allocator on a small machine."""

    def __init__(self, model: nn.Module, limit: int) -> None:
        super().__init__()
        self.model, self.limit = model, limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) > self.limit:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9999999999 bytes")
        return self.model(x)


SPACE = rk.LinfBall(eps=0.2, bounds=BOX)


@pytest.mark.parametrize(
    "attack",
    [rk.PGD(SPACE, steps=10, seed=3), rk.APGD(SPACE, steps=20, seed=3), rk.RandomSearch(SPACE, queries=50, seed=3)],
    ids=["pgd", "apgd", "random-search"],
)
def test_an_attack_out_of_memory_halves_its_chunk_and_gives_the_same_examples(attack: rk.attacks.Attack) -> None:
    x, y = blobs(100)
    model = trained_mlp()
    whole = attack(model, x, y)
    chunked = attack(SmallMemory(model, limit=30), x, y)
    assert torch.equal(chunked.x_adv, whole.x_adv) and torch.equal(chunked.success, whole.success)
    assert chunked.info["chunk_size"] <= 30 and chunked.forward_passes >= whole.forward_passes
    assert bool(SPACE.contains(chunked.x_adv, x).all())


def test_evaluate_on_a_small_machine_gives_the_same_numbers() -> None:
    x, y = blobs(120)
    model = trained_mlp()
    big = rk.evaluate(model, (x, y), SPACE, attacks="quick", batch_size=120)
    small = rk.evaluate(SmallMemory(model, limit=60), (x, y), SPACE, attacks="quick", batch_size=120)
    assert small.robust_accuracy == big.robust_accuracy and small.verdict == big.verdict
    assert [c.passed for c in small.checks] == [c.passed for c in big.checks]


def test_one_example_that_does_not_fit_is_a_clear_error() -> None:
    x, y = blobs(8)
    with pytest.raises(rk.ModelError, match="even one example"):
        rk.PGD(rk.LinfBall(eps=0.2, bounds=BOX), steps=3)(SmallMemory(trained_mlp(), limit=0), x, y)
