"""The adversarial training loop, written once for every method and every domain.

Example:
    >>> import torch, robustkit as rk
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> x, y = rk.datasets.robust_nonrobust(256, seed=0)
    >>> model = torch.nn.Sequential(torch.nn.Linear(130, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    >>> space = rk.LinfBall(eps=0.25, bounds=rk.datasets.TOY_BOUNDS)
    >>> trainer = rk.AdversarialTrainer(model, space, method="pgd", progress=False)
    >>> history = trainer.fit(DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True), epochs=1)
    >>> list(history["epoch"])
    [1]
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from robustkit import _random, distributed
from robustkit._renamed import renamed
from robustkit.attacks import PGD, Attack
from robustkit.attacks.base import seed_value
from robustkit.errors import ConfigError, DataError
from robustkit.models import AMP_CHOICES, autocast, autocast_dtype, frozen_eval, logits_of, model_device, out_of_memory
from robustkit.spaces import ContinuousSpace
from robustkit.training import methods as methods_mod
from robustkit.training.callbacks import Callback, TrainerControl
from robustkit.training.checkpoint import load_checkpoint, save_checkpoint
from robustkit.training.methods import Batch, Loss, Method

__all__ = ["AdversarialTrainer"]

log = logging.getLogger("robustkit")

AttackableFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _val_batches(data: Any, batch_size: int = 256) -> Any:
    """Validation data as batches: a DataLoader as it is, a tuple ``(x, y)`` of tensors cut into batches."""
    if not isinstance(data, tuple):
        return data
    if len(data) != 2 or not all(isinstance(t, torch.Tensor) for t in data):
        raise DataError("val_loader must be a DataLoader of (x, y) batches or a tuple (x, y) of tensors")
    x, y = data
    if len(x) != len(y) or len(x) == 0:
        raise DataError(f"val_loader=(x, y) needs one label per input and at least one example, got {len(x)} "
                        f"inputs and {len(y)} labels")
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)]


def _input_form(x: torch.Tensor) -> tuple[int, int, torch.dtype]:
    """What every batch of one fit shares: number of dims, size of the last one (features, channels of a
    token, pixels of a row), dtype. Other sizes may vary (texts are padded to their batch's longest)."""
    return x.dim(), x.shape[-1] if x.dim() else 0, x.dtype


def _unpack(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, dict):
        if "x" not in batch or "y" not in batch:
            raise DataError(f"a dict batch needs keys 'x' and 'y', got {sorted(map(str, batch))}")
        return batch["x"], batch["y"]
    if isinstance(batch, Sequence) and len(batch) >= 2:
        return batch[0], batch[1]
    raise DataError("each batch must be (inputs, labels) or a dict with 'x' and 'y'")


def _sample_weight(batch: Any, n: int) -> torch.Tensor | None:
    """The per-example loss weights a batch carries: a third element ``(x, y, w)`` or a dict's ``"weight"``."""
    if isinstance(batch, dict):
        w = batch.get("weight")
    else:
        w = batch[2] if isinstance(batch, Sequence) and len(batch) >= 3 else None
    if w is None:
        return None
    w = torch.as_tensor(w, dtype=torch.float32)
    if w.shape != (n,):
        raise DataError(f"a batch of {n} examples carries sample weights of shape {tuple(w.shape)}: pass one weight "
                        "per example")
    return w


class AdversarialTrainer:
    """Train ``model`` to resist perturbations from ``space`` with a training ``method``.

    Args:
        model: any ``nn.Module`` returning logits.
        space: the continuous perturbation space at the full training budget.
        method: a name (``standard``, ``fgsm-mix``, ``fast``, ``pgd``, ``trades``, ``free``) or a
            configured :class:`~robustkit.training.methods.Method`. A method that is also a
            :class:`~robustkit.training.callbacks.Callback` (e.g. one that regenerates adversarial
            training data every epoch) receives the callback hooks first, then the callbacks it brings
            (:meth:`~robustkit.training.methods.Method.callbacks`: ``fast``'s overfitting guard). The method
            alone decides whether the epoch with the best robust validation accuracy is kept
            (:attr:`~robustkit.training.methods.Method.select_by_validation`).
        optimizer: a torch optimizer over the model's parameters (default Adam, lr 1e-3).
        scheduler: optional LR scheduler, stepped every epoch or every optimizer step (``scheduler_interval``).
        budget_warmup: epochs over which the budget grows linearly from 0 to ``space.budget`` (per batch);
            ``eps_warmup``, its old name, is deprecated (a :class:`DeprecationWarning`; both: a ConfigError).
        class_weights: per-class loss weights, ``"balanced"`` (from the training labels), or None.
        attackable: optional function ``(x, y) -> bool mask`` of the examples that may be perturbed.
        val_attack: attack for robust validation accuracy (default PGD-10 over ``space``).
        checkpoint_dir: folder for a checkpoint after every epoch (needed by ``fit(resume=...)``).
        callbacks: :class:`~robustkit.training.callbacks.Callback` objects. They stop training through
            :attr:`control` (``trainer.control.stop(reason)``), read after every epoch's hooks.
        seed: seeds the data order and every attack's per-example random streams.
        device: where to train (default: the model's device). Under ``torchrun`` give each process
            its own device (:func:`robustkit.distributed.setup` returns it).
        amp: mixed precision for the training loss and the attacks inside it: ``"auto"`` (default) is
            bf16 on CUDA where supported, else fp16 with a gradient scaler, and full precision on CPU;
            ``"bf16"``/``"fp16"`` force it (fp16 on CUDA adds the scaler); None: full precision.
            Validation always runs in full precision.
        progress: show tqdm bars (default: when stderr is a terminal; rank 0 only).

    Under ``torchrun --nproc_per_node=N`` (with the process group joined, e.g. by
    :func:`robustkit.distributed.setup`) the same code trains with DistributedDataParallel: each
    process attacks and trains on its shard of a training loader with a
    :class:`~torch.utils.data.distributed.DistributedSampler` (:func:`robustkit.distributed.loader`
    builds one), validation is shared out and summed, and only rank 0 writes checkpoints. The
    result equals a single-process run with the same global batch and seed, up to float rounding.
    """

    def __init__(
        self,
        model: nn.Module,
        space: ContinuousSpace,
        method: str | Method = "pgd",
        optimizer: torch.optim.Optimizer | None = None,
        *,
        scheduler: Any = None,
        scheduler_interval: str = "epoch",
        budget_warmup: float = 0.0,
        class_weights: torch.Tensor | Sequence[float] | str | None = None,
        attackable: AttackableFn | None = None,
        val_attack: Attack | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        callbacks: Iterable[Callback] = (),
        seed: int = 0,
        device: str | torch.device | None = None,
        amp: str | None = "auto",
        progress: bool | None = None,
        eps_warmup: float | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(space, ContinuousSpace):
            raise ConfigError("AdversarialTrainer needs a continuous space such as rk.LinfBall or rk.L2Ball")
        if scheduler_interval not in ("epoch", "step"):
            raise ConfigError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
        # 0, the default, counts as not given
        warmup = renamed("eps_warmup", eps_warmup, "budget_warmup", budget_warmup or None, where="AdversarialTrainer")
        budget_warmup = 0.0 if warmup is None else warmup
        if not (isinstance(budget_warmup, int | float) and math.isfinite(budget_warmup) and budget_warmup >= 0):
            raise ConfigError(f"budget_warmup must be a number of epochs >= 0, got {budget_warmup!r}")
        if amp not in AMP_CHOICES:
            raise ConfigError(f"amp must be None, 'auto', 'bf16' or 'fp16', got {amp!r}")
        seed = seed_value(seed)
        try:
            self.device = torch.device(device) if device is not None else model_device(model)
        except (RuntimeError, TypeError) as exc:
            raise ConfigError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r} ({exc})") from None
        if optimizer is None and not any(p.requires_grad for p in model.parameters()):
            raise ConfigError("the model has no trainable parameters: pass a model with parameters (or an optimizer)")
        self.model = model.to(self.device)
        self.space = space
        self.method = methods_mod.get(method)
        self.optimizer = optimizer or torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.scheduler = scheduler
        self.scheduler_interval = scheduler_interval
        self.budget_warmup = float(budget_warmup)
        self._class_weights_arg = class_weights
        self.class_weights: torch.Tensor | None = None
        self.attackable = attackable
        self.val_attack = val_attack or PGD(space, steps=10, seed=seed)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        own = [self.method] if isinstance(self.method, Callback) else []
        self.callbacks = [*own, *self.method.callbacks(), *callbacks]
        self.seed = int(seed)
        self.amp = amp
        self.progress = (sys.stderr.isatty() if progress is None else progress) and distributed.is_main()
        self.history: list[dict[str, Any]] = []
        self.epoch = 0
        #: epochs of the current ``fit`` (set when it starts; callbacks may read it)
        self.total_epochs = 0
        self.global_step = 0
        #: what callbacks ask of the loop (:class:`~robustkit.training.callbacks.TrainerControl`), new every fit
        self.control = TrainerControl()
        self.best_score: float | None = None
        self._best_state: dict[str, torch.Tensor] | None = None
        #: a batch of validation data (the first training batch without any) for checks run every epoch
        self.held_out: tuple[torch.Tensor, torch.Tensor] | None = None
        self._scaler: Any = None
        self._n_classes = 0
        self._input_form: tuple[int, int, torch.dtype] | None = None
        self._net: nn.Module = model

    # ----------------------------------------------------------------- public API
    def fit(
        self,
        train_loader: Iterable[Any],
        epochs: int,
        val_loader: Iterable[Any] | tuple[torch.Tensor, torch.Tensor] | None = None,
        resume: str | os.PathLike[str] | None = None,
    ) -> pd.DataFrame:
        """Train for ``epochs`` epochs (divided by the method's replays) and return the history.

        Training batches may carry per-example loss weights as a third element ``(x, y, w)`` (or a dict's
        ``"weight"``), scikit-learn's ``sample_weight``: the loss is their weighted mean, so an example of
        weight 0 trains like one left out. ``val_loader`` (a DataLoader, or a tuple ``(x, y)`` as
        :func:`robustkit.evaluate` takes) adds
        clean and robust validation accuracy per epoch and picks the best epoch.

        With ``resume`` (a checkpoint folder written by an earlier fit with the same settings),
        training continues after the last completed epoch and runs only the remaining steps.
        """
        if not isinstance(epochs, int) or epochs < 1:
            raise ConfigError(f"epochs must be an integer >= 1, got {epochs!r}")
        total_epochs = max(1, math.ceil(epochs / self.method.replays))
        self.total_epochs = total_epochs
        self._check_distributed(train_loader, val_loader)
        probe = self._probe(train_loader)
        _check_batch_norm(self.model, train_loader, probe[0])
        self._input_form = _input_form(probe[0])
        val_loader = _val_batches(val_loader)
        if val_loader is not None:
            self._probe(val_loader)
        self._setup_class_weights(train_loader)
        self.held_out = self._held_out(val_loader, probe)
        self.control = TrainerControl()
        if resume is not None:
            self._restore(resume)
        else:
            torch.manual_seed(self.seed)
            random.seed(self.seed)
        self._net = distributed.wrap(self.model, self.device)
        for cb in self.callbacks:
            cb.on_fit_start(self)
        while self.epoch < total_epochs and not self.control.should_stop:
            start = time.perf_counter()
            for cb in self.callbacks:
                cb.on_epoch_start(self)
            prepared = time.perf_counter() - start
            record = self._train_epoch(train_loader, total_epochs)
            record["train_seconds"] += prepared  # data made for this epoch by hooks is training time too
            record.update(self._validate(val_loader))
            self._select(record)
            self.history.append(record)
            # callbacks complete the record and may stop training before the checkpoint, so that a run resumed
            # from it has the same history and stops where the uninterrupted run stopped
            for cb in self.callbacks:
                cb.on_epoch_end(self, record)
            if self.control.should_stop:
                record["stop_reason"] = self.control.reason
                log.info("training stopped after epoch %d of %d: %s", self.epoch, total_epochs, self.control.reason)
            if self.checkpoint_dir is not None:
                self._save(total_epochs)
        if self.method.select_by_validation and self._best_state is not None:
            self.model.load_state_dict(self._best_state)
        for cb in self.callbacks:
            cb.on_fit_end(self)
        return self.history_frame()

    @property
    def stop_training(self) -> bool:
        """Whether a callback stopped training (``control.should_stop``).

        Setting it is deprecated: call ``trainer.control.stop(reason)``. Until it is removed, setting it to
        True still stops training (with a warning); setting it to False withdraws nothing, as a stop is final.
        """
        return self.control.should_stop

    @stop_training.setter
    def stop_training(self, value: bool) -> None:
        warnings.warn("setting trainer.stop_training is deprecated and will be removed in robustkit 0.3: call "
                      "trainer.control.stop('why') in the callback instead", DeprecationWarning, stacklevel=2)
        if value:
            self.control.stop("a callback set trainer.stop_training")

    def history_frame(self) -> pd.DataFrame:
        """Per-epoch training and validation figures as a DataFrame."""
        return pd.DataFrame(self.history)

    # ----------------------------------------------------------------- checks before work
    def _check_distributed(self, train_loader: Iterable[Any], val_loader: Any) -> None:
        """Under DDP, training data must be sharded and validation data must not be."""
        if not distributed.is_distributed():
            return
        dataset = getattr(train_loader, "dataset", None)
        if distributed.sampler_of(train_loader) is None and not isinstance(dataset, torch.utils.data.IterableDataset):
            raise ConfigError(
                f"running in {distributed.world_size()} processes, the training loader needs a DistributedSampler "
                "so that each process trains on its own shard: build it with "
                "robustkit.distributed.loader(dataset, batch_size) or DataLoader(..., sampler=DistributedSampler(...))"
            )
        if distributed.sampler_of(val_loader) is not None:
            raise ConfigError(
                "val_loader has a DistributedSampler: pass the whole validation data to every process; "
                "evaluation shares the work out itself and counts each example once"
            )

    def _probe(self, loader: Iterable[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            first = next(iter(loader))
        except StopIteration:
            raise DataError("the data loader is empty: give it at least one batch") from None
        x, y = _unpack(first)
        if not isinstance(x, torch.Tensor):
            raise DataError(f"inputs must be a tensor, got {type(x).__name__}")
        try:
            x, y = x.to(self.device), torch.as_tensor(y, device=self.device)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise DataError(f"labels must be a 1-D tensor of integer class indices ({exc})") from None
        if torch.is_floating_point(y) or y.dim() != 1:
            raise DataError("labels must be a 1-D tensor of integer class indices")
        if len(y) == 0:
            raise DataError("the first batch holds no example: give batches of at least one (input, label)")
        self.space.check_inputs(x)
        with frozen_eval(self.model), torch.no_grad():
            try:
                logits = logits_of(self.model(x))
            except RuntimeError as exc:
                if out_of_memory(exc):
                    raise
                first_line = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
                raise DataError(f"the model does not take these inputs ({first_line}): check the data's shape "
                                "and dtype against the model") from None
        if logits.shape[0] != len(y):
            raise DataError(f"the model returned {logits.shape[0]} rows for a batch of {len(y)}")
        if int(y.min()) < 0 or int(y.max()) >= logits.shape[1]:
            raise DataError(
                f"labels span {int(y.min())}..{int(y.max())} but the model outputs {logits.shape[1]} classes: "
                "labels must be class indices 0..C-1 matching the model's output"
            )
        self._n_classes = logits.shape[1]
        return x, y.long()

    def _setup_class_weights(self, loader: Iterable[Any]) -> None:
        cw = self._class_weights_arg
        if cw is None:
            self.class_weights = None
            return
        if isinstance(cw, str):
            if cw != "balanced":
                raise ConfigError(f"class_weights must be a list of weights or 'balanced', got {cw!r}")
            counts = torch.zeros(self._n_classes)
            for batch in loader:
                counts += torch.bincount(torch.as_tensor(_unpack(batch)[1]).long().cpu(), minlength=self._n_classes)
            counts = distributed.all_sum(counts)
            weights = counts.sum() / (self._n_classes * counts.clamp_min(1))
        else:
            try:
                weights = torch.as_tensor(cw, dtype=torch.float32)
            except (TypeError, ValueError, RuntimeError):
                raise ConfigError(f"class_weights must be a list of numbers or 'balanced', got {cw!r}") from None
            if (weights.shape != (self._n_classes,) or not bool(torch.isfinite(weights).all())
                    or bool((weights < 0).any()) or not bool((weights > 0).any())):
                raise ConfigError(f"class_weights needs {self._n_classes} finite non-negative weights, not all 0 "
                                  f"(all 0 would train nothing), got {cw!r}")
        self.class_weights = weights.to(self.device)

    # ----------------------------------------------------------------- one epoch
    def _budget(self, epoch: int, fraction: float) -> float:
        if self.budget_warmup <= 0:
            return self.space.budget
        return self.space.budget * min(1.0, (epoch + fraction) / self.budget_warmup)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        fp16 = autocast_dtype(self.device, self.amp) == torch.float16
        if self._scaler is None and self.device.type == "cuda" and fp16:
            self._scaler = torch.amp.GradScaler("cuda")
        return autocast(self.device, self.amp)

    def _train_epoch(self, loader: Iterable[Any], total_epochs: int) -> dict[str, Any]:
        epoch = self.epoch
        start = time.perf_counter()
        self.model.train()
        try:
            n_batches: int | None = len(loader)  # type: ignore[arg-type]
        except TypeError:  # an iterable or streamed dataset
            n_batches = None
        seed = _random.derive(self.seed, epoch)
        sampler = distributed.sampler_of(loader)
        if sampler is not None:
            sampler.set_epoch(epoch)
        # the k-th example this process sees is example k * world + rank of the epoch's global order
        world, rank = distributed.world_size(), distributed.rank()
        real = len(sampler.dataset) if sampler is not None else None  # type: ignore[arg-type]
        seen, steps = 0, 0
        stats = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss over steps, correct, counted
        bar = tqdm(loader, total=n_batches, desc=f"epoch {epoch + 1}/{total_epochs}", disable=not self.progress,
                   leave=False)
        for i, raw in enumerate(bar):
            x, y = _unpack(raw)
            if not isinstance(x, torch.Tensor) or _input_form(x) != self._input_form:
                form = _input_form(x) if isinstance(x, torch.Tensor) else type(x).__name__
                raise DataError(f"batch {i + 1} of epoch {epoch + 1} has inputs (dims, last size, dtype) {form}, "
                                f"the first batch {self._input_form}: every batch needs the same form")
            x, y = x.to(self.device), torch.as_tensor(y, device=self.device).long()
            fraction = i / n_batches if n_batches else 0.0
            space = self.space.with_budget(self._budget(epoch, fraction))
            attackable = (
                torch.ones(len(y), dtype=torch.bool, device=self.device)
                if self.attackable is None
                else torch.as_tensor(self.attackable(x, y), device=self.device).bool()
            )
            ids = torch.arange(seen, seen + len(y), device=self.device) * world + rank
            seen += len(y)
            weights = (ids < real).float() if real is not None else None  # 0 for the sampler's padding copies
            sample_weight = _sample_weight(raw, len(y))
            if sample_weight is not None:
                sample_weight = sample_weight.to(self.device)
                weights = sample_weight if weights is None else weights * sample_weight
            batch = Batch(self.model, x, y, space, attackable, ids, seed, self.class_weights, net=self._net,
                          weights=weights)
            for replay in range(self.method.replays):
                batch.replay = replay
                out = self._step(batch)
                steps += 1
                stats[0] += out.value.double()
                w = batch.example_weights(len(out.targets)).double()
                stats[1] += ((out.logits.argmax(1) == out.targets).double() * w).sum()
                stats[2] += w.sum()
                for cb in self.callbacks:
                    cb.on_step_end(self, float(out.value))
            bar.set_postfix(loss=f"{float(stats[0]) / max(steps, 1):.4f}")
        if steps == 0:
            raise DataError("the training loader yielded no batch in this epoch")
        stats = distributed.all_sum(stats)
        if self.scheduler is not None and self.scheduler_interval == "epoch":
            self.scheduler.step()
        self.epoch += 1
        return {
            "epoch": self.epoch,
            "budget": self._budget(epoch, 1.0),
            "lr": float(self.optimizer.param_groups[0]["lr"]),
            "train_loss": float(stats[0]) / world / steps,
            "train_accuracy": float(stats[1] / stats[2]) if float(stats[2]) > 0 else float("nan"),
            "train_seconds": time.perf_counter() - start,
        }

    def _step(self, batch: Batch) -> Loss:
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            out = self.method.loss(batch)
        if not isinstance(out, Loss):
            raise ConfigError(f"{type(self.method).__name__}.loss returned {type(out).__name__}: a method returns "
                              "rk.methods.Loss(value, logits, targets), e.g. batch.criterion(logits, y)")
        loss = out.value
        if not torch.isfinite(loss):
            raise DataError(
                f"the training loss became {float(loss)} at step {self.global_step}: lower the learning rate "
                "or check the inputs for extreme values"
            )
        if self._scaler is not None:
            self._scaler.scale(loss).backward()
            self._scaler.step(self.optimizer)
            self._scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.method.after_step(batch)
        self.global_step += 1
        if self.scheduler is not None and self.scheduler_interval == "step":
            self.scheduler.step()
        return Loss(loss.detach(), out.logits, out.targets)

    # ----------------------------------------------------------------- validation and selection
    def robust_accuracy(self, data: Any, attack: Attack) -> tuple[float, float, float]:
        """Clean accuracy, robust accuracy, and robust accuracy balanced over classes (mean per class)."""
        from robustkit.evaluation import evaluate

        report = evaluate(
            self.model, data, self.space, attacks=[attack], mask=self.attackable, checks=False, seed=self.seed
        )
        labels, robust = report.outcomes["label"], report.outcomes["robust"].float()
        per_class = [robust[labels == c].mean() for c in labels.unique()]
        return report.clean_accuracy, report.robust_accuracy["worst"], float(torch.stack(per_class).mean())

    def _validate(self, val_loader: Iterable[Any] | None) -> dict[str, Any]:
        if val_loader is None:
            return {}
        start = time.perf_counter()
        clean, robust, balanced = self.robust_accuracy(val_loader, self.val_attack)
        return {"val_clean_accuracy": clean, "val_robust_accuracy": robust, "val_robust_balanced_accuracy": balanced,
                "val_seconds": time.perf_counter() - start}

    def _select(self, record: dict[str, Any]) -> None:
        """Keep the weights with the best robust validation accuracy balanced over classes.

        Balancing matters on imbalanced data where only one class is attacked (fraud, spam): plain
        accuracy would reward a model that never predicts the attacked class.
        """
        score = record.get("val_robust_balanced_accuracy")
        if not self.method.select_by_validation or score is None:
            return
        if self.best_score is not None and score <= self.best_score:
            return
        self.best_score = float(score)
        record["best"] = True
        self._best_state = copy.deepcopy({k: v.detach().cpu() for k, v in self.model.state_dict().items()})

    def _held_out(
        self, val_loader: Iterable[Any] | None, probe: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if val_loader is None:
            return probe
        x, y = _unpack(next(iter(val_loader)))
        return x.to(self.device), torch.as_tensor(y, device=self.device).long()

    # ----------------------------------------------------------------- checkpoints
    def _save(self, total_epochs: int) -> None:
        assert self.checkpoint_dir is not None
        trainer_state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self._scaler.state_dict() if self._scaler is not None else None,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python_rng": random.getstate(),
            "callbacks": {key: cb.state_dict() for key, cb in self._keyed_callbacks()},
        }
        state = {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "total_epochs": total_epochs,
            "method": self.method.config(),
            "best_score": self.best_score,
            "history": self.history,
            "stopped": self.control.reason,
        }
        extra = {}
        if self._best_state is not None:
            extra["best"] = self._best_state
        if distributed.is_main():
            save_checkpoint(self.checkpoint_dir, self.epoch, self.model.state_dict(), trainer_state, state, extra)
        distributed.barrier()

    def _keyed_callbacks(self) -> list[tuple[str, Callback]]:
        """The callbacks with the key their state is saved under (position and class: resuming with the same
        settings gives the same keys)."""
        return [(f"{i}-{type(cb).__name__}", cb) for i, cb in enumerate(self.callbacks)]

    def _restore(self, directory: str | os.PathLike[str]) -> None:
        model_state, trainer_state, state, extra = load_checkpoint(directory, self.device)
        if state.get("method", {}).get("name") != self.method.name:
            raise ConfigError(
                f"the checkpoint was written by method {state.get('method')!r}, not {self.method.name!r}: "
                "resume with the same method"
            )
        _check_fits(self.model, model_state, self.optimizer, trainer_state.get("optimizer"), directory)
        self.model.load_state_dict(model_state)
        self.optimizer.load_state_dict(trainer_state["optimizer"])
        if self.scheduler is not None and trainer_state.get("scheduler") is not None:
            self.scheduler.load_state_dict(trainer_state["scheduler"])
        if trainer_state.get("scaler") is not None:
            self._autocast()  # creates the fp16 gradient scaler this run uses, if any
            if self._scaler is not None:
                self._scaler.load_state_dict(trainer_state["scaler"])
        torch.set_rng_state(trainer_state["torch_rng"])
        if trainer_state.get("cuda_rng"):
            torch.cuda.set_rng_state_all(trainer_state["cuda_rng"])
        py_state = trainer_state["python_rng"]
        random.setstate((py_state[0], tuple(py_state[1]), py_state[2]))
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.best_score = state.get("best_score")
        self.history = list(state.get("history", []))
        saved = trainer_state.get("callbacks", {})
        for key, cb in self._keyed_callbacks():
            if key in saved:
                cb.load_state_dict(saved[key])
        stopped = state.get("stopped")
        if stopped:  # a reason; True in checkpoints written before the control object
            self.control.stop(stopped if isinstance(stopped, str) else "a callback stopped training")
        self._best_state = extra.get("best")
        log.info("resumed from %s after epoch %d (step %d)%s", directory, self.epoch, self.global_step,
                 f"; training had stopped: {self.control.reason}" if self.control.should_stop else "")


def _check_batch_norm(model: nn.Module, loader: Iterable[Any], x: torch.Tensor) -> None:
    """Refuse a loader whose last batch holds one example if the model cannot train on one (batch normalisation
    over a single value per channel), before the earlier batches change the model."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    size, dataset = getattr(loader, "batch_size", None), getattr(loader, "dataset", None)
    if (not norms or not isinstance(size, int) or getattr(loader, "drop_last", False)
            or not hasattr(dataset, "__len__") or len(dataset) % size != 1):  # type: ignore[arg-type]
        return
    buffers = [(b, b.clone()) for m in norms for b in m.buffers()]  # a train-mode pass updates running stats
    was_training = model.training
    try:
        with torch.no_grad():
            model.train()(x[:1])
    except (ValueError, RuntimeError) as exc:
        raise DataError(
            f"the last training batch holds 1 of the {len(dataset)} examples ({exc}): pass "  # type: ignore[arg-type]
            "drop_last=True to the DataLoader or choose another batch size") from None
    finally:
        model.train(was_training)
        for buffer, saved in buffers:
            buffer.copy_(saved)


def _check_fits(
    model: nn.Module, model_state: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, saved: Any,
    directory: str | os.PathLike[str],
) -> None:
    """Refuse, before anything is changed, a checkpoint written for another architecture or optimizer."""
    current = model.state_dict()
    wrong = sorted(set(current) ^ set(model_state)) or [
        k for k in current if tuple(current[k].shape) != tuple(model_state[k].shape)]
    if wrong:
        raise ConfigError(f"the checkpoint in {directory} holds the weights of another model (first difference: "
                          f"{wrong[0]!r}): resume with the architecture that wrote it")
    groups = saved.get("param_groups") if isinstance(saved, dict) else None
    mine = optimizer.state_dict()["param_groups"]
    if (not isinstance(groups, list) or len(groups) != len(mine)
            or any(set(g) != set(m) or len(g.get("params", [])) != len(m["params"])
                   for g, m in zip(groups, mine, strict=True))):
        raise ConfigError(f"the checkpoint in {directory} was written with another optimizer (or other parameter "
                          f"groups) than {type(optimizer).__name__}: resume with the optimizer that wrote it")
