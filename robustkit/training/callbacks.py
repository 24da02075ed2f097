"""Callbacks: hooks into the training loop (logging, early stopping, experiment tracking, custom checks).

:class:`EpochLog` prints one line per epoch; :class:`TensorBoard` and :class:`MLflow` send the same
figures to the experiment trackers (optional extras: ``pip install 'robustkit[tracking]'``; each
library is imported only when its callback is built).

Example:
    >>> import robustkit as rk
    >>> class StopAfter(rk.training.Callback):
    ...     def on_epoch_end(self, trainer, record):
    ...         if record["epoch"] >= 2:
    ...             trainer.control.stop("two epochs are enough")
    >>> rk.callbacks.epoch_metrics({"epoch": 3, "train_loss": 0.5, "val_robust_accuracy": 0.25, "best": True})
    {'train/loss': 0.5, 'val/robust_accuracy': 0.25}
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import logging
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from tqdm.auto import tqdm

from robustkit.errors import ConfigError
from robustkit.training.methods import Method
from robustkit.training.methods import get as get_method

if TYPE_CHECKING:
    from robustkit.training.trainer import AdversarialTrainer

__all__ = ["Callback", "EpochLog", "MLflow", "OverfittingGuard", "RunClock", "TensorBoard", "Tracker", "TrainerControl",
           "check_verbose", "epoch_metrics", "require", "tracker"]

log = logging.getLogger("robustkit")

#: names ``--report-to`` takes
REPORT_TO = ("none", "tensorboard", "mlflow")


@dataclass
class TrainerControl:
    """What callbacks ask of the training loop, the one thing of the trainer they may change
    (``trainer.control``): a callback stops training with :meth:`stop` and a reason.

    The trainer reads it after each epoch's hooks: the epoch that is running finishes, its history record gets
    the reason under ``stop_reason``, the checkpoint is saved as stopped (a resumed fit trains no further), and
    no later epoch starts. A stop cannot be withdrawn; where several callbacks stop, the first reason is kept.

    Example:
        >>> control = TrainerControl()
        >>> control.stop("validation accuracy stopped rising")
        >>> control.should_stop, control.reason
        (True, 'validation accuracy stopped rising')
    """

    #: why training stops (None: it goes on)
    reason: str | None = None

    @property
    def should_stop(self) -> bool:
        """Whether a callback asked the loop to stop."""
        return self.reason is not None

    def stop(self, reason: str) -> None:
        """Stop training after the current epoch, saying why (shown in the log and kept in the history)."""
        if not isinstance(reason, str) or not reason.strip():
            raise ConfigError(f"TrainerControl.stop needs the reason as a non-empty string, got {reason!r}: "
                              "e.g. trainer.control.stop('validation loss stopped falling')")
        if self.reason is None:
            self.reason = reason.strip()


class Callback:
    """Base class: override the hooks you need; call ``trainer.control.stop(reason)`` to stop training
    (:class:`TrainerControl`). A callback changes no field of the trainer.

    A callback whose decisions depend on earlier epochs keeps that memory in :meth:`state_dict`: the trainer
    saves it in every checkpoint and hands it back through :meth:`load_state_dict` on resume, so a resumed
    run decides as the uninterrupted one would.
    """

    def state_dict(self) -> dict[str, Any]:
        """What this callback remembers across epochs (numbers, strings, lists, dicts, tensors); default none."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back what :meth:`state_dict` returned, when a fit resumes from a checkpoint."""

    def on_fit_start(self, trainer: AdversarialTrainer) -> None:
        """Before the first epoch (after a resume, before the first remaining epoch)."""

    def on_epoch_start(self, trainer: AdversarialTrainer) -> None:
        """Before every epoch (``trainer.epoch`` epochs are done); e.g. regenerate training data."""

    def on_step_end(self, trainer: AdversarialTrainer, loss: float) -> None:
        """After every optimizer step."""

    def on_epoch_end(self, trainer: AdversarialTrainer, record: dict[str, Any]) -> None:
        """After every epoch, with its history record (after validation, before the checkpoint: what it adds to
        ``record`` and a stop it asks of ``trainer.control`` are saved with the epoch)."""

    def on_fit_end(self, trainer: AdversarialTrainer) -> None:
        """After training (and after the best weights were restored)."""


