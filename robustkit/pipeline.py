"""``harden``, ``evaluate`` and ``attack``: the one pipeline that writes a run directory, for every domain.

A domain only fills the :class:`~robustkit.domain.Domain` interface; splitting, training both models
on the same split, evaluating them under the same attacks, resuming and writing the run directory
happen here once.

Run directory (contract)::

    RUN/metrics.json   written last: its presence means the run is complete
    RUN/report.html  RUN/report.md  RUN/config.yaml  RUN/history.csv
    RUN/checkpoints/<model>/   RUN/models/<model>/   RUN/examples/   RUN/examples/standard/ (harden)

Example:
    >>> from robustkit.config import RunConfig
    >>> from robustkit import pipeline
    >>> callable(pipeline.harden)
    True
"""

from __future__ import annotations

import json
import logging
import platform
import shlex
import shutil
import sys
import time
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
from robustkit.errors import ConfigError, DataError
from robustkit.evaluation import RobustnessReport, evaluate
from robustkit.evaluation.presets import PRESETS
from robustkit.models import frozen_eval, logits_of
from robustkit.reporting import write_reports
from robustkit.spaces import DiscreteSpace
from robustkit.training import AdversarialTrainer
from robustkit.training.checkpoint import atomic_write_dir, atomic_write_text
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


# ----------------------------------------------------------------------------- run directory
def prepare_run_dir(out: Path, *, force: bool, resume: bool) -> None:
    """Refuse to clobber a complete run (unless ``force``); check a run to ``resume``. Writes nothing."""
    complete = (out / "metrics.json").is_file()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a folder: choose another --out")
    if resume:
        if complete:
            raise ConfigError(f"{out} is already complete: nothing to resume (use --force to redo it)")
        if not (out / "config.yaml").is_file():
            raise ConfigError(f"{out} holds no stopped run to resume (no config.yaml): start it without --resume")
        return
    if complete and not force:
        raise ConfigError(f"{out} already holds a complete run: pass --force to overwrite it or choose another --out")
    if out.is_dir() and any(out.iterdir()) and not complete and not force:
        if not (out / "config.yaml").is_file():
            raise ConfigError(f"{out} is not empty and holds no run to resume (no config.yaml): choose another "
                              "--out, or pass --force to delete what it holds and start over")
        raise ConfigError(f"{out} holds a stopped run: pass --resume {out} to continue it, or --force to start over")


