"""``harden``, ``evaluate`` and ``attack``: the one pipeline that writes a run directory, for every domain.

A domain only fills the :class:`~robustkit.domain.Domain` interface; splitting, training both models
on the same split, evaluating them under the same attacks, resuming and writing the run directory
happen here once.

Run directory (contract)::

    RUN/metrics.json   written last: its presence means the run is complete
    RUN/report.html  RUN/report.md  RUN/config.yaml  RUN/history.csv
    RUN/checkpoints/<model>/   RUN/models/<model>/   RUN/examples/   RUN/examples/standard/ (harden)
    RUN/tensorboard/<model>/   (``report_to: tensorboard``)

A model's checkpoint is removed once the model is saved under ``models/`` (``keep_checkpoints``
keeps it): resuming needs the checkpoints of a model still training only.

Example:
    >>> from robustkit.config import RunConfig
    >>> from robustkit import pipeline
    >>> callable(pipeline.harden)
    True
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import platform
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from robustkit import __version__, distributed
from robustkit.attacks import Ensemble
from robustkit.config import RunConfig
from robustkit.domain import Domain, DomainData, Examples, get_domain
from robustkit.errors import ConfigError, DataError, ModelError
from robustkit.evaluation import RobustnessReport, evaluate
from robustkit.evaluation.binary import binary_metrics
from robustkit.evaluation.checks import TRIVIAL
from robustkit.evaluation.presets import PRESETS
from robustkit.files import atomic_write_dir, atomic_write_text, remove_dir
from robustkit.models import frozen_eval, logits_of
from robustkit.reporting import describe_plan, write_reports
from robustkit.runlock import LOCK_NAME, RunLock, check_free
from robustkit.spaces import DiscreteSpace
from robustkit.training import callbacks
from robustkit.training.fit import TrainSettings
from robustkit.training.methods import NAMES as METHOD_NAMES

__all__ = ["attack", "evaluate_model", "harden", "prepare_run_dir"]

log = logging.getLogger("robustkit")

#: number of test examples whose adversarial versions are written to examples/ by harden and evaluate
N_EXAMPLES = 16


@dataclass
class _Trained:
    model: nn.Module
    spec: dict[str, Any]
    threshold: float | None
    seconds: float
    history: list[dict[str, Any]]
    plan: dict[str, Any]


# ----------------------------------------------------------------------------- run directory
def prepare_run_dir(out: Path, *, force: bool, resume: bool) -> None:
    """Refuse to clobber a complete run (unless ``force``), a run another process is writing, or a folder inside
    a run; check a run to ``resume``. Writes nothing."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a folder: choose another --out")
    check_free(out)
    _check_run_dir(out, force=force, resume=resume)


def _check_run_dir(out: Path, *, force: bool, resume: bool) -> None:
    """:func:`prepare_run_dir` but for the lock (checked again under the lock this process holds)."""
    complete = (out / "metrics.json").is_file()
    inside = next((p for p in out.resolve().parents if _is_run(p)), None)
    if inside is not None:
        raise ConfigError(f"{out} lies inside the run directory {inside}: choose an --out outside it (writing there "
                          "would replace part of that run)")
    if resume:
        if complete:
            raise ConfigError(f"{out} is already complete: nothing to resume (use --force to redo it)")
        if not (out / "config.yaml").is_file():
            raise ConfigError(f"{out} holds no stopped run to resume (no config.yaml): start it without --resume")
        return
    if complete and not force:
        raise ConfigError(f"{out} already holds a complete run: pass --force to overwrite it or choose another --out")
    if out.is_dir() and any(p.name != LOCK_NAME for p in out.iterdir()) and not complete and not force:
        if not (out / "config.yaml").is_file():
            raise ConfigError(f"{out} is not empty and holds no run to resume (no config.yaml): choose another "
                              "--out, or pass --force to delete what it holds and start over")
        raise ConfigError(f"{out} holds a stopped run: pass --resume {out} to continue it, or --force to start over")


