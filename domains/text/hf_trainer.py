"""Adversarial training in your own Hugging Face ``transformers.Trainer`` fine-tuning script.

Swap ``Trainer`` for :class:`AdversarialHFTrainer` and pass ``adversarial=AdversarialArguments(...)``;
everything else stays as it is: the same ``TrainingArguments``, datasets, tokenizer,
``DataCollatorWithPadding`` (dynamic padding), callbacks, evaluation and ``save_model``. At each training
step the batch (``input_ids``, ``attention_mask``, optional ``token_type_ids``, ``labels``) is moved in the
embedding space and the model is trained on the moved batch, through ``inputs_embeds``:

* ``method="pgd"`` (default): robustkit's :class:`~robustkit.PGD` finds, in eval mode, per-token
  offsets inside :class:`~domains.text.model.TokenL2Ball` (each token's offset within L2 radius ``eps``)
  that maximise the loss; the training loss is the model's own loss on the moved batch (label
  smoothing, ``compute_loss_func`` and gradient accumulation work as in ``Trainer``).
* ``method="freelb"``: FreeLB-style (Zhu et al. 2020): ``steps`` ascent steps in train mode from a random
  start, the training loss is the mean of the losses along the way. All ``steps`` forward graphs are
  kept until the backward pass, so memory grows with ``steps``.

Offsets are in units of the mean norm of the model's input embedding rows (``eps=0.1``: a tenth of an
average token vector), as the text domain's own training. ``adv_weight`` mixes in the clean loss
(``(1 - w) * clean + w * adversarial``); ``attack_labels`` limits who is perturbed (e.g. ``[1]``: only
spam, as the text domain). Evaluation (``trainer.evaluate``) stays clean. The training logs gain
``adversarial_loss`` and ``clean_loss`` (means since the last log); :attr:`last_adversarial` holds the
last step's figures. An embedding ball is a training device: measure robustness with real-string
attacks (``robustkit evaluate text --model DIR``).

:class:`RobustRecallCallback` adds what the embedding ball cannot show to ``trainer.evaluate()``: spam
recall on clean texts and under the real-string obfuscation search of the text domain, on a small
evaluation subset, so it reaches the dashboards of ``report_to`` with the rest of the metrics.

A trainer class of your own takes the same behaviour from :class:`AdversarialTrainingMixin`:
``class MyTrainer(AdversarialTrainingMixin, MyTrainerBase)``.

Limits: single-label classification; a model that pools the last token (GPT-2 style) must use left
padding (with ``inputs_embeds`` it cannot find the last real token from ``input_ids``); needs
``accelerate`` (as ``Trainer`` does).

Example (a complete script; ``MODEL`` is a local folder with a ``save_pretrained`` model and tokenizer)::

    from datasets import load_dataset
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                              TrainingArguments)
    from domains.text.hf_trainer import AdversarialArguments, AdversarialHFTrainer

    MODEL = "models/minilm"
    tokenizer = AutoTokenizer.from_pretrained(MODEL, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(MODEL, num_labels=2, local_files_only=True)
    data = load_dataset("csv", data_files="sms.csv", split="train")       # columns text, label (0/1)
    data = data.map(lambda b: tokenizer(b["text"], truncation=True), batched=True)
    trainer = AdversarialHFTrainer(
        model=model,
        args=TrainingArguments("out", learning_rate=3e-5, num_train_epochs=2, report_to=[]),
        train_dataset=data,
        data_collator=DataCollatorWithPadding(tokenizer),
        adversarial=AdversarialArguments(eps=0.1, steps=3),              # the new line
    )
    trainer.train()

>>> AdversarialArguments(eps=0.2, steps=3).space(dim=32)
TokenL2Ball(eps=0.2, dim=32)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback

from robustkit import _random
from robustkit.attacks import PGD, DiscreteSearch
from robustkit.errors import ConfigError, DataError
from robustkit.models import frozen_eval, logits_of, model_device

from .hf import HFTextClassifier
from .model import TokenL2Ball
from .obfuscation import ObfuscationSpace

__all__ = [
    "AdversarialArguments",
    "AdversarialHFTrainer",
    "AdversarialStep",
    "AdversarialTrainingMixin",
    "EmbeddingView",
    "RobustRecallCallback",
    "robust_spam_recall",
]

METHODS = ("pgd", "freelb")
#: batch keys the embedding view understands; others (``position_ids`` ...) are refused
_KNOWN_KEYS = {"input_ids", "attention_mask", "token_type_ids", "labels"}


@dataclass
class AdversarialArguments:
    """How :class:`AdversarialHFTrainer` perturbs each training batch (the ``TrainingArguments`` of the attack).

    ``HfArgumentParser((TrainingArguments, AdversarialArguments))`` parses it from the command line with
    the rest (``--eps 0.2 --attack_labels 1``; several labels: ``--attack_labels 0 1``).

    Attributes:
        method: ``"pgd"`` (eval-mode PGD, then train on the result) or ``"freelb"`` (train-mode ascent,
            losses along the way averaged).
        eps: per-token L2 radius of the embedding offset, in units of the mean embedding norm.
        steps: ascent steps per batch.
        step_size: step length (default: PGD's ``2.5 * eps / steps``).
        adv_weight: weight of the adversarial loss; ``1 - adv_weight`` goes to the clean loss.
        attack_labels: labels whose examples are perturbed (None: all).
        log_clean_loss: with ``adv_weight == 1``, also compute the clean loss (one forward pass without
            gradients) for the logs.
    """

    method: str = field(default="pgd", metadata={"help": "pgd or freelb", "choices": list(METHODS)})
    eps: float = field(default=0.1, metadata={"help": "per-token L2 radius, a share of the mean embedding norm"})
    steps: int = field(default=3, metadata={"help": "ascent steps per batch"})
    step_size: float | None = field(default=None, metadata={"help": "step length (default 2.5 * eps / steps)"})
    adv_weight: float = field(default=1.0, metadata={"help": "weight of the adversarial loss (rest: clean loss)"})
    # a list, not a Sequence: HfArgumentParser reads list[int] as nargs="+"
    attack_labels: list[int] | None = field(default=None, metadata={"help": "labels perturbed (default: all)"})
    log_clean_loss: bool = field(default=True, metadata={"help": "log the clean loss when adv_weight is 1"})

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if isinstance(self.eps, bool) or not isinstance(self.eps, int | float) or not 0 < self.eps < math.inf:
            raise ConfigError(f"eps must be a positive number (a share of the mean embedding norm), got {self.eps!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"steps must be an integer >= 1, got {self.steps!r}")
        if self.step_size is not None and not 0 < float(self.step_size) < math.inf:
            raise ConfigError(f"step_size must be > 0, got {self.step_size!r}")
        if not 0.0 <= float(self.adv_weight) <= 1.0:
            raise ConfigError(f"adv_weight must lie in [0, 1], got {self.adv_weight!r}")

    def space(self, dim: int) -> TokenL2Ball:
        """The threat model for embeddings of size ``dim``."""
        return TokenL2Ball(eps=float(self.eps), dim=dim)


@dataclass
class AdversarialStep:
    """What one adversarial training step did.

    Attributes:
        step: the trainer's global step when the batch was perturbed.
        adversarial_loss: the training loss on the perturbed batch (FreeLB: mean along the ascent).
        clean_loss: the loss on the clean batch (None when not computed).
        max_offset: largest per-token offset norm, in units of the mean embedding norm.
        eps: the budget; ``within_budget``: every offset inside it and no token id moved.
        attacked: number of examples perturbed.
    """

    step: int
    adversarial_loss: float
    clean_loss: float | None
    max_offset: float
    eps: float
    within_budget: bool
    attacked: int


class EmbeddingView(nn.Module):
    """A Hugging Face sequence classifier seen through robustkit's packed text input ``(N, L, 1 + D)``.

    Channel 0 holds ``1 + id + V * token_type`` at attended positions and 0 at padding (``V``: the
    embedding rows), so a batch keeps its attention mask and token types when an attack takes a subset
    of its rows; channels ``1..D`` hold the embedding offset. The forward pass feeds the model
    ``inputs_embeds = E[ids] + scale * offset`` (``scale``: mean row norm of ``E``, detached) and
    returns its logits, so robustkit's attacks and :class:`TokenL2Ball` run on it unchanged.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model: Any = model
        table = model.get_input_embeddings()  # type: ignore[operator]
        if not isinstance(table, nn.Embedding):
            raise ConfigError(f"the model's input embeddings are {type(table).__name__}, not an nn.Embedding")
        self.table = table
        self.dim = int(table.weight.shape[1])
        self.vocab = int(table.num_embeddings)
        pad = getattr(getattr(model, "config", None), "pad_token_id", None)
        self.pad_id = int(pad) if isinstance(pad, int) and 0 <= pad < self.vocab else 0
        self.token_types = False

    def pack(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """The packed input of a tokenized batch (clean: zero offsets)."""
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        types = batch.get("token_type_ids")
        self.token_types = types is not None
        code = 1 + ids.long() + (0 if types is None else self.vocab * types.long())
        if mask is not None:
            code = code * (mask != 0)
        if code.numel() and int(code.max()) >= 2**24:
            raise DataError("token ids x token types exceed what the packed float input holds exactly (2**24)")
        x = torch.zeros(*ids.shape, 1 + self.dim, device=ids.device)
        x[..., 0] = code.float()
        return x

    def unpack(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Input embeddings (offset added), attention mask and token types of a packed input."""
        code = x[..., 0].round().long()
        mask = code > 0
        rest = (code - 1).clamp_min(0)
        ids = torch.where(mask, rest % self.vocab, torch.full_like(rest, self.pad_id))
        types = (rest // self.vocab) * mask if self.token_types else None
        scale = self.table.weight.detach().norm(dim=1).mean()
        embeds = self.table(ids) + (scale * x[..., 1:]).to(self.table.weight.dtype)
        return embeds, mask.long(), types

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        embeds, mask, types = self.unpack(x)
        extra = {} if types is None else {"token_type_ids": types}
        out = self.model(inputs_embeds=embeds, attention_mask=mask, **extra)
        logits: torch.Tensor = out.logits if hasattr(out, "logits") else out[0]
        return logits


class AdversarialTrainingMixin:
    """``compute_loss`` on embedding-space adversarial batches, for any ``transformers.Trainer`` subclass.

    Put it first: ``class MyTrainer(AdversarialTrainingMixin, Trainer)``; construct with
    ``adversarial=AdversarialArguments(...)`` besides the usual ``Trainer`` arguments.
    """

    adversarial: AdversarialArguments
    last_adversarial: AdversarialStep | None

    def __init__(self, *args: Any, adversarial: AdversarialArguments | None = None, **kwargs: Any) -> None:
        if adversarial is not None and not isinstance(adversarial, AdversarialArguments):
            raise ConfigError(f"adversarial must be AdversarialArguments, got {type(adversarial).__name__}")
        self.adversarial = adversarial or AdversarialArguments()
        self.last_adversarial = None
        #: since the last log: sum of adversarial losses, steps, sum of clean losses, steps with one
        self._adv_sums = [0.0, 0, 0.0, 0]
        super().__init__(*args, **kwargs)

    # ----------------------------------------------------------------- Trainer hooks
    def compute_loss(
        self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
        num_items_in_batch: Any = None, **kwargs: Any,
    ) -> Any:
        """The loss on the perturbed batch while training; the usual clean loss in evaluation."""
        if num_items_in_batch is not None:
            kwargs["num_items_in_batch"] = num_items_in_batch
        if not model.training:
            return self._stock_loss(model, dict(inputs), return_outputs, kwargs)
        settings = self.adversarial
        view, x, labels = self._prepare(model, inputs)
        space = settings.space(view.dim)
        attack_rows = self._attack_rows(labels)
        state = getattr(self, "state", None)
        step = int(getattr(state, "global_step", 0))
        seed = _random.derive(int(getattr(getattr(self, "args", None), "seed", 0)), step)
        if settings.method == "pgd":
            pgd = PGD(space, steps=settings.steps, step_size=settings.step_size, seed=seed, early_stop=False)
            x_adv = pgd(view, x, labels, mask=attack_rows).x_adv
            adv_loss, outputs = self._loss_at(model, view, x_adv, inputs, kwargs)
        else:
            x_adv, adv_loss, outputs = self._freelb(model, view, space, x, labels, attack_rows, inputs, kwargs, seed)
        clean: torch.Tensor | None = None
        loss = adv_loss
        if settings.adv_weight < 1.0:
            clean = self._stock_loss(model, dict(inputs), False, kwargs)
            loss = (1.0 - settings.adv_weight) * clean + settings.adv_weight * adv_loss
        elif settings.log_clean_loss:
            with torch.no_grad():
                clean = self._stock_loss(model, dict(inputs), False, kwargs)
        self._record(step, space, x, x_adv, adv_loss, clean, int(attack_rows.sum()))
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Add ``adversarial_loss`` and ``clean_loss`` (means since the last training log) to the logs."""
        adv, n, clean, n_clean = self._adv_sums
        if n and "loss" in logs:
            logs["adversarial_loss"] = round(adv / n, 4)
            if n_clean:
                logs["clean_loss"] = round(clean / n_clean, 4)
            self._adv_sums = [0.0, 0, 0.0, 0]
        super().log(logs, *args, **kwargs)  # type: ignore[misc]

    # ----------------------------------------------------------------- helpers
    def _stock_loss(
        self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool, kwargs: dict[str, Any]
    ) -> Any:
        return super().compute_loss(model, inputs, return_outputs=return_outputs, **kwargs)  # type: ignore[misc]

    def _unwrapped(self, model: nn.Module) -> nn.Module:
        accelerator = getattr(self, "accelerator", None)
        core = accelerator.unwrap_model(model) if accelerator is not None else model
        return core if isinstance(core, nn.Module) else model

    def _prepare(self, model: nn.Module, inputs: Mapping[str, Any]) -> tuple[EmbeddingView, torch.Tensor, torch.Tensor]:
        unknown = sorted(k for k, v in inputs.items() if isinstance(v, torch.Tensor) and k not in _KNOWN_KEYS)
        if unknown:
            raise DataError(
                f"adversarial training reads input_ids, attention_mask, token_type_ids and labels; the batch also "
                f"holds {', '.join(unknown)}: drop those columns (or keep Trainer's remove_unused_columns=True)"
            )
        if "input_ids" not in inputs:
            raise DataError("adversarial training needs input_ids in the batch (tokenize the texts first)")
        labels = inputs.get("labels")
        if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or torch.is_floating_point(labels):
            raise DataError(
                "adversarial training needs integer class labels, one per example, under 'labels' "
                "(single-label classification)"
            )
        core = self._unwrapped(model)
        problem = getattr(getattr(core, "config", None), "problem_type", None)
        if problem not in (None, "single_label_classification"):
            raise ConfigError(f"adversarial training supports single-label classification, not {problem!r}")
        view = EmbeddingView(core)
        return view, view.pack(inputs), labels

    def _attack_rows(self, labels: torch.Tensor) -> torch.Tensor:
        chosen = self.adversarial.attack_labels
        if chosen is None:
            return torch.ones(len(labels), dtype=torch.bool, device=labels.device)
        return torch.isin(labels, torch.as_tensor(list(chosen), device=labels.device))

    def _loss_at(
        self, model: nn.Module, view: EmbeddingView, x_adv: torch.Tensor, inputs: Mapping[str, Any],
        kwargs: dict[str, Any],
    ) -> tuple[torch.Tensor, Any]:
        """The Trainer's own loss (and outputs) of the batch at the packed point ``x_adv``."""
        embeds, _, _ = view.unpack(x_adv)
        moved = {k: v for k, v in inputs.items() if k != "input_ids"}
        moved["inputs_embeds"] = embeds
        loss, outputs = self._stock_loss(model, moved, True, kwargs)
        return loss, outputs

    def _freelb(
        self, model: nn.Module, view: EmbeddingView, space: TokenL2Ball, x: torch.Tensor, labels: torch.Tensor,
        rows: torch.Tensor, inputs: Mapping[str, Any], kwargs: dict[str, Any], seed: int,
    ) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """FreeLB-style ascent in train mode: returns the last point, the mean loss along the way, outputs."""
        settings = self.adversarial
        keep = rows.view(-1, 1, 1)
        alpha = settings.step_size if settings.step_size is not None else space.default_step_size(settings.steps)
        x_adv = torch.where(keep, space.init(x, seed=seed), x)
        total: torch.Tensor | None = None
        outputs: Any = None
        for t in range(settings.steps):
            point = x_adv.detach().requires_grad_(True)
            loss, outputs = self._loss_at(model, view, point, inputs, kwargs)
            total = loss if total is None else total + loss
            if t + 1 < settings.steps:
                (grad,) = torch.autograd.grad(loss, point, retain_graph=True)
                moved = space.project(space.step(point.detach(), grad, alpha), x)
                x_adv = torch.where(keep, moved, x)
        assert total is not None
        return x_adv.detach(), total / settings.steps, outputs

    def _record(
        self, step: int, space: TokenL2Ball, x: torch.Tensor, x_adv: torch.Tensor, adv: torch.Tensor,
        clean: torch.Tensor | None, attacked: int,
    ) -> None:
        with torch.no_grad():
            offsets = space.norm(x_adv - x)
            inside = bool(space.contains(x_adv, x).all())
        clean_value = None if clean is None else float(clean.detach())
        self.last_adversarial = AdversarialStep(
            step, float(adv.detach()), clean_value, float(offsets.max()) if len(offsets) else 0.0,
            space.eps, inside, attacked,
        )
        self._adv_sums[0] += float(adv.detach())
        self._adv_sums[1] += 1
        if clean_value is not None:
            self._adv_sums[2] += clean_value
            self._adv_sums[3] += 1


class AdversarialHFTrainer(AdversarialTrainingMixin, Trainer):
    """``transformers.Trainer`` with embedding-space adversarial training (see the module docstring).

    Takes every ``Trainer`` argument plus ``adversarial=AdversarialArguments(...)`` (default: PGD,
    ``eps=0.1``, 3 steps, every example perturbed).
    """


def robust_spam_recall(
    model: nn.Module, tokenizer: Any, texts: Sequence[str], budget: float = 3, *, spam_label: int = 1,
    candidates_per_step: int = 8, seed: int = 0,
) -> dict[str, float]:
    """Spam recall of a Hugging Face classifier on the spam ``texts``, clean and under the text domain's
    obfuscation search (:class:`~domains.text.obfuscation.ObfuscationSpace`, at most ``budget`` edited
    words each), with the model's own decision (the larger logit).

    Returns ``spam_recall`` and ``robust_spam_recall`` (flagged clean and still flagged after the search).
    """
    if not texts:
        raise DataError("robust spam recall needs at least one spam text")
    wrapped = HFTextClassifier(model, tokenizer)
    space = ObfuscationSpace(wrapped.tokenizer, wrapped.dim, float(budget), embedding=wrapped.embedding.weight)
    device = model_device(wrapped)
    labels = torch.full((len(texts),), spam_label, dtype=torch.long)

    def flagged(batch: Sequence[str]) -> torch.Tensor:
        with torch.no_grad():
            return (logits_of(wrapped(space.encode(batch, device))).argmax(1) == spam_label).cpu()

    with frozen_eval(wrapped):
        clean = flagged(texts)
        result = DiscreteSearch(space, candidates_per_step=candidates_per_step, seed=seed)(wrapped, list(texts), labels)
        attacked = clean & flagged(result.x_adv)
    return {"spam_recall": float(clean.float().mean()), "robust_spam_recall": float(attacked.float().mean())}


class RobustRecallCallback(TrainerCallback):
    """Adds ``<prefix>_spam_recall`` and ``<prefix>_robust_spam_recall`` (:func:`robust_spam_recall` on
    the first ``max_texts`` spam texts given) to every evaluation's metrics: ``trainer.evaluate()``
    returns them, and the ``report_to`` loggers and ``trainer.state.log_history`` receive them.

    Install it with :meth:`add_to` (it must run before the loggers, which read the same figures);
    the tokenizer is the trainer's ``processing_class`` unless ``tokenizer`` is given. Each evaluation
    runs the search once, so keep ``max_texts`` small.

    Example (``trainer`` an ``AdversarialHFTrainer`` or any ``Trainer``; ``val`` a list of texts and labels)::

        RobustRecallCallback(val_texts, val_labels, budget=3, max_texts=64).add_to(trainer)
        trainer.evaluate()["eval_robust_spam_recall"]
    """

    def __init__(
        self, texts: Sequence[str], labels: Sequence[int], *, budget: float = 3, max_texts: int = 64,
        spam_label: int = 1, tokenizer: Any = None, candidates_per_step: int = 8, seed: int = 0,
    ) -> None:
        if len(texts) != len(labels):
            raise DataError(f"{len(texts)} texts but {len(labels)} labels: pass one label per text")
        self.texts = [str(t) for t, y in zip(texts, labels, strict=True) if int(y) == spam_label][:max_texts]
        if not self.texts:
            raise DataError(f"no text has the spam label {spam_label}: pass evaluation texts that include spam")
        if isinstance(budget, bool) or not isinstance(budget, int | float) or not budget >= 1:
            raise ConfigError(f"budget must be a number of edited words >= 1, got {budget!r}")
        self.budget, self.spam_label, self.tokenizer = float(budget), spam_label, tokenizer
        self.candidates_per_step, self.seed = candidates_per_step, seed

    def add_to(self, trainer: Trainer) -> RobustRecallCallback:
        """Install in ``trainer`` ahead of its other callbacks (the loggers then see the added figures)."""
        trainer.callback_handler.callbacks.insert(0, self)
        return self

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
               model: nn.Module | None = None, processing_class: Any = None, **kwargs: Any) -> None:
        # an evaluation's logs carry "<prefix>_runtime" (training's own summary carries "train_runtime")
        prefix = next((k[: -len("_runtime")] for k in logs or {} if k.endswith("_runtime") and k != "train_runtime"),
                      None)
        if logs is None or prefix is None or model is None:
            return
        tokenizer = self.tokenizer or processing_class
        if tokenizer is None:
            raise ConfigError("RobustRecallCallback needs the tokenizer: pass processing_class=tokenizer to the "
                              "Trainer, or tokenizer= to the callback")
        figures = robust_spam_recall(model, tokenizer, self.texts, self.budget, spam_label=self.spam_label,
                                     candidates_per_step=self.candidates_per_step, seed=self.seed)
        added = {f"{prefix}_{k}": round(v, 4) for k, v in figures.items()}
        logs.update(added)
        last = state.log_history[-1] if state.log_history else {}
        if last.get(f"{prefix}_runtime") == logs[f"{prefix}_runtime"]:  # the copy Trainer.log kept
            last.update(added)
