"""Discrete adversarial training: train on real obfuscated spam, regenerated against the current model.

The shared trainer loop trains on tensors (token ids), while obfuscation edits strings; so the
adversarial data is made between epochs, as TextAttack's ``train --attack`` does, not inside a batch:
:class:`DiscreteAdversarialTraining` is a training method (plain cross-entropy on the batch) that is
also a trainer callback. Before every epoch (after ``clean_epochs`` clean ones) it attacks the
**current** model with the shared :class:`~robustkit.DiscreteSearch` over the
:class:`~domains.text.obfuscation.ObfuscationSpace`, on a ``share`` of the training spam (towards
ham; ham is never edited), and swaps the token ids of those texts for the ids of their adversarial
versions; after training the clean ids are put back. The search runs without early stopping, so a
training text goes as far past the decision boundary as the budget allows (a filter decides at a
threshold well below 0.5). So that the model does not learn only its own attack's slice of the threat
model, every epoch draws a fresh sample of the space's candidates (:meth:`ObfuscationSpace.with_seed`)
and a share of the edits the search checks each round are drawn at random rather than by their
gradient rank (random-greedy moves); with ``restarts`` it also searches again, on another sample, the
texts it failed on (off by default: it doubles the cost of an epoch's attack on a hardened model,
which fails on most texts).

:class:`RandomEditsTraining` is the control: the same budget and the same space, but each edit is
drawn at random from the space's candidates instead of searched against the model.

In ``robustkit harden text`` they are the methods ``discrete`` and ``random-edits``.

Example:
    >>> import torch, robustkit as rk
    >>> from domains.text import TextDomain
    >>> _ = torch.manual_seed(0)
    >>> domain = TextDomain()
    >>> options = domain.parse_options({})
    >>> data = domain.load_data("demo:100", seed=0, options=options)
    >>> model = domain.build_model(domain.model_spec(data, options))
    >>> method = domain.training_method("discrete", data, budget=2)
    >>> trainer = rk.AdversarialTrainer(model, domain.space(2, data), method=method, progress=False)
    >>> _ = trainer.fit(domain.loader(data.train, 32, shuffle=True), epochs=2)
    >>> len(method.generated) == sum(data.train.labels), method.space.contains(method.generated, method.sources).all()
    (True, tensor(True))
"""

from __future__ import annotations

import logging
import random
from typing import Any, Protocol

import torch
from torch import nn

from robustkit import DiscreteSearch
from robustkit._random import derive
from robustkit.errors import ConfigError
from robustkit.models import frozen_eval, logits_of, model_device
from robustkit.training.callbacks import Callback
from robustkit.training.methods import Standard

from .model import encode_ids
from .obfuscation import ObfuscationSpace

log = logging.getLogger("robustkit")

__all__ = ["METHODS", "DiscreteAdversarialTraining", "RandomEditsTraining", "make_method"]


class TextSplit(Protocol):
    """What the methods need of a training split (:class:`~domains.text.TextDataset` has it)."""

    texts: list[str]
    labels: list[int]
    ids: list[list[int]]


