"""The adapter interface every domain fills, and the registry that finds domains by name.

A :class:`Domain` answers four questions (what an attacker may change, how raw inputs become model
inputs and back, which examples are attacked and how a prediction is decided, what "robust" means
for its users); :mod:`robustkit.pipeline` does everything else once for all domains.

Third parties add a domain without touching robustkit, through the entry-point group
``robustkit.domains`` in their package metadata::

    [project.entry-points."robustkit.domains"]
    audio = "my_package.audio:AudioDomain"

or at run time with :func:`register_domain`.

A domain must say three things (abstract methods): how to read data (:meth:`Domain.load_data`), how to
build its model (:meth:`Domain.build_model`) and what an attacker may change (:meth:`Domain.space`);
every other hook has a default. Its options are a :class:`~robustkit.options.DomainOptions` dataclass
(:attr:`Domain.Options`), checked once and handed to the hooks that take ``options``; fields that name a
flag become command-line flags of ``robustkit harden/evaluate/attack DOMAIN``.

Example:
    >>> import torch, robustkit as rk
    >>> class Tiny(rk.Domain):
    ...     name = "tiny"
    ...     def load_data(self, spec, seed, options):
    ...         x, y = rk.datasets.robust_nonrobust(300, seed=seed)
    ...         part = torch.utils.data.TensorDataset(x[:100], y[:100])
    ...         return rk.DomainData(part, part, part, rk.DatasetInfo("tiny", n_classes=3))
    ...     def build_model(self, spec):
    ...         return torch.nn.Linear(130, 3)
    ...     def space(self, budget, data):
    ...         return rk.LinfBall(eps=budget, bounds=rk.datasets.TOY_BOUNDS)
    >>> rk.register_domain(Tiny)
    >>> rk.get_domain("tiny").name
    'tiny'
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, cast

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset

from robustkit.errors import ConfigError, RobustkitError
from robustkit.factory import build_from_factory, check_finite
from robustkit.models import ThresholdModel
from robustkit.options import DomainOptions
from robustkit.spaces import ContinuousSpace, PerturbationSpace

if TYPE_CHECKING:
    from robustkit.attacks.base import Attack
    from robustkit.training.fit import Fitted, TrainSettings
    from robustkit.training.methods import Method

__all__ = [
    "Assessment", "DatasetInfo", "Domain", "DomainData", "Examples", "available_domains", "get_domain",
    "register_domain",
]

log = logging.getLogger("robustkit")

ENTRY_POINT_GROUP = "robustkit.domains"
_REGISTRY: dict[str, type[Domain[Any]]] = {}
#: a domain's options class
OptionsT = TypeVar("OptionsT", bound=DomainOptions)


@dataclass
class DatasetInfo:
    """What ``metrics.json`` says about the data: name, content hash and how it was split."""

    name: str
    sha256: str | None = None
    split: str = ""
    n_classes: int = 2
    class_names: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256, "split": self.split}


@dataclass
class DomainData:
    """A domain's data, split and encoded: each split a torch ``Dataset`` of (model input, label).

    ``raw`` may hold anything the domain needs later (original rows, strings, preprocessing).
    """

    train: Dataset[Any]
    val: Dataset[Any]
    test: Dataset[Any]
    info: DatasetInfo
    raw: dict[str, Any] = field(default_factory=dict)

    def digest(self) -> DomainData:
        """The same data without its examples: the dataset note (name, sha256, split) and ``raw`` minus
        its ``frames``, what a fitted estimator keeps instead of its training data."""
        empty: Dataset[Any] = _Empty()
        raw = {k: v for k, v in self.raw.items() if k != "frames"}
        return DomainData(empty, empty, empty, self.info, raw)


class _Empty(Dataset[Any]):
    def __len__(self) -> int:
        return 0

    def __getitem__(self, i: int) -> Any:
        raise IndexError(i)


@dataclass
class Examples:
    """Clean and adversarial inputs with labels and the decided model's predictions on both.

    ``x`` and ``x_adv`` are tensors for continuous spaces and lists of objects for discrete ones.
    """

    x: Any
    x_adv: Any
    y: torch.Tensor
    pred_clean: torch.Tensor
    pred_adv: torch.Tensor
    success: torch.Tensor
    #: the domain's own adversarial examples behind the figures (:attr:`Assessment.evidence`), for this model
    evidence: Any = None

    def __len__(self) -> int:
        return len(self.y)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every field that is a tensor, by name."""
        return {k: v for k, v in vars(self).items() if isinstance(v, torch.Tensor)}