def _is_run(folder: Path) -> bool:
    """Whether ``folder`` is a run directory: its config.yaml with its metrics.json or its checkpoints."""
    return (folder / "config.yaml").is_file() and ((folder / "metrics.json").is_file()
                                                   or (folder / "checkpoints").is_dir())


def _clear(out: Path) -> None:
    """Remove an old run: metrics.json first, so it never looks complete while half deleted, then config.yaml,
    so that what is left of it is never resumed."""
    (out / "metrics.json").unlink(missing_ok=True)
    (out / "config.yaml").unlink(missing_ok=True)
    if out.is_dir():
        for child in out.iterdir():
            if child.name == LOCK_NAME:  # held by this run
                continue
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()


def _has_checkpoint(out: Path) -> bool:
    """Whether a run has kept anything to resume from: a checkpoint or a trained model."""
    return any((out / "checkpoints").glob("*/latest")) or any((out / "models").glob("*/model.json"))


@contextmanager
def _undone_on_error(out: Path, keep_if: Callable[[Path], bool]) -> Iterator[None]:
    """On an error (not an interrupt), remove what the run wrote unless ``keep_if(out)``: a run that failed
    before it kept anything must not block the corrected command (it would be refused as a stopped run)."""
    try:
        yield
    except Exception:
        if distributed.is_main() and not keep_if(out):
            _clear(out)
        raise


def _versions() -> dict[str, str]:
    return {"robustkit": __version__, "torch": torch.__version__, "python": platform.python_version()}


def _setup_torch(config: RunConfig) -> torch.device:
    """Threads, device, and (under ``torchrun``) the process group; CUDA processes take GPU LOCAL_RANK."""
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {config.device!r} was asked for but CUDA is not available: use --device cpu")
    return distributed.setup(config.device)


def _on_main(write: Any) -> None:
    """``write()`` on rank 0 only (the one process that writes files), then every process goes on together."""
    if distributed.is_main():
        write()
    distributed.barrier()


def _resolve(config: RunConfig, domain: Domain) -> RunConfig:
    """Fill the domain's defaults into every option left unset."""
    data = config.data or domain.default_data
    if config.method is not None and config.method not in (*METHOD_NAMES, *domain.methods):
        raise ConfigError(
            f"unknown training method {config.method!r} for domain {domain.name!r}: choose one of "
            f"{', '.join((*METHOD_NAMES, *domain.methods))}"
        )
    options = domain.parse_options(config.options)  # a bad option stops the run here, before any work
    budget = config.budget if config.budget is not None else domain.default_budget_for(data, options)
    return config.merged(
        {
            "data": data,
            "method": config.method or domain.default_method,
            "budget": budget,
            "budgets": config.budgets or domain.eval_budgets(budget),
            "epochs": config.epochs or domain.default_epochs,
            "batch_size": config.batch_size or domain.default_batch_size,
            "lr": config.lr or domain.default_lr_for(data, options),
        }
    )


def _eval_batch_size(config: RunConfig) -> int:
    """Evaluation batches: at least 256 (per-batch work such as the checks' searches is amortised)."""
    assert config.batch_size is not None
    return max(config.batch_size, 256)


# ----------------------------------------------------------------------------- training
def _model_spec(domain: Domain, data: DomainData, config: RunConfig) -> dict[str, Any]:
    """The spec of the model to train: the user's ``--model-factory`` or the domain's reference model."""
    if config.model_factory:
        return domain.factory_spec(config.model_factory, data)
    return domain.model_spec(data, domain.parse_options(config.options))