class OverfittingGuard(Callback):
    """The guard against catastrophic overfitting that FGSM-based training brings (:class:`~robustkit.methods.Fast`
    adds it itself): after every epoch it measures PGD accuracy on a held-out batch, keeps the weights where it was
    best, and if it falls by more than ``drop`` below that best, restores them and stops training (Wong et al.
    2020). It adds ``guard_robust_accuracy`` and ``guard_fired`` to each epoch's record.

    Example:
        >>> guard = OverfittingGuard(drop=0.2, steps=10)
        >>> guard.state_dict()
        {'best': None, 'weights': None}
    """

    def __init__(self, drop: float = 0.2, steps: int = 10) -> None:
        if not 0 < drop <= 1 or steps < 1:
            raise ConfigError(f"OverfittingGuard needs 0 < drop <= 1 and steps >= 1, got drop={drop!r}, "
                              f"steps={steps!r}")
        self.drop, self.steps = float(drop), int(steps)
        self.best: float | None = None
        self.weights: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "weights": self.weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.weights = state.get("best"), state.get("weights")

    def on_epoch_end(self, trainer: AdversarialTrainer, record: dict[str, Any]) -> None:
        from robustkit.attacks import PGD

        attack = PGD(trainer.space, steps=self.steps, seed=trainer.seed)
        _, accuracy, _ = trainer.robust_accuracy(trainer.held_out, attack)
        record.update(guard_robust_accuracy=accuracy, guard_fired=False)
        if self.best is None or accuracy > self.best:
            self.best = accuracy
            self.weights = {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()}
        elif accuracy < self.best - self.drop:
            assert self.weights is not None
            log.warning("catastrophic overfitting: PGD accuracy on the held-out batch fell from %.3f to %.3f; "
                        "restoring the best weights and stopping", self.best, accuracy)
            trainer.model.load_state_dict(self.weights)
            record["guard_fired"] = True
            trainer.control.stop(f"catastrophic overfitting: PGD accuracy on the held-out batch fell from "
                                 f"{self.best:.3f} to {accuracy:.3f}; the best weights were restored")


def epoch_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of a history record under tracker names: ``train_loss`` -> ``train/loss``,
    ``val_robust_accuracy`` -> ``val/robust_accuracy``; ``budget`` and ``lr`` go under ``train/``.
    The epoch (the step) and flags such as ``best`` are left out."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if key == "epoch" or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        group, _, rest = key.partition("_")
        out[f"{group}/{rest}" if group in ("train", "val", "guard") and rest else f"train/{key}"] = float(value)
    return out


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