class DiscreteAdversarialTraining(Standard, Callback):
    """Cross-entropy on a training set whose spam is replaced, every epoch, by attacks on the current model.

    Args:
        dataset: the training split; its ``ids`` are swapped in place (and restored after training).
        space: the obfuscation space at the training budget (with the normaliser the model uses, if any).
        share: share of the training spam given an adversarial version each epoch (drawn anew every epoch).
        clean_epochs: epochs trained on clean data first (attacking an untrained model teaches little).
        candidates_per_step: candidates per edit the search checks exactly.
        restarts: searches per text, each on another sample of candidates where the ones before failed.
        random_share: share of the candidates checked each round drawn at random, not by gradient rank.
    """

    name = "discrete"
    # the trainer's validation attacks token embeddings, not obfuscations: keep the last epoch
    select_by_validation = False

    def __init__(
        self,
        dataset: TextSplit,
        space: ObfuscationSpace,
        *,
        share: float = 1.0,
        clean_epochs: int = 1,
        candidates_per_step: int = 4,
        restarts: int = 1,
        random_share: float = 0.25,
    ) -> None:
        if (not 0 < share <= 1 or clean_epochs < 0 or candidates_per_step < 1 or restarts < 1
                or not 0 <= random_share <= 1):
            raise ConfigError("discrete training needs 0 < share <= 1, clean_epochs >= 0, candidates_per_step >= 1, "
                              "restarts >= 1 and 0 <= random_share <= 1")
        self.dataset, self.space = dataset, space
        self.share, self.clean_epochs = float(share), int(clean_epochs)
        self.candidates_per_step = int(candidates_per_step)
        self.restarts, self.random_share = int(restarts), float(random_share)
        self._clean_ids = [list(i) for i in dataset.ids]
        self._spam = [i for i, y in enumerate(dataset.labels) if int(y) == 1]
        self._success: float | None = None
        #: the training texts attacked last, and their adversarial versions (what the model trained on)
        self.sources: list[str] = []
        self.generated: list[str] = []

    # ----------------------------------------------------------------- generation
    def _generate(self, model: nn.Module, texts: list[str], seed: int) -> tuple[list[str], torch.Tensor]:
        """Adversarial versions of ``texts`` (spam) and whether each crosses the model's argmax."""
        space = self.space.with_seed(seed)
        table = getattr(getattr(model, "embedding", None), "weight", None)
        space.embedding = table if isinstance(table, torch.Tensor) else None
        y = torch.ones(len(texts), dtype=torch.long, device=model_device(model))
        search = DiscreteSearch(space, candidates_per_step=self.candidates_per_step, early_stop=False,
                                restarts=self.restarts, random_share=self.random_share, seed=seed)
        with frozen_eval(model):
            result = search(model, texts, y)
        return list(result.x_adv), result.success.cpu()

    def _regenerate(self, model: nn.Module, epoch: int, seed: int) -> None:
        self.dataset.ids[:] = [list(i) for i in self._clean_ids]
        rng = random.Random(f"{seed}:{epoch}")
        chosen = sorted(rng.sample(self._spam, round(self.share * len(self._spam)))) if self._spam else []
        if not chosen:
            return
        self.sources = [self.dataset.texts[i] for i in chosen]
        self.generated, success = self._generate(model, self.sources, derive(seed, epoch))
        ids = encode_ids(self.space.tokenizer, [self.space.model_text(t) for t in self.generated])
        for i, new in zip(chosen, ids, strict=True):
            self.dataset.ids[i] = new
        self._success = float(success.float().mean())

    # ----------------------------------------------------------------- trainer hooks
    def on_fit_start(self, trainer: Any) -> None:
        if trainer.total_epochs <= self.clean_epochs:
            log.warning("%s training for %d epoch(s) with %d clean epoch(s) first trains on clean data only: "
                        "give more epochs", self.name, trainer.total_epochs, self.clean_epochs)

    def on_epoch_start(self, trainer: Any) -> None:
        self._success = None
        if trainer.epoch >= self.clean_epochs:
            self._regenerate(trainer.model, trainer.epoch, trainer.seed)

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None:
        if self._success is not None:
            record["train_attack_success"] = self._success

    def on_fit_end(self, trainer: Any) -> None:
        self.dataset.ids[:] = [list(i) for i in self._clean_ids]

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "budget": self.space.budget,
            "max_edited_share": self.space.max_share,
            "share": self.share,
            "clean_epochs": self.clean_epochs,
            "candidates_per_step": self.candidates_per_step,
            "restarts": self.restarts,
            "random_share": self.random_share,
            "tricks": sorted(self.space.tricks),
        }


class RandomEditsTraining(DiscreteAdversarialTraining):
    """The control: the same budget and space, each edit drawn at random from the space's candidates."""

    name = "random-edits"

    def _generate(self, model: nn.Module, texts: list[str], seed: int) -> tuple[list[str], torch.Tensor]:
        out = []
        space = self.space.with_seed(seed)
        for i, text in enumerate(texts):
            rng = random.Random(f"{seed}:{i}")
            current = text
            for _ in range(int(space.budget)):
                edits = space.candidates(current, text)
                if not edits:
                    break
                current = space.apply(current, rng.choice(edits))
            out.append(current)
        with frozen_eval(model), torch.no_grad():
            logits = model(self.space.encode(out, model_device(model)))
        return out, (logits_of(logits).argmax(dim=1) != 1).cpu()


#: the text domain's own training methods, by name
METHODS: dict[str, type[DiscreteAdversarialTraining]] = {
    "discrete": DiscreteAdversarialTraining,
    "random-edits": RandomEditsTraining,
}


def make_method(name: str, dataset: TextSplit, space: ObfuscationSpace, **options: Any) -> DiscreteAdversarialTraining:
    """The method called ``name`` (:data:`METHODS`) over ``dataset`` and ``space``."""
    if name not in METHODS:
        raise ConfigError(f"unknown text training method {name!r}: choose one of {', '.join(METHODS)}")
    return METHODS[name](dataset, space, **options)