@dataclass(frozen=True)
class Assessment:
    """What a domain adds to one model's evaluation (:meth:`Domain.assess`).

    ``metrics`` go to ``metrics.json`` under ``domain_metrics``. ``survived`` holds the attacks the domain
    ran itself at the main budget (a search over whole rows, say): per attack, one bool per test example
    in data order, True where the example withstood it; the pipeline adds them to the report's worst
    case, headline and verdict. ``evidence`` holds the adversarial examples behind them, handed to
    :meth:`Domain.write_examples` for this same model (on :attr:`Examples.evidence`).
    """

    metrics: dict[str, Any] = field(default_factory=dict)
    survived: dict[str, torch.Tensor] = field(default_factory=dict)
    evidence: Any = None


class Domain(ABC, Generic[OptionsT]):
    """Base class of domain adapters: implement :meth:`load_data`, :meth:`build_model` and :meth:`space`;
    override any other hook your domain needs.

    Class attributes give the defaults the CLI and the pipeline use when an option is not set.
    """

    #: registry name, used on the command line (``robustkit harden NAME``)
    name: ClassVar[str] = ""
    #: data spec read when ``--data`` is not given (built-in data that always works offline)
    default_data: ClassVar[str] = ""
    #: default threat budget (eps for Lp balls)
    default_budget: ClassVar[float] = 0.1
    #: default training method and epochs for ``harden``
    default_method: ClassVar[str] = "pgd"
    default_epochs: ClassVar[int] = 5
    default_batch_size: ClassVar[int] = 128
    default_lr: ClassVar[float] = 1e-3
    #: training methods of the domain's own, besides the core ones (see :meth:`training_method`)
    methods: ClassVar[tuple[str, ...]] = ()
    #: the domain's options (a :class:`~robustkit.options.DomainOptions` dataclass; its flags join the CLI's)
    Options: ClassVar[type[DomainOptions]] = DomainOptions

    def parse_options(self, values: Any) -> OptionsT:
        """The domain's options from a config's ``options:`` mapping, checked before any work."""
        return cast(OptionsT, self.Options.parse(values, self.name))

    # ----------------------------------------------------------------- data
    @abstractmethod
    def load_data(self, spec: str, seed: int, options: OptionsT) -> DomainData:
        """Read the data named by ``spec`` (``digits``, ``mnist:DIR``, ``csv:PATH`` ...) and split it."""

    def loader(self, dataset: Dataset[Any], batch_size: int, shuffle: bool) -> DataLoader[Any]:
        """A DataLoader over one split (override for custom batching, e.g. dynamic padding).

        Shuffling draws from torch's global generator, which the trainer seeds and checkpoints, so a
        resumed run sees the same data order as an uninterrupted one.
        """
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle)

    # ----------------------------------------------------------------- model
    def model_spec(self, data: DomainData, options: OptionsT) -> dict[str, Any]:
        """JSON-able settings from which :meth:`build_model` builds the default model."""
        return {}

    @abstractmethod
    def build_model(self, spec: dict[str, Any]) -> nn.Module:
        """The (untrained) model described by ``spec``."""

    def model_arguments(self, data: DomainData) -> dict[str, Any]:
        """JSON-able facts about the data that a user's ``--model-factory`` function may take by name."""
        return {"classes": data.info.n_classes}

    def factory_spec(self, factory: str, data: DomainData) -> dict[str, Any]:
        """The spec of a model built by the user's ``factory`` (its name and the arguments it is offered)."""
        return {"factory": factory, "arguments": self.model_arguments(data)}

    def make_model(self, spec: dict[str, Any], factory: str | None = None, weights: str | None = None) -> nn.Module:
        """The model ``spec`` describes: the domain's own, or one built by the user's factory.

        A factory spec is built only when the caller names the same ``factory`` (robustkit never imports
        code named in a file); ``weights`` (safetensors) are loaded into a factory's model.
        """
        if "factory" not in spec:
            return self.build_model(spec)
        if factory is None or factory != spec["factory"]:
            raise ConfigError(
                f"this model was built by {spec['factory']}: pass --model-factory {spec['factory']} to load it "
                "(robustkit never imports code named in a model file)"
            )
        return build_from_factory(factory, dict(spec.get("arguments", {})), weights)

    # ----------------------------------------------------------------- threat model
    @abstractmethod
    def space(self, budget: float, data: DomainData) -> ContinuousSpace:
        """The continuous space adversarial training perturbs, at ``budget``."""

    def eval_space(self, budget: float, data: DomainData, model: nn.Module | None = None) -> PerturbationSpace:
        """The space evaluation attacks search on ``model`` (default: the training space). A domain whose
        space depends on the model (text: its tokenizer and embeddings) reads it from ``model``, never
        from state an earlier call left behind."""
        return self.space(budget, data)

    def default_budget_for(self, spec: str, options: OptionsT | None = None) -> float:
        """The default budget for the data ``spec`` and the run's domain ``options`` (e.g. MNIST 0.3, a
        tabular schema file's own budget); default: ``default_budget``."""
        return self.default_budget

    def default_lr_for(self, spec: str, options: OptionsT | None = None) -> float:
        """The default learning rate for the data ``spec`` and the run's domain ``options`` (e.g. a small
        one for fine-tuning a pretrained model); default: ``default_lr``."""
        return self.default_lr

    def eval_budgets(self, budget: float) -> list[float]:
        """Budgets of the accuracy-vs-budget curve (default: a quarter steps up to the budget)."""
        return [round(budget * f, 6) for f in (0.25, 0.5, 0.75, 1.0)]

    def fit(self, model: nn.Module, data: DomainData, settings: TrainSettings,
            resume: str | Path | None = None) -> Fitted:
        """Train ``model`` for ``harden`` (default: :func:`~robustkit.training.fit.fit_model`, the one trainer
        loop). A domain whose model is not trained by gradients (a tree ensemble) trains it its own way here
        and returns the same :class:`~robustkit.training.fit.Fitted` (with its operating threshold)."""
        from robustkit.training.fit import fit_model

        return fit_model(self, data, model, settings, resume=resume)

    def training_plan(self, model: nn.Module, settings: TrainSettings) -> dict[str, Any]:
        """What :meth:`fit` does to ``model`` with ``settings``, for the log, ``metrics.json`` and the report
        (default: the method and its epochs). A domain that trains a model its own way (:meth:`fit`) says how
        here, so that no run names a method it did not use."""
        return {"method": settings.method, "epochs": settings.epochs}

    def eval_attacks(self, model: nn.Module, space: PerturbationSpace, preset: str,
                     seed: int) -> tuple[str | list[Attack], bool]:
        """The attacks evaluation runs on the decided ``model`` over ``space`` and whether the gradient-masking
        checks run: default the ``preset`` and the checks. A model without gradients gets gradient-free
        attacks and no checks (which compare gradient attacks); the domain adds its own in :meth:`assess`."""
        return preset, True

    def training_method(self, name: str, data: DomainData, budget: float) -> Method:
        """The domain's own training method ``name`` (one of :attr:`methods`), configured for ``data`` and
        ``budget``: e.g. adversarial training on real edited strings regenerated every epoch."""
        raise ConfigError(f"domain {self.name!r} has no training method {name!r}")

    def attackable(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """Which examples may be attacked (None: all). Fraud and spam attack only the positive class."""
        return None

    def attackable_mask(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """:meth:`attackable` as a bool mask (all True where it says None): what trainers and evaluations take."""
        m = self.attackable(x, y)
        return torch.ones(len(y), dtype=torch.bool, device=y.device) if m is None else m

    # ----------------------------------------------------------------- decision rule
    def choose_threshold(self, model: nn.Module, data: DomainData) -> float | None:
        """Operating threshold for binary domains, chosen on validation data (None: argmax)."""
        return None

    def decided(self, model: nn.Module, threshold: float | None) -> nn.Module:
        """The model as evaluated: argmax of its logits equals the domain's decision."""
        return model if threshold is None else ThresholdModel(model, threshold)

    # ----------------------------------------------------------------- metrics and examples
    def assess(self, model: nn.Module, data: DomainData, report: Any) -> Assessment:
        """The domain's own figures and attacks on the decided ``model`` after ``report`` (default: none).

        Binary figures at the operating threshold (precision, recall, F1, false-positive rate, recall
        under the worst attack) are added by the pipeline for every report whose headline is recall.
        """
        return Assessment()

    def write_examples(self, directory: Path, examples: Examples, data: DomainData) -> list[Path]:
        """Write adversarial examples in the domain's own form; default: a safetensors file of tensors."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "examples.safetensors"
        save_file({k: v.detach().cpu().contiguous() for k, v in examples.tensors().items()}, str(path))
        return [path]

    def examples_html(self, directory: Path) -> str:
        """The examples :meth:`write_examples` wrote to ``directory``, as an HTML fragment that ``report.html``
        embeds (a table of changed cells, text pairs with the edits marked); default "": the report shows
        only the PNG files there. Render it from a template in the domain's package with
        ``robustkit.rendering.render("name.html.j2", __name__, ...)``: a plain string is shown escaped, as text."""
        return ""

    # ----------------------------------------------------------------- persistence
    def save_model(
        self, model: nn.Module, directory: Path, spec: dict[str, Any], threshold: float | None = None
    ) -> None:
        """Write ``model.safetensors`` and ``model.json`` (domain, spec, threshold): never a pickle."""
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(directory / "model.safetensors"))
        meta = {"domain": self.name, "spec": spec, "threshold": threshold}
        (directory / "model.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")

    def load_model(self, directory: str | Path, factory: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
        """The model saved in ``directory`` and its metadata (``spec``, ``threshold``); ``factory``: the
        ``--model-factory`` that built it, when a user's function did."""
        path = model_folder(directory)
        meta_file = path / "model.json"
        if not meta_file.is_file() or not (path / "model.safetensors").is_file():
            pickles = [p.name for p in path.glob("*") if p.suffix in (".pt", ".pth", ".bin", ".pkl", ".ckpt")]
            hint = f" (found {', '.join(pickles)}: pickled weights are refused, they can run code)" if pickles else ""
            raise ConfigError(
                f"{path} is not a robustkit model folder: expected model.json and model.safetensors{hint}"
            )
        meta = read_model_json(meta_file)
        if meta.get("domain") != self.name:
            raise ConfigError(f"{path} holds a {meta.get('domain')!r} model, not a {self.name!r} one")
        try:
            model = self.make_model(meta.get("spec", {}), factory)
        except RobustkitError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as exc:
            raise ConfigError(f"{meta_file}: its spec does not describe a {self.name} model ({exc})") from None
        try:
            state = load_file(str(path / "model.safetensors"))
        except (SafetensorError, OSError) as exc:
            raise ConfigError(f"{path / 'model.safetensors'} is not a readable safetensors file ({exc})") from None
        check_finite(state, path / "model.safetensors")
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            detail = " ".join(str(exc).split())
            raise ConfigError(
                f"the weights in {path} do not fit the model its model.json describes ({detail[:300]})"
            ) from None
        return model, meta


def model_folder(directory: str | Path) -> Path:
    """The model folder ``directory`` names: itself, or a run directory's hardened (else evaluated) model."""
    path = Path(directory)
    for name in ("hardened", "evaluated"):
        if (path / "models" / name / "model.json").is_file():
            return path / "models" / name
    return path


def read_model_json(path: Path) -> dict[str, Any]:
    """A model folder's ``model.json``, checked: an object whose ``spec`` is an object and whose ``threshold``
    is absent, null or a probability strictly between 0 and 1."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # not UTF-8, not JSON, truncated
        raise ConfigError(f"{path} is not a readable model.json ({' '.join(str(exc).split())[:200]})") from None
    if not isinstance(meta, dict):
        raise ConfigError(f"{path} holds a JSON {type(meta).__name__}, not an object with domain, spec, threshold")
    if not isinstance(meta.get("spec", {}), dict):
        raise ConfigError(f"{path}: spec must be an object of model settings, got {meta['spec']!r}")
    threshold = meta.get("threshold")
    if threshold is not None and (
        isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 < threshold < 1
    ):
        raise ConfigError(f"{path}: threshold must be null or a probability between 0 and 1, got {threshold!r}")
    return meta



def register_domain(domain: type[Domain[Any]], name: str | None = None) -> None:
    """Make ``domain`` available under ``name`` (default: its ``name`` attribute)."""
    key = name or domain.name
    if not key:
        raise ConfigError("a domain needs a name: set the class attribute `name` or pass name=")
    _REGISTRY[key] = domain


def _entry_point_domains() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_domains() -> list[str]:
    """Names of the registered domains and those installed through entry points."""
    return sorted(set(_REGISTRY) | set(_entry_point_domains()))


def get_domain(name: str) -> Domain[Any]:
    """An instance of the domain called ``name``."""
    if name not in _REGISTRY:
        found = _entry_point_domains().get(name)
        if found is None:
            names = ", ".join(available_domains()) or "none installed"
            raise ConfigError(f"unknown domain {name!r}: choose one of {names}")
        register_domain(found.load(), name)
    domain = _REGISTRY[name]
    missing = sorted(getattr(domain, "__abstractmethods__", ()))
    if missing:
        raise ConfigError(f"domain {name!r} ({domain.__module__}.{domain.__qualname__}) does not implement "
                          f"{', '.join(missing)}: every domain says how to read data, build its model and "
                          "what an attacker may change")
    return domain()