class RunClock:
    """The training time left in a run that trains models one after another (``robustkit harden``: the
    standard model, then the hardened one), for the lines of their :class:`EpochLog` callbacks.

    While one model trains, each later model's epoch is estimated from the current model's measured
    epochs: the validation part as it is (every model validates the same way) and the training part
    scaled by the ratio of the methods' :attr:`~robustkit.training.methods.Method.passes`. A method
    whose passes are unknown (a domain's own, such as text's ``discrete``) is counted at the current
    model's speed, and the estimate becomes a lower bound ("at least").

    Args:
        methods: each model's training method in order: a core method's name or object, or None for
            one the clock cannot size.
        epochs: the epochs each model trains (a method that replays batches trains fewer).

    Example:
        >>> clock = RunClock(["standard", "pgd"], epochs=3)  # PGD-10: 11 passes per epoch
        >>> clock.later(0, per_epoch=2.0, record={"train_seconds": 1.0, "val_seconds": 1.0})
        (36.0, True)
    """

    def __init__(self, methods: Sequence[str | Method | None], epochs: int) -> None:
        resolved = [None if m is None else get_method(m) for m in methods]
        self.plan = [(epochs, None) if m is None else (max(1, math.ceil(epochs / m.replays)), m.passes)
                     for m in resolved]

    def later(self, phase: int, per_epoch: float, record: Mapping[str, Any]) -> tuple[float, bool]:
        """Seconds the models after ``phase`` will train, from its ``per_epoch`` seconds and the split of
        its latest epoch ``record`` into training and validation time; and whether that is an estimate
        (True) or only a lower bound (False)."""
        train = float(record.get("train_seconds", 0.0))
        val = float(record.get("val_seconds", 0.0))
        share = train / (train + val) if train + val > 0 else 1.0
        current = self.plan[phase][1]
        seconds, sized = 0.0, True
        for epochs, passes in self.plan[phase + 1:]:
            ratio = passes / current if passes is not None and current is not None else 1.0
            sized = sized and passes is not None and current is not None
            seconds += epochs * per_epoch * (1 - share + share * ratio)
        return seconds, sized


class EpochLog(Callback):
    """One line per epoch that stays on screen (progress bars stay intact): training loss, validation
    clean and robust accuracy, the epoch's seconds and the training time left.

    Args:
        label: printed first (e.g. the model's name).
        then: what trains after this fit, said with the time left (e.g. ``"then the hardened model"``).
        stream: where the lines go (default: standard error).
        clock: the run's :class:`RunClock` when more models train after this one, and ``phase``, this
            model's place in it: the line then also gives the training time left in all.

    Example:
        >>> import io, robustkit as rk
        >>> out = io.StringIO()
        >>> log = rk.callbacks.EpochLog("hardened", stream=out)
        >>> log.line({"epoch": 1, "train_loss": 0.41234, "val_clean_accuracy": 0.9, "val_robust_accuracy": 0.5,
        ...           "train_seconds": 2.0, "val_seconds": 0.5}, total=2, left=2.5)
        'hardened epoch 1/2: loss 0.4123, val clean 90.0%, robust 50.0% (2.5 s; about 2 s left)'
    """

    def __init__(self, label: str = "", *, then: str = "", stream: TextIO | None = None,
                 clock: RunClock | None = None, phase: int = 0) -> None:
        self.label, self.then, self.stream = label, then, stream
        self.clock, self.phase = clock, phase
        self._start = 0.0
        self._done = 0

    def line(self, record: Mapping[str, Any], total: int, left: float, overall: str = "") -> str:
        """The line for one epoch's ``record`` of ``total`` epochs, ``left`` seconds of training left
        (``overall``: the run's, said last); a ``stop_reason`` in the record ends the line."""
        parts = [f"loss {record['train_loss']:.4f}"]
        if "val_clean_accuracy" in record:
            parts.append(f"val clean {record['val_clean_accuracy']:.1%}")
        if "val_robust_accuracy" in record:
            parts.append(f"robust {record['val_robust_accuracy']:.1%}")
        seconds = float(record.get("train_seconds", 0.0)) + float(record.get("val_seconds", 0.0))
        rest = f"about {_duration(left)} left" if record["epoch"] < total else "done"
        if record.get("stop_reason"):
            rest = f"stopped: {record['stop_reason']}"
        if self.then:
            rest += f", {self.then}"
        if overall:
            rest += f"; {overall}"
        head = f"{self.label} epoch" if self.label else "epoch"
        return f"{head} {record['epoch']}/{total}: {', '.join(parts)} ({seconds:.1f} s; {rest})"

    def on_fit_start(self, trainer: AdversarialTrainer) -> None:
        self._start, self._done = time.monotonic(), 0

    def on_epoch_end(self, trainer: AdversarialTrainer, record: dict[str, Any]) -> None:
        self._done += 1  # epochs run by this process (a resumed fit times only its own)
        per_epoch = (time.monotonic() - self._start) / self._done
        left = per_epoch * max(0, trainer.total_epochs - trainer.epoch)
        overall = ""
        if self.clock is not None and self.phase + 1 < len(self.clock.plan):
            later, sized = self.clock.later(self.phase, per_epoch, record)
            overall = f"{'about' if sized else 'at least'} {_duration(left + later)} of training left in all"
        if trainer.control.should_stop:  # asked by this epoch's hooks; the trainer adds it to the record after them
            record = {**record, "stop_reason": trainer.control.reason}
        tqdm.write(self.line(record, trainer.total_epochs, left, overall), file=self.stream or sys.stderr)