def _train(
    name: str, method: str, domain: Domain, data: DomainData, config: RunConfig, out: Path, resume: bool,
    progress: bool, hooks: list[callbacks.Callback],
) -> _Trained:
    model_dir = out / "models" / name
    ckpt = out / "checkpoints" / name
    spec = _model_spec(domain, data, config)
    assert config.budget is not None and config.epochs is not None and config.batch_size is not None
    assert config.lr is not None
    settings = TrainSettings(method=method, budget=config.budget, epochs=config.epochs, batch_size=config.batch_size,
                             lr=config.lr, seed=config.seed, budget_warmup=config.budget_warmup, checkpoint_dir=ckpt,
                             progress=progress, callbacks=tuple(hooks))
    if resume and (model_dir / "model.json").is_file():
        model, meta = domain.load_model(model_dir, config.model_factory)
        saved = json.loads((model_dir / "train.json").read_text(encoding="utf-8"))
        log.info("%s model: already trained, loaded from %s", name, model_dir)
        _prune(ckpt, config)  # the run may have stopped between saving the model and removing its checkpoint
        plan = saved.get("plan") or domain.training_plan(model, settings)  # runs from before plans were saved
        return _Trained(model, meta.get("spec", spec), meta.get("threshold"), saved["seconds"], saved["history"], plan)
    torch.manual_seed(config.seed)
    model = domain.make_model(spec, config.model_factory, config.weights).to(config.device)
    resume_from = ckpt if resume and (ckpt / "latest").is_file() else None
    plan = domain.training_plan(model, settings)
    log.info("%s model: training with %s%s", name, describe_plan(plan), " (resuming)" if resume_from else "")
    fitted = domain.fit(model, data, settings, resume=resume_from)
    threshold = fitted.threshold
    history = [{"model": name, **r} for r in fitted.history]
    seconds = fitted.seconds

    def write(folder: Path) -> None:
        domain.save_model(model, folder, spec, threshold)
        (folder / "train.json").write_text(json.dumps({"seconds": seconds, "history": history, "plan": plan},
                                                      default=float))

    _on_main(lambda: atomic_write_dir(model_dir, write))  # resume trusts a model folder that exists: it is whole
    _prune(ckpt, config)
    return _Trained(model, spec, threshold, seconds, history, plan)


def _prune(ckpt: Path, config: RunConfig) -> None:
    """Remove a saved model's checkpoint (unless ``keep_checkpoints``): resume loads ``models/<name>`` instead.
    Every process calls it (rank 0 removes, the others wait), whether or not it sees the folder."""

    def prune() -> None:
        if config.keep_checkpoints or not ckpt.is_dir():
            return
        remove_dir(ckpt)
        with contextlib.suppress(OSError):  # the last one leaves no empty checkpoints/ behind
            ckpt.parent.rmdir()

    _on_main(prune)


# ----------------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class _Evaluated:
    """One model's evaluation: the report (the domain's own attacks included), its figures, the decided
    model and the domain's evidence for its examples."""

    report: RobustnessReport
    metrics: dict[str, Any]
    decided: nn.Module
    evidence: Any


def _evaluate(
    domain: Domain, model: nn.Module, threshold: float | None, data: DomainData, config: RunConfig, progress: bool,
    name: str = "the",
) -> _Evaluated:
    assert config.budget is not None and config.batch_size is not None
    decided = domain.decided(model.eval(), threshold)
    space = domain.eval_space(config.budget, data, decided)
    attacks, checks = domain.eval_attacks(decided, space, config.preset, config.seed)
    log.info("%s model: evaluating with %s", name,
             f"the {attacks!r} preset" if isinstance(attacks, str)
             else " + ".join(a.name for a in attacks) + " and the domain's own attacks")
    report = evaluate(
        decided,
        domain.loader(data.test, _eval_batch_size(config), shuffle=False),
        space,
        budgets=config.budgets,
        attacks=attacks,
        checks=checks,
        mask=domain.attackable_mask,
        seed=config.seed,
        batch_size=_eval_batch_size(config),
        progress=progress,
    )
    assessment = domain.assess(decided, data, report)
    for label, survived in assessment.survived.items():
        report = report.with_attack(label, survived)
    # the binary figures come from the final report, so they count every attack that was run
    metrics = binary_metrics(report.outcomes) if report.lead.measure == "recall" else {}
    metrics.update(assessment.metrics)
    if threshold is not None:
        metrics.setdefault("threshold", threshold)
    return _Evaluated(report, metrics, decided, assessment.evidence)


