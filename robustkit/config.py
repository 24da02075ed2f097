"""Run configuration: every option of ``harden`` / ``evaluate`` / ``attack`` in one validated object.

A YAML file holds the same keys (``config.yaml`` in every run directory is one); command-line flags
override it. Unknown keys and bad values are rejected with the key's name and what is allowed.

Example:
    >>> from robustkit.config import RunConfig
    >>> RunConfig.from_dict({"domain": "images", "budget": 0.3, "epochs": 2}).epochs
    2
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from robustkit._renamed import renamed_keys
from robustkit.attacks.base import MAX_SEED
from robustkit.errors import ConfigError
from robustkit.evaluation.presets import PRESETS
from robustkit.training.callbacks import REPORT_TO
from robustkit.training.methods import NAMES as METHOD_NAMES
from robustkit.yamlfile import load_yaml

__all__ = ["RunConfig"]


#: torch takes thread counts below 2**31 (seeds: MAX_SEED, what every generator robustkit seeds takes)
MAX_THREADS = 2**31 - 1


def _positive_int(key: str, value: Any, most: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (most is not None and value > most):
        limit = f" and <= {most}" if most is not None else ""
        raise ConfigError(f"{key} must be an integer >= 1{limit}, got {value!r}")
    return value


def _number(key: str, value: Any, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ConfigError(f"{key} must be {'> 0' if positive else '>= 0'}, got {value!r}")
    return float(value)


@dataclass
class RunConfig:
    """All options of a run. ``None`` means "the domain's default", resolved by :meth:`resolved`.

    Attributes:
        domain: registered domain name (``images``, ``tabular``, ``text`` or a third party's).
        data: data spec for the domain (``digits``, ``mnist:DIR``, ``csv:PATH`` ...).
        method: training method (``standard``, ``fgsm-mix``, ``fast``, ``pgd``, ``trades``, ``free``, or one of
            the domain's own, :attr:`~robustkit.domain.Domain.methods`; checked when the domain is known).
        budget: threat budget, the main one (an Lp ball's eps; a cost budget; words edited).
        budgets: budgets of the accuracy-vs-budget curve (default: the domain's, up to ``budget``).
        epochs, batch_size, lr, budget_warmup: training settings (``budget_warmup``: epochs over which
            the training budget grows from 0).

    The first version's keys ``eps`` (now ``budgets``) and ``eps_warmup`` (now ``budget_warmup``) are
    still read, with a :class:`DeprecationWarning`, until robustkit 0.3; a key given under both names
    is a :class:`~robustkit.errors.ConfigError`.
        preset: evaluation attacks (``quick``, ``standard``, ``thorough``).
        seed, device, threads: reproducibility and hardware.
        model: a model folder or run directory (``evaluate`` and ``attack``).
        model_factory: ``package.module:function`` that builds the user's own ``nn.Module`` (images, tabular;
            see :mod:`robustkit.factory`), instead of the domain's reference model.
        weights: a ``.safetensors`` state dict loaded into the factory's model (starting weights for
            ``harden``, the weights to test for ``evaluate`` and ``attack``).
        report_to: experiment tracker of ``harden``: ``none``, ``tensorboard`` (event files in
            ``RUN/tensorboard/``) or ``mlflow`` (``MLFLOW_TRACKING_URI``); see :mod:`robustkit.training.callbacks`.
        keep_checkpoints: keep each model's last checkpoint (optimizer state, best and latest weights)
            after the model is saved; by default it is removed then (``models/`` holds the model, and
            ``--resume`` needs checkpoints only of a model still training).
        options: domain-specific options (passed to the domain untouched).
    """

    domain: str = ""
    data: str | None = None
    method: str | None = None
    budget: float | None = None
    budgets: list[float] | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    budget_warmup: float = 0.0
    preset: str = "standard"
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    model: str | None = None
    model_factory: str | None = None
    weights: str | None = None
    report_to: str = "none"
    keep_checkpoints: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """A validated config from a mapping (unknown keys are an error)."""
        if not isinstance(values, dict):
            raise ConfigError(f"a config must be a mapping of keys to values, got {type(values).__name__}")
        values = renamed_keys(values, "config")
        unknown = sorted(set(values) - set(cls.keys()), key=str)  # YAML keys may be numbers, null, ...
        if unknown:
            raise ConfigError(f"unknown config key {unknown[0]!r}: allowed keys are {', '.join(cls.keys())}")
        config = cls(**values)
        config.validate()
        return config

    @classmethod
    def from_yaml(cls, path: str | Path) -> RunConfig:
        """Read a YAML config file (a run directory's ``config.yaml`` reproduces that run)."""
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} not found")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{p} is not UTF-8 text (byte {exc.start} cannot be decoded): save it as UTF-8") from None
        values = load_yaml(text, str(p))
        return cls.from_dict({} if values is None else values)  # an empty file is an empty config

    def merged(self, overrides: dict[str, Any]) -> RunConfig:
        """A copy with the non-None ``overrides`` applied (command-line flags over a config file)."""
        values = dataclasses.asdict(self)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return RunConfig.from_dict(values)

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad key."""
        if not isinstance(self.domain, str):
            raise ConfigError(f"domain must be a name, got {self.domain!r}")
        if self.data is not None and not isinstance(self.data, str):
            raise ConfigError(f"data must be a data spec string, got {self.data!r}")
        if self.method is not None and (not isinstance(self.method, str) or not self.method.strip()):
            raise ConfigError(f"method must be a name such as {', '.join(METHOD_NAMES)}, got {self.method!r}")
        if self.budget is not None:
            self.budget = _number("budget", self.budget)
        if self.budgets is not None:
            if not isinstance(self.budgets, list) or not self.budgets:
                raise ConfigError(f"budgets must be a non-empty list of budgets, got {self.budgets!r}")
            self.budgets = [_number("budgets", e) for e in self.budgets]
        if self.epochs is not None:
            _positive_int("epochs", self.epochs)
        if self.batch_size is not None:
            _positive_int("batch_size", self.batch_size)
        if self.lr is not None:
            self.lr = _number("lr", self.lr, positive=True)
        self.budget_warmup = _number("budget_warmup", self.budget_warmup)
        if not isinstance(self.preset, str) or self.preset not in PRESETS:
            raise ConfigError(f"preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed must be an integer from 0 to 2**63 - 1, got {self.seed!r}")
        if not isinstance(self.device, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise ConfigError(f"device must be 'cpu' or 'cuda[:N]', got {self.device!r}")
        if self.threads is not None:
            _positive_int("threads", self.threads, MAX_THREADS)
        if self.model is not None and not isinstance(self.model, str):
            raise ConfigError(f"model must be a folder path, got {self.model!r}")
        factory, weights = self.model_factory, self.weights
        if factory is not None and (not isinstance(factory, str) or ":" not in factory):
            raise ConfigError(f"model_factory must look like package.module:function, got {self.model_factory!r}")
        if weights is not None and (not isinstance(weights, str) or not weights.endswith(".safetensors")):
            raise ConfigError(f"weights must be the path of a .safetensors file, got {self.weights!r}")
        if not isinstance(self.report_to, str) or self.report_to not in REPORT_TO:
            raise ConfigError(f"report_to must be one of {', '.join(REPORT_TO)}, got {self.report_to!r}")
        if not isinstance(self.keep_checkpoints, bool):
            raise ConfigError(f"keep_checkpoints must be true or false, got {self.keep_checkpoints!r}")
        if not isinstance(self.options, dict) or not all(isinstance(k, str) for k in self.options):
            raise ConfigError(f"options must be a mapping of option names to values, got {self.options!r}")

    def to_yaml(self) -> str:
        return yaml.safe_dump(dataclasses.asdict(self), sort_keys=False)
