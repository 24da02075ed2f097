"""The images domain: Linf / L2 balls in pixel space, pixels in [0, 1], normalisation inside the model.

Data specs: ``digits`` (built in, the default), ``mnist:DIR``, ``fashion-mnist:DIR``, ``cifar10:DIR``
(binary version), ``folder:DIR`` (one subfolder per class); see :mod:`domains.images.readers`.
Reference models: :class:`SmallCNN` for grey images, :class:`PreActResNet18` for colour ones, both
behind :class:`Normalize` so that attacks always perturb real pixels.

Options (``options:`` in a config file):

- ``norm``: ``linf`` (default) or ``l2``: the threat model, a ball of radius ``budget`` in pixel space.
- ``val_fraction`` (0.1): share of the training pool held out for validation (stratified, seeded).
- ``test_fraction`` (0.25): share held out for testing when the data has no official test set
  (digits, folders); MNIST, Fashion-MNIST and CIFAR-10 use their official test sets.
- ``max_train``, ``max_val``, ``max_test``: stratified subsamples of at most this many examples (speed).
- ``size``, ``channels``: folder data only: resize to ``size`` x ``size``; 1 (grey) or 3 (RGB).
- ``model`` (``small-cnn`` or ``preact-resnet18``; default by channels) and ``width`` (SmallCNN).

The defaults (budget 0.15 in Linf, PGD training for 15 epochs, batches of 64, learning rate 3e-3)
are tuned for the built-in 8x8 digits, where the pixel levels are sixteenths: at 0.15 a standard CNN
keeps about a tenth of its accuracy under PGD and a PGD-trained one about three quarters. On other
data pass the usual budgets: ``--budget 0.3`` for MNIST, ``--budget 0.031`` (8/255) for CIFAR-10
(there also ``--lr 1e-3``).

Example:
    >>> from domains.images import ImagesDomain, ImagesOptions
    >>> domain = ImagesDomain()
    >>> data = domain.load_data("digits", seed=0, options=ImagesOptions(max_train=200))
    >>> len(data.train), len(data.val), len(data.test), data.info.n_classes
    (200, 135, 449, 10)
    >>> domain.space(0.1, data)
    LinfBall(eps=0.1)
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from domains.images.examples import save_grid
from domains.images.models import KINDS, ImageClassifier, Normalize, PreActResNet18, SmallCNN, build
from domains.images.readers import Images, read_spec
from robustkit import ConfigError, ContinuousSpace, DataError, DatasetInfo, Domain, DomainData, L2Ball, LinfBall
from robustkit.domain import Assessment, Examples
from robustkit.evaluation import RobustnessReport
from robustkit.options import DomainOptions, option

__all__ = [
    "ImageClassifier",
    "ImagesDomain",
    "ImagesOptions",
    "Normalize",
    "PixelDataset",
    "PreActResNet18",
    "SmallCNN",
    "build",
    "images_dataset",
    "load_model",
    "save_model",
]

#: Examples shown in ``examples/grid.png`` (the CSV and the tensors hold all of them).
GRID_EXAMPLES = 16


log = logging.getLogger("robustkit")


class PixelDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """(image, label) pairs: images (N, C, H, W) as uint8 0-255 or float in [0, 1], served as float in [0, 1].

    Example:
        >>> ds = PixelDataset(torch.full((2, 1, 2, 2), 255, dtype=torch.uint8), torch.tensor([0, 1]))
        >>> ds[1][0].flatten().tolist(), int(ds[1][1])
        ([1.0, 1.0, 1.0, 1.0], 1)
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y
        self.scale = 255.0 if x.dtype == torch.uint8 else 1.0

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i].float() / self.scale, self.y[i]

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The images (float in [0, 1]) and labels at positions ``index``, in one indexing operation."""
        return self.x[index].float() / self.scale, self.y[index]


def images_dataset(x: torch.Tensor, y: torch.Tensor) -> PixelDataset:
    """Your own images as a dataset, checked: ``x`` float (N, C, H, W) pixels in [0, 1], ``y`` class indices.

    Example:
        >>> images_dataset(torch.full((1, 1, 8, 8), 200.0), torch.tensor([0]))
        Traceback (most recent call last):
        ...
        robustkit.errors.DataError: pixel values go up to 200 but must lie in [0, 1]: scale them, e.g. x / 255
    """
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise DataError("images and labels must be torch tensors: convert arrays with torch.as_tensor")
    if x.dtype == torch.uint8:
        raise DataError("images are uint8 (0-255): pass x.float() / 255, pixels in [0, 1]")
    if not torch.is_floating_point(x):
        raise DataError(f"images must be float pixels in [0, 1], got dtype {x.dtype}")
    if x.dim() == 3:
        raise DataError(f"images of shape {tuple(x.shape)} lack the channel axis: pass x.unsqueeze(1) (N, 1, H, W)")
    if x.dim() != 4:
        raise DataError(f"images must be (N, C, H, W), got shape {tuple(x.shape)}")
    if y.dim() != 1 or len(y) != len(x) or torch.is_floating_point(y):
        raise DataError(f"labels must be {len(x)} integer class indices (one per image), got shape {tuple(y.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise DataError("images contain NaN or Inf values")
    high, low = float(x.max()), float(x.min())
    if high > 1.0:
        hint = "scale them, e.g. x / 255" if high > 1.5 else "clip them with x.clamp(0, 1)"
        raise DataError(f"pixel values go up to {high:g} but must lie in [0, 1]: {hint}")
    if low < 0.0:
        raise DataError(
            f"pixel values go down to {low:g} but must lie in [0, 1]: pass raw pixels, not normalised ones "
            "(normalisation belongs inside the model, see Normalize)"
        )
    return PixelDataset(x, y.long())


def _fraction(value: float) -> bool:
    return 0 < value < 1


def _at_least(low: int) -> Any:
    return lambda value: value >= low


@dataclass(frozen=True)
class ImagesOptions(DomainOptions):
    """The images domain's options (see the module docstring)."""

    norm: str = option("linf", "threat model: a Linf or L2 ball of radius budget in pixel space", flag="--norm",
                       choices=("linf", "l2"))
    val_fraction: float = option(0.1, "share of the training pool held out for validation",
                                 check=_fraction, must="a number between 0 and 1 (exclusive)")
    test_fraction: float = option(0.25, "share held out for testing when the data has no official test set",
                                  check=_fraction, must="a number between 0 and 1 (exclusive)")
    max_train: int | None = option(None, "at most this many training images (a stratified subsample)",
                                   flag="--max-train", check=_at_least(1), must="an integer >= 1")
    max_val: int | None = option(None, "at most this many validation images", check=_at_least(1),
                                 must="an integer >= 1")
    max_test: int | None = option(None, "at most this many test images", flag="--max-test", check=_at_least(1),
                                  must="an integer >= 1")
    size: int | None = option(None, "folder data: resize images to SIZE x SIZE", check=_at_least(4),
                              must="an integer >= 4")
    channels: int | None = option(None, "folder data: 1 (grey) or 3 (RGB)", choices=(None, 1, 3))
    model: str | None = option(None, "reference model (default by channels: small-cnn grey, preact-resnet18 colour)",
                               choices=(None, *KINDS))
    width: int | None = option(None, "channels of SmallCNN's first layer (default 16 up to 16x16 images, else 32)",
                               check=_at_least(1), must="an integer >= 1")