def _collapsed(standard: RobustnessReport, hardened: RobustnessReport) -> RobustnessReport:
    """``hardened`` with a verdict that says its training collapsed, where the standard model trained
    on the same data is not trivial but the hardened one is."""
    if not hardened.verdict.startswith(TRIVIAL) or standard.verdict.startswith(TRIVIAL):
        return hardened
    h, s = hardened.lead, standard.lead
    return dataclasses.replace(hardened, verdict=(
        f"{TRIVIAL}: adversarial training collapsed (clean {h.measure} {h.clean:.1%}, the standard model's "
        f"{s.clean:.1%}): lower the budget or the learning rate, or warm the budget up (--budget-warmup)"))


def _strongest(domain: Domain, data: DomainData, config: RunConfig, n_classes: int, model: nn.Module) -> Ensemble:
    assert config.budget is not None
    space = domain.eval_space(config.budget, data, model)
    attacks, _ = domain.eval_attacks(model, space, config.preset, config.seed)
    if not isinstance(attacks, str):
        return Ensemble(attacks)
    specs = PRESETS[attacks].attacks_for(n_classes, discrete=isinstance(space, DiscreteSpace))
    return Ensemble([s.build(space, seed=config.seed) for s in specs])


def _predict(model: nn.Module, space: Any, x: Any, device: torch.device) -> torch.Tensor:
    """Decided predictions of a batch (discrete spaces: of the encoded objects)."""
    with torch.no_grad():
        inputs = space.encode(x, device) if isinstance(space, DiscreteSpace) else x.to(device)
        return logits_of(model(inputs)).argmax(dim=1).cpu()


def _write_examples(
    domain: Domain, decided: nn.Module, data: DomainData, config: RunConfig, out: Path, limit: int | None,
    evidence: Any = None, folder: str = "examples",
) -> dict[str, Any]:
    """Attack the first ``limit`` test examples (all if None) with the preset's attacks; write them to
    ``out / folder``. Only examples the model gets right are attacked: ``success`` means an attack turned
    a right prediction wrong (an example already wrong is written unchanged, never as a success)."""
    assert config.budget is not None and config.batch_size is not None
    space = domain.eval_space(config.budget, data, decided)
    attack = _strongest(domain, data, config, data.info.n_classes, decided)
    mask_fn = domain.attackable_mask
    device = torch.device(config.device)
    parts: dict[str, list[Any]] = {k: [] for k in ("x", "x_adv", "y", "pred_clean", "pred_adv", "success")}
    taken = 0
    with frozen_eval(decided):
        for batch in domain.loader(data.test, _eval_batch_size(config), shuffle=False):
            x, y = batch[0], batch[1]
            if limit is not None:
                x, y = x[: limit - taken], y[: limit - taken]
            clean = _predict(decided, space, x, device)
            right = (clean == torch.as_tensor(y).cpu()).to(mask_fn(x, y).device)
            result = attack(decided, x, y, mask=mask_fn(x, y) & right, ids=torch.arange(taken, taken + len(y)))
            x_adv = result.x_adv.cpu() if isinstance(result.x_adv, torch.Tensor) else result.x_adv
            parts["x"].append(x)
            parts["x_adv"].append(x_adv)
            parts["y"].append(torch.as_tensor(y).cpu())
            parts["pred_clean"].append(clean)
            parts["pred_adv"].append(_predict(decided, space, x_adv, device))
            parts["success"].append(result.success.cpu())
            taken += len(y)
            if limit is not None and taken >= limit:
                break
    joined: dict[str, Any] = {
        k: torch.cat(v) if isinstance(v[0], torch.Tensor) else [e for part in v for e in part] for k, v in parts.items()
    }
    examples = Examples(**joined, evidence=evidence)
    atomic_write_dir(out / folder, lambda path: domain.write_examples(path, examples, data))
    return {"n": taken, "successes": int(examples.success.sum())}