def check_verbose(verbose: Any) -> None:
    """Refuse an estimator's ``verbose`` unless it is a bool or an integer >= 0 (scikit-learn's convention)."""
    if not isinstance(verbose, bool | int) or verbose < 0:
        raise ConfigError(f"verbose must be True, False or an integer >= 0, got {verbose!r}")


def _import(module: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"{what} needs the {module.split('.')[0]} package, which is not installed ({exc}): "
                          "pip install 'robustkit[tracking]'") from None


class Tracker(Callback):
    """Base of the experiment-tracking callbacks: every epoch's figures (:func:`epoch_metrics`) at step
    ``epoch``, plus :meth:`log_metrics`, :meth:`log_artifact` and :meth:`close` for a run's final results.

    One tracker can follow several models: :meth:`scoped` gives a callback for each (``harden`` trains
    a ``standard`` and a ``hardened`` model into one tracked run).
    """

    prefix = ""

    def scoped(self, name: str) -> Tracker:
        """This tracker for the model ``name`` (its figures kept apart from the other models')."""
        view = copy.copy(self)
        view.prefix = f"{self.prefix}{name}/"
        return view

    def on_epoch_end(self, trainer: AdversarialTrainer, record: dict[str, Any]) -> None:
        self.log_metrics(epoch_metrics(record), step=int(record["epoch"]))

    def on_fit_end(self, trainer: AdversarialTrainer) -> None:
        self.flush()

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Record ``metrics`` (name -> number) at ``step``; non-finite values are left out."""
        raise NotImplementedError

    def log_artifact(self, path: str | os.PathLike[str]) -> None:
        """Keep the file ``path`` with the run (e.g. the report)."""
        raise NotImplementedError

    def flush(self) -> None:
        """Make what was logged readable now."""

    def close(self, failed: bool = False) -> None:
        """End the tracked run (``failed``: it stopped on an error)."""


def _finite(metrics: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}


_TEXT_SUFFIXES = (".md", ".yaml", ".json", ".csv", ".txt")


class TensorBoard(Tracker):
    """Write TensorBoard event files under ``log_dir`` (one subfolder per :meth:`scoped` model, so the
    models share each chart): ``train/loss``, ``val/clean_accuracy``, ``val/robust_accuracy`` ... per
    epoch; final metrics; text artifacts (the report's Markdown, the config) as text summaries.

    Needs ``tensorboard`` (``pip install 'robustkit[tracking]'``). View with
    ``tensorboard --logdir LOG_DIR``.

    Example::

        trainer = rk.AdversarialTrainer(model, space, callbacks=[rk.callbacks.TensorBoard("runs/tb")])
    """

    def __init__(self, log_dir: str | os.PathLike[str]) -> None:
        self._module = _import("torch.utils.tensorboard", "the TensorBoard callback")
        self.log_dir = Path(log_dir)
        self._writers: dict[str, Any] = {}

    def _writer(self) -> Any:
        name = self.prefix.strip("/")
        if name not in self._writers:
            self._writers[name] = self._module.SummaryWriter(log_dir=str(self.log_dir / name))
        return self._writers[name]

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        writer = self._writer()
        for key, value in _finite(metrics).items():
            writer.add_scalar(key, value, global_step=step)

    def log_artifact(self, path: str | os.PathLike[str]) -> None:
        """A text file (Markdown, YAML, JSON, CSV) as a text summary; any other file by its path (TensorBoard
        keeps no files)."""
        p = Path(path)
        if p.suffix not in _TEXT_SUFFIXES:
            self._writer().add_text(p.name, f"saved at `{p.resolve()}`")
            return
        text = p.read_text(encoding="utf-8")
        self._writer().add_text(p.name, text if p.suffix == ".md" else f"```\n{text}\n```")

    def flush(self) -> None:
        for writer in self._writers.values():
            writer.flush()

    def close(self, failed: bool = False) -> None:
        for writer in self._writers.values():
            writer.close()


class MLflow(Tracker):
    """Log to an MLflow run: per-epoch figures as metrics at step ``epoch`` (keys prefixed with the
    :meth:`scoped` model's name, e.g. ``hardened/val/robust_accuracy``), final metrics, and files as
    artifacts.

    Args:
        tracking_uri: where runs are kept (default: ``MLFLOW_TRACKING_URI``, else MLflow's default).
        experiment: experiment name (default: ``MLFLOW_EXPERIMENT_NAME``, else ``"robustkit"``).
        run_name: name of the run; params: logged once at the start.

    Needs ``mlflow`` (``pip install 'robustkit[tracking]'``). The run is created at construction and
    ended by :meth:`close` (``AdversarialTrainer`` users call it after ``fit``).
    """

    def __init__(self, tracking_uri: str | None = None, experiment: str | None = None, run_name: str | None = None,
                 params: Mapping[str, Any] | None = None) -> None:
        tracking = _import("mlflow.tracking", "the MLflow callback")
        failure = _import("mlflow.exceptions", "the MLflow callback").MlflowException
        name = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "robustkit"
        try:
            self._client = tracking.MlflowClient(tracking_uri=tracking_uri)
            found = self._client.get_experiment_by_name(name)
            experiment_id = found.experiment_id if found is not None else self._client.create_experiment(name)
            self.run_id: str = self._client.create_run(experiment_id, run_name=run_name).info.run_id
        except failure as exc:  # e.g. a tracking URI MLflow refuses: say so as one robustkit error
            raise ConfigError(f"MLflow cannot start a run in experiment {name!r}: {exc}") from None
        for key, value in (params or {}).items():
            self._client.log_param(self.run_id, key, value)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        stamp = int(time.time() * 1000)
        for key, value in _finite(metrics).items():
            self._client.log_metric(self.run_id, self.prefix + key, value, timestamp=stamp, step=step)

    def log_artifact(self, path: str | os.PathLike[str]) -> None:
        self._client.log_artifact(self.run_id, str(path))

    def close(self, failed: bool = False) -> None:
        self._client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


_LIBRARIES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}


def require(kind: str) -> None:
    """Raise :class:`ConfigError` now (before any work) if ``--report-to kind`` is unknown or its library
    is not installed; imports nothing."""
    if kind not in REPORT_TO:
        raise ConfigError(f"report_to must be one of {', '.join(REPORT_TO)}, got {kind!r}")
    library = _LIBRARIES.get(kind)
    if library is not None and importlib.util.find_spec(library) is None:
        raise ConfigError(f"--report-to {kind} needs the {library} package, which is not installed: "
                          "pip install 'robustkit[tracking]'")


def tracker(kind: str, log_dir: str | os.PathLike[str], run_name: str | None = None,
            params: Mapping[str, Any] | None = None) -> Tracker | None:
    """The tracker ``--report-to kind`` names (None for ``"none"``): TensorBoard writes under ``log_dir``;
    MLflow follows ``MLFLOW_TRACKING_URI`` and ``MLFLOW_EXPERIMENT_NAME``."""
    require(kind)
    if kind == "tensorboard":
        return TensorBoard(log_dir)
    if kind == "mlflow":
        return MLflow(run_name=run_name, params=params)
    return None