def _stratified(y: torch.Tensor, take: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of ``take`` examples drawn per class in proportion to its size, and of the rest (both sorted)."""
    classes, counts = torch.unique(y, return_counts=True)
    exact = counts.double() * take / len(y)
    quota = exact.floor().long()
    remainder = take - int(quota.sum())
    if remainder:
        quota[torch.argsort(exact - quota, descending=True, stable=True)[:remainder]] += 1
    chosen = []
    for c, q in zip(classes.tolist(), quota.tolist(), strict=True):
        members = (y == c).nonzero().squeeze(1)
        chosen.append(members[torch.randperm(len(members), generator=generator)[:q]])
    picked = torch.zeros(len(y), dtype=torch.bool)
    picked[torch.cat(chosen)] = True
    return picked.nonzero().squeeze(1), (~picked).nonzero().squeeze(1)


def _take(images: Images, index: torch.Tensor) -> Images:
    return Images(images.x[index], images.y[index])


def _cap(images: Images, limit: int | None, generator: torch.Generator) -> Images:
    if limit is None or limit >= len(images.y):
        return images
    return _take(images, _stratified(images.y, limit, generator)[0])


#: the smallest per-channel pixel std used to normalise (a flat channel would divide by zero)
MIN_STD = 1e-3


def _channel_stats(x: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of pixels in [0, 1], accumulated in float64 over chunks."""
    scale = 255.0 if x.dtype == torch.uint8 else 1.0
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for chunk in x.split(4096):
        v = chunk.double() / scale
        total += v.sum(dim=(0, 2, 3))
        squares += (v * v).sum(dim=(0, 2, 3))
    n = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / n
    std = (squares / n - mean * mean).clamp_min(0).sqrt()
    return [round(float(m), 6) for m in mean], [round(max(float(s), MIN_STD), 6) for s in std]


class ImagesDomain(Domain[ImagesOptions]):
    """Image classification under Linf or L2 perturbations of pixels in [0, 1] (see the module docstring).

    Example:
        >>> domain = ImagesDomain()
        >>> domain.name, domain.default_data, domain.default_budget
        ('images', 'digits', 0.15)
    """

    name = "images"
    default_data = "digits"
    default_budget = 0.15
    default_method = "pgd"
    default_epochs = 15
    default_batch_size = 64
    default_lr = 3e-3

    #: the customary Linf budgets of the literature, by data set (see the module docstring)
    budgets: ClassVar[dict[str, float]] = {"mnist": 0.3, "fashion-mnist": 0.1, "cifar10": 8 / 255}
    Options = ImagesOptions

    def default_budget_for(self, spec: str, options: ImagesOptions | None = None) -> float:
        """MNIST 0.3, Fashion-MNIST 0.1, CIFAR-10 8/255, otherwise ``default_budget`` (digits, folders)."""
        return self.budgets.get(spec.split(":", 1)[0], self.default_budget)

    # ----------------------------------------------------------------- data
    def load_data(self, spec: str, seed: int, options: ImagesOptions) -> DomainData:
        norm, val_fraction, test_fraction = options.norm, options.val_fraction, options.test_fraction
        caps = [options.max_train, options.max_val, options.max_test]
        if not spec.startswith("folder:") and {"size", "channels"} & options.given:
            raise ConfigError("options.size and options.channels apply to folder data only (--data folder:DIR)")
        source = read_spec(spec, size=options.size, channels=options.channels)
        present = source.train.y.unique()
        if len(present) < 2:
            raise DataError(f"{spec}: every image has the same label ({present.tolist()}): a classifier needs at "
                            "least two classes")
        generator = torch.Generator().manual_seed(seed)
        pool, test = source.train, source.test
        origin = "official test set"
        if test is None:
            test_index, rest = _stratified(pool.y, max(1, round(test_fraction * len(pool.y))), generator)
            test, pool = _take(pool, test_index), _take(pool, rest)
            origin = f"{test_fraction:g} of the data"
        val_index, train_index = _stratified(pool.y, max(1, round(val_fraction * len(pool.y))), generator)
        train, val = _take(pool, train_index), _take(pool, val_index)
        train, val, test = (_cap(s, cap, generator) for s, cap in zip((train, val, test), caps, strict=True))
        for split, part in (("training", train), ("validation", val), ("test", test)):
            if len(part.y) == 0:
                raise DataError(f"the {split} split of {spec} is empty: use more data or other split fractions")
        limits = ", ".join(f"{k} {v}" for k, v in zip(("max_train", "max_val", "max_test"), caps, strict=True) if v)
        split = (f"train {len(train.y)} / val {len(val.y)} / test {len(test.y)} ({origin}); stratified, seed {seed}"
                 + (f"; subsampled: {limits}" if limits else ""))
        info = DatasetInfo(source.name, source.sha256, split, n_classes=len(source.class_names),
                           class_names=list(source.class_names))
        mean, std = _channel_stats(train.x)
        if all(s <= MIN_STD for s in std):
            log.warning("%s: every training image is one flat colour (pixel std below %g): there is nothing to learn "
                        "or attack; check the files", spec, MIN_STD)
        raw = {"norm": norm, "shape": tuple(train.x.shape[1:]), "mean": mean, "std": std, "seed": seed}
        return DomainData(PixelDataset(train.x, train.y), PixelDataset(val.x, val.y), PixelDataset(test.x, test.y),
                          info, raw)

    # ----------------------------------------------------------------- model
    def model_spec(self, data: DomainData, options: ImagesOptions) -> dict[str, Any]:
        channels, size, _ = data.raw["shape"]
        kind = options.model or ("small-cnn" if channels == 1 else "preact-resnet18")
        spec = {"kind": kind, "channels": channels, "size": size, "classes": data.info.n_classes,
                "mean": data.raw["mean"], "std": data.raw["std"]}
        if kind == "small-cnn":
            spec["width"] = options.width or (16 if size <= 16 else 32)
        return spec

    def build_model(self, spec: dict[str, Any]) -> nn.Module:
        return build(spec)

    def model_arguments(self, data: DomainData) -> dict[str, Any]:
        """For ``--model-factory``: ``channels``, ``size``, ``classes`` and the training set's per-channel
        ``mean`` and ``std`` (the model takes [0, 1] pixels; normalising is its own job)."""
        channels, size, _ = data.raw["shape"]
        return {"channels": channels, "size": size, "classes": data.info.n_classes,
                "mean": data.raw["mean"], "std": data.raw["std"]}

    # ----------------------------------------------------------------- threat model
    def space(self, budget: float, data: DomainData) -> ContinuousSpace:
        ball = L2Ball if data.raw.get("norm") == "l2" else LinfBall
        return ball(eps=budget, bounds=(0.0, 1.0))

    # ----------------------------------------------------------------- metrics and examples
    def assess(self, model: nn.Module, data: DomainData, report: RobustnessReport) -> Assessment:
        """Clean and worst-case robust accuracy per class, at the main budget, from the evaluation itself."""
        outcomes = report.outcomes
        y = outcomes["label"]
        per_clean: dict[str, float | None] = {}
        per_robust: dict[str, float | None] = {}
        for k, name in enumerate(data.info.class_names):
            members = y == k
            n = int(members.sum())
            per_clean[name] = float(outcomes["clean_correct"][members].sum()) / n if n else None
            per_robust[name] = float(outcomes["robust"][members].sum()) / n if n else None
        return Assessment({"clean_accuracy_per_class": per_clean, "robust_accuracy_per_class": per_robust})

    def write_examples(self, directory: Path, examples: Examples, data: DomainData) -> list[Path]:
        """``examples.safetensors`` (exact tensors), ``examples.csv`` (one row each) and ``grid.png``."""
        paths = super().write_examples(directory, examples, data)
        x, x_adv, y = examples.x, examples.x_adv, examples.y
        names = data.info.class_names
        grid = directory / "grid.png"
        n = min(GRID_EXAMPLES, len(y))
        save_grid(grid, x[:n], x_adv[:n], y[:n], examples.pred_clean[:n], examples.pred_adv[:n], names)
        table = directory / "examples.csv"
        delta = (x_adv - x).flatten(1)
        linf, l2 = delta.abs().amax(dim=1), delta.norm(dim=1)
        with table.open("w", newline="", encoding="utf-8") as f:
            out = csv.writer(f)
            out.writerow(["index", "label", "clean_prediction", "adversarial_prediction", "fooled", "linf", "l2"])
            for i in range(len(y)):
                out.writerow([i, _name(names, y, i), _name(names, examples.pred_clean, i),
                              _name(names, examples.pred_adv, i), bool(examples.success[i]),
                              f"{float(linf[i]):.6g}", f"{float(l2[i]):.6g}"])
        return [*paths, grid, table]


def _name(names: list[str], classes: torch.Tensor | None, i: int) -> str:
    """The class name of ``classes[i]`` (its number if the data names fewer classes; "" if None)."""
    if classes is None:
        return ""
    k = int(classes[i])
    return names[k] if k < len(names) else str(k)


def save_model(model: nn.Module, directory: str | Path) -> None:
    """Write an image model built by :func:`build` (or trained by ``harden``) as safetensors + ``model.json``.

    Example:
        >>> import tempfile
        >>> model = build({"kind": "small-cnn", "channels": 1, "size": 8, "classes": 10})
        >>> folder = tempfile.mkdtemp()
        >>> save_model(model, folder)
        >>> load_model(folder).spec == model.spec
        True
    """
    if not isinstance(model, ImageClassifier):
        raise ConfigError(
            f"save_model writes robustkit image models (domains.images.build), got {type(model).__name__}: "
            "save other modules with safetensors.torch.save_file(model.state_dict(), path)"
        )
    ImagesDomain().save_model(model, Path(directory), model.spec)


def load_model(directory: str | Path) -> ImageClassifier:
    """The image model in a model folder or a run directory (its hardened model): pixels in [0, 1] -> logits.

    Example:
        >>> load_model("/nonexistent")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        robustkit.errors.ConfigError: /nonexistent is not a robustkit model folder: expected model.json and ...
    """
    model, _ = ImagesDomain().load_model(directory)
    assert isinstance(model, ImageClassifier)
    return model.eval()