# ----------------------------------------------------------------------------- commands
def _model_entry(report: RobustnessReport, domain_metrics: dict[str, Any], seconds: float | None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "headline": report.lead.to_dict(),
        "clean_accuracy": report.clean_accuracy,
        "robust_accuracy": dict(report.robust_accuracy),
        "domain_metrics": domain_metrics,
        "verdict": report.verdict,
    }
    if seconds is not None:
        entry["train_seconds"] = seconds
    return entry


def _metrics(
    command: str, domain: Domain, data: DomainData, config: RunConfig, reports: dict[str, RobustnessReport],
    entries: dict[str, dict[str, Any]], main: str,
) -> dict[str, Any]:
    rep = reports[main]
    return {
        "schema_version": 1,
        "command": command,
        "domain": domain.name,
        "dataset": data.info.to_dict(),
        "seed": config.seed,
        "threat": dict(rep.threat),
        "attacks": rep.attacks,
        "models": entries,
        "checks": [c.to_dict() for c in rep.checks],
        "verdict": rep.verdict,
        "versions": _versions(),
    }


def _finish(out: Path, metrics: dict[str, Any], reports: dict[str, RobustnessReport], history: pd.DataFrame,
            config: RunConfig, argv: list[str] | None, domain: Domain) -> None:
    command = "robustkit " + shlex.join(argv) if argv is not None else " ".join(shlex.quote(a) for a in sys.argv)
    if not history.empty:
        atomic_write_text(out / "history.csv", history.to_csv(index=False))
    write_reports(out, metrics, reports, history, config.to_yaml(), command, domain.examples_html(out / "examples"))
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, default=float) + "\n")


def _start(
    config: RunConfig, out: Path, force: bool, resume: bool, model: nn.Module | None = None,
    domain: Domain | None = None, before_write: Callable[[RunConfig], None] | None = None,
) -> tuple[Domain, RunConfig, DomainData, RunLock]:
    """Everything that can fail on bad input, then the run directory's lock and its first write (config.yaml).

    With ``model`` (evaluate, attack), one probe batch checks that the model takes the domain's
    inputs and outputs one logit per class before anything is written; so does a model the user's
    ``--model-factory`` builds (with its ``--weights``). ``domain``: the instance that
    loaded that model (it may encode the data for it, as the text domain does for its tokenizer).
    ``before_write``: called with the resolved config after every check, before the first write (harden
    starts its experiment tracker there).
    """
    if config.weights and not config.model_factory:
        raise ConfigError("--weights FILE.safetensors goes with --model-factory MODULE:FUNCTION: the domain's own "
                          "model starts from random weights")
    prepare_run_dir(out, force=force, resume=resume)
    if resume:
        saved = RunConfig.from_yaml(out / "config.yaml")
        if saved.domain != config.domain:
            raise ConfigError(f"{out} is a {saved.domain!r} run, not {config.domain!r}")
        if saved.model_factory != config.model_factory:  # never import code that a file names
            flag = f"--model-factory {saved.model_factory}" if saved.model_factory else "no --model-factory"
            raise ConfigError(f"{out} was made with {flag}: resume it with the same (robustkit imports your code "
                              "only when the command line names it)")
        config = saved
    if domain is None:
        domain = get_domain(config.domain)
    config = _resolve(config, domain)
    device = _setup_torch(config)
    assert config.data is not None and config.batch_size is not None
    distributed.check_batch_size(config.batch_size)  # under torchrun, before anything is written
    data = domain.load_data(config.data, config.seed, domain.parse_options(config.options))
    built = model is None
    if model is None:  # harden's model (the user's or the domain's, with its options) built and probed first
        model = domain.make_model(_model_spec(domain, data, config), config.model_factory, config.weights)
    _probe(model.to(device), domain, data, config)
    if built:  # a model to train: its training space too
        _probe_budget(model, domain, data, config)
    if before_write is not None:
        before_write(config)
    distributed.barrier()  # every process has checked the run directory before rank 0 changes it

    lock = RunLock(out)

    def first_write() -> None:
        lock.acquire()
        try:
            _check_run_dir(out, force=force, resume=resume)  # again, now that no other process can write here
            if force and not resume:
                _clear(out)
            atomic_write_text(out / "config.yaml", config.to_yaml())
        except BaseException:
            lock.release()
            raise

    _on_main(first_write)
    return domain, config, data, lock