def _clear(out: Path) -> None:
    """Remove an old run: metrics.json first, so it never looks complete while half deleted, then config.yaml,
    so that what is left of it is never resumed."""
    (out / "metrics.json").unlink(missing_ok=True)
    (out / "config.yaml").unlink(missing_ok=True)
    if out.is_dir():
        for child in out.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()


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
    budget = config.budget if config.budget is not None else domain.default_budget_for(data, config.options)
    return config.merged(
        {
            "data": data,
            "method": config.method or domain.default_method,
            "budget": budget,
            "eps": config.eps or domain.eval_budgets(budget),
            "epochs": config.epochs or domain.default_epochs,
            "batch_size": config.batch_size or domain.default_batch_size,
            "lr": config.lr or domain.default_lr_for(data, config.options),
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
    return domain.model_spec(data, config.options)


def _train(
    name: str, method: str, domain: Domain, data: DomainData, config: RunConfig, out: Path, resume: bool,
    progress: bool,
) -> _Trained:
    model_dir = out / "models" / name
    spec = _model_spec(domain, data, config)
    if resume and (model_dir / "model.json").is_file():
        model, meta = domain.load_model(model_dir, config.model_factory)
        saved = json.loads((model_dir / "train.json").read_text(encoding="utf-8"))
        log.info("%s model: already trained, loaded from %s", name, model_dir)
        return _Trained(model, meta.get("spec", spec), meta.get("threshold"), saved["seconds"], saved["history"])
    assert config.budget is not None and config.epochs is not None and config.batch_size is not None
    assert config.lr is not None
    torch.manual_seed(config.seed)
    model = domain.make_model(spec, config.model_factory, config.weights).to(config.device)
    space = domain.space(config.budget, data)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    ckpt = out / "checkpoints" / name
    # a domain's own method (e.g. text's "discrete") is built by the domain, for this data and budget
    own = domain.training_method(method, data, config.budget) if method in domain.methods else method
    trainer = AdversarialTrainer(
        model, space, method=own, optimizer=optimizer, eps_warmup=config.eps_warmup,
        attackable=domain.attackable_mask, checkpoint_dir=ckpt, seed=config.seed, progress=progress,
        select_best=method != "standard",
    )
    resume_from = ckpt if resume and (ckpt / "latest").is_file() else None
    log.info("%s model: training with %s for %d epochs%s", name, method, config.epochs,
             " (resuming)" if resume_from else "")
    trainer.fit(
        distributed.sharded(domain.loader(data.train, config.batch_size, shuffle=True), shuffle=True,
                            seed=config.seed),
        epochs=config.epochs,
        val_loader=domain.loader(data.val, config.batch_size, shuffle=False),
        resume=resume_from,
    )
    model.eval()
    threshold = domain.choose_threshold(model, data)
    history = [{"model": name, **r} for r in trainer.history]
    seconds = float(sum(r.get("train_seconds", 0.0) + r.get("val_seconds", 0.0) for r in trainer.history))

    def write(folder: Path) -> None:
        domain.save_model(model, folder, spec, threshold)
        (folder / "train.json").write_text(json.dumps({"seconds": seconds, "history": history}, default=float))

    _on_main(lambda: atomic_write_dir(model_dir, write))  # resume trusts a model folder that exists: it is whole
    return _Trained(model, spec, threshold, seconds, history)


# ----------------------------------------------------------------------------- evaluation
def _evaluate(
    domain: Domain, model: nn.Module, threshold: float | None, data: DomainData, config: RunConfig, progress: bool
) -> tuple[RobustnessReport, dict[str, Any], nn.Module]:
    assert config.budget is not None and config.batch_size is not None
    decided = domain.decided(model.eval(), threshold)
    space = domain.eval_space(config.budget, data)
    report = evaluate(
        decided,
        domain.loader(data.test, _eval_batch_size(config), shuffle=False),
        space,
        eps=config.eps,
        attacks=config.preset,
        mask=domain.attackable_mask,
        seed=config.seed,
        batch_size=_eval_batch_size(config),
        progress=progress,
    )
    metrics = domain.domain_metrics(decided, data, report)
    if threshold is not None:
        metrics.setdefault("threshold", threshold)
    return report, metrics, decided


def _strongest(domain: Domain, data: DomainData, config: RunConfig, n_classes: int) -> Ensemble:
    assert config.budget is not None
    space = domain.eval_space(config.budget, data)
    specs = PRESETS[config.preset].attacks_for(n_classes, discrete=isinstance(space, DiscreteSpace))
    return Ensemble([s.build(space, seed=config.seed) for s in specs])


def _predict(model: nn.Module, space: Any, x: Any, device: torch.device) -> torch.Tensor:
    """Decided predictions of a batch (discrete spaces: of the encoded objects)."""
    with torch.no_grad():
        inputs = space.encode(x, device) if isinstance(space, DiscreteSpace) else x.to(device)
        return logits_of(model(inputs)).argmax(dim=1).cpu()


def _write_examples(
    domain: Domain, decided: nn.Module, data: DomainData, config: RunConfig, out: Path, limit: int | None,
    folder: str = "examples",
) -> dict[str, Any]:
    """Attack the first ``limit`` test examples (all if None) with the preset's attacks; write them to
    ``out / folder``. Only examples the model gets right are attacked: ``success`` means an attack turned
    a right prediction wrong (an example already wrong is written unchanged, never as a success)."""
    assert config.budget is not None and config.batch_size is not None
    space = domain.eval_space(config.budget, data)
    attack = _strongest(domain, data, config, data.info.n_classes)
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
    examples = Examples(**joined)
    atomic_write_dir(out / folder, lambda path: domain.write_examples(path, examples, data))
    return {"n": taken, "successes": int(examples.success.sum())}


# ----------------------------------------------------------------------------- commands
def _model_entry(report: RobustnessReport, domain_metrics: dict[str, Any], seconds: float | None) -> dict[str, Any]:
    entry: dict[str, Any] = {
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
    domain: Domain | None = None,
) -> tuple[Domain, RunConfig, DomainData]:
    """Everything that can fail on bad input, then the first write (config.yaml).

    With ``model`` (evaluate, attack), one probe batch checks that the model takes the domain's
    inputs and outputs one logit per class before anything is written; so does a model the user's
    ``--model-factory`` builds (with its ``--weights``). ``domain``: the instance that
    loaded that model (it may encode the data for it, as the text domain does for its tokenizer).
    """
    if config.weights and not config.model_factory:
        raise ConfigError("--weights FILE.safetensors goes with --model-factory MODULE:FUNCTION: the domain's own "
                          "model starts from random weights")
    prepare_run_dir(out, force=force, resume=resume)
    if resume:
        saved = RunConfig.from_yaml(out / "config.yaml")
        if saved.domain != config.domain:
            raise ConfigError(f"{out} is a {saved.domain!r} run, not {config.domain!r}")
        config = saved
    if domain is None:
        domain = get_domain(config.domain)
    config = _resolve(config, domain)
    device = _setup_torch(config)
    assert config.data is not None and config.batch_size is not None
    distributed.check_batch_size(config.batch_size)  # under torchrun, before anything is written
    data = domain.load_data(config.data, config.seed, config.options)
    if model is None and config.model_factory:  # the user's model: built, loaded and probed before any write
        model = domain.make_model(_model_spec(domain, data, config), config.model_factory, config.weights)
    elif model is None:  # harden's own model: its options (options.hidden, options.model, ...) checked before any write
        _model_spec(domain, data, config)
    if model is not None:
        _probe(model.to(device), domain, data, config)
    distributed.barrier()  # every process has checked the run directory before rank 0 changes it

    def first_write() -> None:
        if force and not resume:
            _clear(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", config.to_yaml())

    _on_main(first_write)
    return domain, config, data


def _probe(model: nn.Module, domain: Domain, data: DomainData, config: RunConfig) -> None:
    assert config.budget is not None
    x = next(iter(domain.loader(data.test, 8, shuffle=False)))[0]
    space = domain.eval_space(config.budget, data)
    try:
        with frozen_eval(model), torch.no_grad():
            inputs = space.encode(x, config.device) if isinstance(space, DiscreteSpace) else x.to(config.device)
            logits = logits_of(model(inputs))
    except (RuntimeError, ValueError, TypeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"the model does not take this data's inputs ({first}): check --model and --data") from None
    if logits.shape[1] < data.info.n_classes:
        raise DataError(
            f"the model outputs {logits.shape[1]} classes but the data has {data.info.n_classes}: "
            "check --model and --data"
        )


def harden(
    config: RunConfig, out: str | Path, *, force: bool = False, resume: bool = False, progress: bool = False,
    argv: list[str] | None = None,
) -> dict[str, Any]:
    """Train a standard and a hardened model on the same split, evaluate both, write the run directory.

    Returns the ``metrics.json`` content. With ``resume=True`` a stopped run in ``out`` continues from
    its checkpoints (models already saved are not retrained).
    """
    out = Path(out)
    domain, config, data = _start(config, out, force, resume)
    assert config.method is not None
    start = time.perf_counter()
    trained = {
        "standard": _train("standard", "standard", domain, data, config, out, resume, progress),
        "hardened": _train("hardened", config.method, domain, data, config, out, resume, progress),
    }
    reports: dict[str, RobustnessReport] = {}
    entries: dict[str, dict[str, Any]] = {}
    decided: dict[str, nn.Module] = {}
    for name, t in trained.items():
        log.info("%s model: evaluating with the %r preset", name, config.preset)
        report, dm, decided[name] = _evaluate(domain, t.model, t.threshold, data, config, progress)
        reports[name], entries[name] = report, _model_entry(report, dm, t.seconds)
    history = pd.DataFrame([row for t in trained.values() for row in t.history])
    metrics = _metrics("harden", domain, data, config, reports, entries, "hardened")
    metrics["method"] = config.method

    def write() -> None:
        # the hardened model's examples, then (inside their folder) those that beat the standard model
        _write_examples(domain, decided["hardened"], data, config, out, N_EXAMPLES)
        standard = trained["standard"]  # decided again: a domain may bind the model it attacks (the text domain)
        decided["standard"] = domain.decided(standard.model.eval(), standard.threshold)
        _write_examples(domain, decided["standard"], data, config, out, N_EXAMPLES, "examples/standard")
        _finish(out, metrics, reports, history, config, argv, domain)

    _on_main(write)
    log.info("run written to %s in %.1f s", out, time.perf_counter() - start)
    return metrics


def _load_for_eval(
    config: RunConfig, out: Path, force: bool
) -> tuple[Domain, RunConfig, DomainData, nn.Module, dict[str, Any]]:
    """Load the model to evaluate (refusing pickles) before anything is written, then start the run."""
    loader = get_domain(config.domain)
    if not config.model:
        if not (config.model_factory and config.weights):
            raise ConfigError(
                "--model is required: a model folder or a run directory (or your own model: --model-factory "
                "package.module:function with --weights FILE.safetensors)"
            )
        domain, config, data = _start(config, out, force, False, domain=loader)
        spec = _model_spec(domain, data, config)
        model = domain.make_model(spec, config.model_factory, config.weights).to(config.device)
        meta: dict[str, Any] = {"spec": spec, "threshold": domain.choose_threshold(model.eval(), data)}
    else:
        if config.weights:
            raise ConfigError("--weights goes with --model-factory alone: a --model folder holds its own weights")
        model_path = Path(config.model)
        if not model_path.exists():
            raise ConfigError(f"--model {model_path} does not exist")
        model, meta = loader.load_model(model_path, config.model_factory)
        domain, config, data = _start(config, out, force, False, model, domain=loader)
    _on_main(lambda: atomic_write_dir(
        out / "models" / "evaluated",
        lambda folder: domain.save_model(model, folder, meta.get("spec", {}), meta.get("threshold")),
    ))
    return domain, config, data, model, meta


def _single_model(
    command: str, config: RunConfig, out: Path, force: bool, progress: bool, argv: list[str] | None,
    all_examples: bool,
) -> dict[str, Any]:
    domain, config, data, model, meta = _load_for_eval(config, out, force)
    report, dm, decided = _evaluate(domain, model, meta.get("threshold"), data, config, progress)
    reports = {"evaluated": report}
    metrics = _metrics(command, domain, data, config, reports, {"evaluated": _model_entry(report, dm, None)},
                       "evaluated")

    def write() -> None:  # the adversarial inputs are made by rank 0 alone
        metrics["examples"] = _write_examples(domain, decided, data, config, out, None if all_examples else N_EXAMPLES)
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