def _probe(model: nn.Module, domain: Domain, data: DomainData, config: RunConfig) -> None:
    assert config.budget is not None
    x = next(iter(domain.loader(data.test, 8, shuffle=False)))[0]
    space = domain.eval_space(config.budget, data, model)
    try:
        with frozen_eval(model), torch.no_grad():
            inputs = space.encode(x, config.device) if isinstance(space, DiscreteSpace) else x.to(config.device)
            logits = logits_of(model(inputs))
    except (RuntimeError, ValueError, TypeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"the model does not take this data's inputs ({first}): check --model and --data") from None
    if not torch.isfinite(logits).all():
        raise ModelError("the model's outputs on the first test batch are not finite (NaN or infinite): check its "
                         "weights (--weights, --model) or --model-factory")
    if logits.shape[1] < data.info.n_classes:
        raise DataError(
            f"the model outputs {logits.shape[1]} classes but the data has {data.info.n_classes}: "
            "check --model and --data"
        )


def _probe_budget(model: nn.Module, domain: Domain, data: DomainData, config: RunConfig) -> None:
    """Training inputs perturbed to the edge of the training space must give finite outputs (a budget such as
    1e308 turns every attacked input into infinities: refused here, not after the first epoch is written)."""
    assert config.budget is not None
    space = domain.space(config.budget, data)
    x = next(iter(domain.loader(data.train, 8, shuffle=False)))[0].to(config.device)
    with frozen_eval(model), torch.no_grad():
        edge = space.vertex(x)
        logits = logits_of(model(edge))
    if not (torch.isfinite(edge).all() and torch.isfinite(logits).all()):
        raise ConfigError(f"budget {config.budget:g}: inputs perturbed this far are not finite numbers, or the "
                          "model's outputs on them are not: choose a smaller budget")


def harden(
    config: RunConfig, out: str | Path, *, force: bool = False, resume: bool = False, progress: bool = False,
    argv: list[str] | None = None,
) -> dict[str, Any]:
    """Train a standard and a hardened model on the same split, evaluate both, write the run directory.

    Returns the ``metrics.json`` content. With ``resume=True`` a stopped run in ``out`` continues from
    its checkpoints (models already saved are not retrained).
    """
    out = Path(out)
    callbacks.require(config.report_to)
    opened: list[callbacks.Tracker] = []

    def open_tracker(resolved: RunConfig) -> None:  # before the first write: a tracker that cannot start stops there
        made = _tracker(resolved, out) if distributed.is_main() else None
        opened.extend([made] if made is not None else [])

    domain, config, data, lock = _start(config, out, force, resume, before_write=open_tracker)
    tracker = opened[0] if opened else None
    try:
        with contextlib.closing(lock), _undone_on_error(out, _has_checkpoint):
            metrics = _harden(domain, config, data, out, resume, progress, argv, tracker)
    except BaseException:
        if tracker is not None:
            tracker.close(failed=True)
        raise
    if tracker is not None:
        tracker.close()
    return metrics


def _tracker(config: RunConfig, out: Path) -> callbacks.Tracker | None:
    params = {k: getattr(config, k) for k in ("domain", "data", "method", "budget", "epochs", "batch_size", "lr",
                                              "preset", "seed")}
    return callbacks.tracker(config.report_to, out / "tensorboard", run_name=out.name, params=params)


def _hooks(name: str, then: str, tracker: callbacks.Tracker | None, clock: callbacks.RunClock | None = None,
           phase: int = 0) -> list[callbacks.Callback]:
    """Callbacks of one model's training: the per-epoch line (unless quiet, rank 0 only; with the run's
    ``clock``, the time left in all) and the tracker."""
    hooks: list[callbacks.Callback] = []
    if log.isEnabledFor(logging.INFO) and distributed.is_main():
        hooks.append(callbacks.EpochLog(f"{name} model", then=then, clock=clock, phase=phase))
    if tracker is not None:
        hooks.append(tracker.scoped(name))
    return hooks


def _final_metrics(entry: dict[str, Any]) -> dict[str, float]:
    """A model's test figures for a tracker: ``test/clean_accuracy``, ``test/robust_accuracy`` (worst case),
    ``test/robust_accuracy_<attack>`` and the domain's numeric scalars."""
    figures = {"test/clean_accuracy": entry["clean_accuracy"], "train/total_seconds": entry.get("train_seconds")}
    lead = entry.get("headline") or {}
    if lead:  # the headline first: recall of the attacked class for fraud and spam
        figures[f"test/{lead['measure']}_clean"] = lead["clean"]
        figures[f"test/{lead['measure']}_attacked"] = lead["attacked"]
    for attack, value in entry["robust_accuracy"].items():
        figures["test/robust_accuracy" + ("" if attack == "worst" else f"_{attack}")] = value
    for key, value in entry.get("domain_metrics", {}).items():
        figures[f"test/{key}"] = value
    return {k: float(v) for k, v in figures.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def _harden(
    domain: Domain, config: RunConfig, data: DomainData, out: Path, resume: bool, progress: bool,
    argv: list[str] | None, tracker: callbacks.Tracker | None,
) -> dict[str, Any]:
    assert config.method is not None and config.epochs is not None
    start = time.perf_counter()
    then = f"then the hardened model ({config.epochs} epoch{'s' if config.epochs > 1 else ''})"
    clock = callbacks.RunClock(["standard", None if config.method in domain.methods else config.method], config.epochs)
    trained = {
        "standard": _train("standard", "standard", domain, data, config, out, resume, progress,
                           _hooks("standard", then, tracker, clock, 0)),
        "hardened": _train("hardened", config.method, domain, data, config, out, resume, progress,
                           _hooks("hardened", "", tracker, clock, 1)),
    }
    evaluated: dict[str, _Evaluated] = {}
    for name, t in trained.items():
        evaluated[name] = _evaluate(domain, t.model, t.threshold, data, config, progress, name)
    reports = {name: e.report for name, e in evaluated.items()}
    reports["hardened"] = _collapsed(reports["standard"], reports["hardened"])
    entries = {name: {**_model_entry(reports[name], e.metrics, trained[name].seconds), "training": trained[name].plan}
               for name, e in evaluated.items()}
    history = pd.DataFrame([row for t in trained.values() for row in t.history])
    metrics = _metrics("harden", domain, data, config, reports, entries, "hardened")
    metrics["method"] = trained["hardened"].plan["method"]

    def write() -> None:
        # the hardened model's examples, then (inside their folder) those that beat the standard model
        hardened, standard = evaluated["hardened"], evaluated["standard"]
        _write_examples(domain, hardened.decided, data, config, out, N_EXAMPLES, hardened.evidence)
        _write_examples(domain, standard.decided, data, config, out, N_EXAMPLES, standard.evidence,
                        "examples/standard")
        _finish(out, metrics, reports, history, config, argv, domain)
        if tracker is not None:
            for name, entry in entries.items():
                tracker.scoped(name).log_metrics(_final_metrics(entry), step=config.epochs or 0)
            for artifact in ("report.md", "report.html", "metrics.json", "config.yaml", "history.csv"):
                tracker.log_artifact(out / artifact)

    _on_main(write)
    log.info("run written to %s in %.1f s", out, time.perf_counter() - start)
    return metrics


def _reuse_run(config: RunConfig, model_path: Path) -> RunConfig:
    """``config`` with the data spec and domain options of the run directory ``model_path`` where the
    command line left them unset: its model was trained and judged on that data, not the domain's
    built-in data. A user's factory named in that run is never taken from the file."""
    saved_file = model_path / "config.yaml"
    if not saved_file.is_file():
        return config
    saved = RunConfig.from_yaml(saved_file)
    if saved.domain and saved.domain != config.domain:
        raise ConfigError(f"--model {model_path} is a {saved.domain!r} run, not {config.domain!r}")
    log.info("data %s and options from %s unless given", saved.data, saved_file)
    return config.merged({"data": config.data or saved.data, "options": {**saved.options, **config.options}})


def _load_for_eval(
    config: RunConfig, out: Path, force: bool
) -> tuple[Domain, RunConfig, DomainData, nn.Module | None, dict[str, Any], RunLock]:
    """Load the model to evaluate (refusing pickles) before anything is written, then start the run.

    The model is None where the user's ``--model-factory`` builds it (with ``--weights``): :func:`_start`
    builds and probes it, the caller builds it for the run."""
    loader = get_domain(config.domain)
    model: nn.Module | None = None
    meta: dict[str, Any] = {}
    if not config.model:
        if not (config.model_factory and config.weights):
            raise ConfigError(
                "--model is required: a model folder or a run directory (or your own model: --model-factory "
                "package.module:function with --weights FILE.safetensors)"
            )
    else:
        if config.weights:
            raise ConfigError("--weights goes with --model-factory alone: a --model folder holds its own weights")
        model_path = Path(config.model)
        if not model_path.exists():
            raise ConfigError(f"--model {model_path} does not exist")
        config = _reuse_run(config, model_path)
        model, meta = loader.load_model(model_path, config.model_factory)
    domain, config, data, lock = _start(config, out, force, False, model, domain=loader)
    return domain, config, data, model, meta, lock


def _single_model(
    command: str, config: RunConfig, out: Path, force: bool, progress: bool, argv: list[str] | None,
    all_examples: bool,
) -> dict[str, Any]:
    domain, config, data, model, meta, lock = _load_for_eval(config, out, force)
    # an evaluation is never resumed: a failed one keeps nothing
    with contextlib.closing(lock), _undone_on_error(out, lambda _: False):
        if model is None:
            spec = _model_spec(domain, data, config)
            model = domain.make_model(spec, config.model_factory, config.weights).to(config.device)
            meta = {"spec": spec, "threshold": domain.choose_threshold(model.eval(), data)}
        to_save = model
        _on_main(lambda: atomic_write_dir(
            out / "models" / "evaluated",
            lambda folder: domain.save_model(to_save, folder, meta.get("spec", {}), meta.get("threshold")),
        ))
        evaluated = _evaluate(domain, model, meta.get("threshold"), data, config, progress)
        reports = {"evaluated": evaluated.report}
        metrics = _metrics(command, domain, data, config, reports,
                           {"evaluated": _model_entry(evaluated.report, evaluated.metrics, None)}, "evaluated")

        def write() -> None:  # the adversarial inputs are made by rank 0 alone
            metrics["examples"] = _write_examples(domain, evaluated.decided, data, config, out,
                                                  None if all_examples else N_EXAMPLES, evaluated.evidence)
            _finish(out, metrics, reports, pd.DataFrame(), config, argv, domain)

        _on_main(write)
    return metrics


def evaluate_model(
    config: RunConfig, out: str | Path, *, force: bool = False, progress: bool = False,
    argv: list[str] | None = None,
) -> dict[str, Any]:
    """Evaluate a saved model (``config.model``) and write a run directory with one model, ``evaluated``."""
    return _single_model("evaluate", config, Path(out), force, progress, argv, all_examples=False)


def attack(
    config: RunConfig, out: str | Path, *, force: bool = False, progress: bool = False,
    argv: list[str] | None = None,
) -> dict[str, Any]:
    """Attack every test example of a saved model and write the adversarial inputs themselves."""
    return _single_model("attack", config, Path(out), force, progress, argv, all_examples=True)
