"""evaluate(): robust accuracy of a model under a suite of attacks and budgets, with masking checks.

Example:
    >>> import torch, robustkit as rk
    >>> model = torch.nn.Linear(1, 2, bias=False)  # class 0 when x > 0, else class 1
    >>> with torch.no_grad():
    ...     _ = model.weight.copy_(torch.tensor([[1.0], [-1.0]]))
    >>> x, y = torch.tensor([[-0.5], [-0.3], [0.05], [0.3], [0.5]]), torch.tensor([1, 1, 0, 0, 0])
    >>> report = rk.evaluate(model, (x, y), rk.LinfBall(eps=0.1, bounds=(-1.0, 1.0)), attacks="quick")
    >>> report.clean_accuracy, report.robust_accuracy, report.verdict
    (1.0, {'pgd': 0.8, 'worst': 0.8}, 'partly robust at budget 0.1: keeps 80% of clean accuracy')
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import torch
from torch import nn
from tqdm.auto import tqdm

from robustkit import _random, distributed
from robustkit._renamed import renamed
from robustkit.attacks.base import Attack, AttackResult, as_labels, seed_value
from robustkit.attacks.pgd import FGSM, PGD
from robustkit.attacks.random_search import RandomSearch
from robustkit.attacks.search import QuerySearch
from robustkit.attacks.square import Square
from robustkit.attacks.transfer import Transfer
from robustkit.errors import ConfigError, DataError, ModelError, RobustkitError
from robustkit.evaluation import checks as ck
from robustkit.evaluation import meters as mt
from robustkit.evaluation.presets import ATTACKS, CONTINUOUS_ONLY, PRESETS, AttackSpec
from robustkit.evaluation.report import WORST, Headline, RobustnessReport, judge
from robustkit.models import (
    autocast,
    autocast_dtype,
    frozen_eval,
    in_chunks,
    logits_of,
    model_device,
    out_of_memory,
    trim_host_memory,
)
from robustkit.spaces import ContinuousSpace, DiscreteSpace, PerturbationSpace

__all__ = ["evaluate"]

#: What ``mask=`` takes: None (all), a bool per example in data order, or ``(x, y) -> bool tensor``.
MaskLike: TypeAlias = torch.Tensor | Sequence[bool] | Callable[[Any, torch.Tensor], Any] | None


def evaluate(
    model: nn.Module,
    data: Any,
    space: PerturbationSpace,
    *,
    budgets: float | Sequence[float] | None = None,
    attacks: str | Attack | Sequence[str | Attack] = "standard",
    mask: MaskLike = None,
    checks: bool | str | ck.CheckSettings = True,
    batch_size: int = 256,
    seed: int = 0,
    device: torch.device | str | None = None,
    amp: str | None = None,
    progress: bool = False,
    eps: float | Sequence[float] | None = None,
) -> RobustnessReport:
    """Clean and robust accuracy of ``model`` under ``attacks`` at each of the ``budgets``, with checks.

    Robust accuracy is accuracy on the whole set where each attackable example is replaced by its
    adversarial version and the others stay clean; attackable examples misclassified when clean count
    as non-robust without being attacked. The "worst" case counts an example robust only if it
    survives every attack (and the checks' FGSM and random search at the main budget).

    Args:
        model: a ``torch.nn.Module`` returning logits; its train/eval mode and ``requires_grad``
            flags are restored on return. With a discrete space it takes ``space.encode(objects)``.
        data: a ``DataLoader`` (or any iterable) of ``(x, y, ...)`` batches, or a tuple ``(x, y)``
            batched by ``batch_size``. Extra items of a batch are ignored.
        space: the perturbation space (threat model); its budget is rescaled to each of the ``budgets``.
        budgets: budgets to evaluate (default ``[space.budget]``); the main budget is ``space.budget``
            if listed, else the largest.
        attacks: a preset ("quick", "standard", "thorough", "autoattack" alias "aa-standard", "aa-rand";
            see :mod:`robustkit.evaluation.presets`), a name ("fgsm", "pgd", "apgd-ce", "apgd-dlr",
            "apgd-margin", "apgd-t", "fab-t", "square", "random-search", "search", "query-search"), an
            attack instance, or a list of names and instances. Each is rebuilt per budget with
            ``attack.with_space(space.with_budget(e))``; instances keep their own seed.
        mask: which examples may be attacked: None (all), a bool tensor aligned with the data order,
            or a callable ``(x, y) -> bool tensor`` per batch.
        checks: run the gradient-masking checks (True), skip them (False), run them on smaller samples
            ("fast", :data:`robustkit.evaluation.checks.FAST`), or settings for them.
        batch_size: examples per batch when ``data`` is a tuple.
        seed: seed of the attacks built from names and of the checks; an example's random streams are
            keyed by its position in the data, so results do not depend on ``batch_size``.
        device: move the model there first (default: leave it where it is); data follow the model.
        amp: mixed precision for the model's passes (``"auto"``, ``"bf16"``, ``"fp16"``; default None:
            full precision, the safe choice for numbers you report). Adversarial inputs stay float32
            and inside the space.
        progress: show a progress bar over batches.
        eps: the old name of ``budgets``, deprecated (a :class:`DeprecationWarning`; giving both is a
            :class:`~robustkit.errors.ConfigError`); ``eps`` now names only an Lp ball's radius.

    Under ``torchrun`` every process passes the same (whole) data; each batch is cut into one
    contiguous slice per process, each process attacks its slice, and the counts are summed, so every
    process returns the single-process report (up to float rounding in batched kernels).

    Raises:
        ConfigError: bad budgets, attack names or options. DataError: empty data, labels or inputs that
        do not fit the space or the model, a bad mask. ModelError: outputs that are not logits.
    """
    started = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise ModelError(f"model must be a torch.nn.Module returning logits, got {type(model).__name__}")
    if not isinstance(space, PerturbationSpace):
        raise ConfigError(f"space must be a robustkit PerturbationSpace (e.g. rk.LinfBall), got {space!r}")
    levels, main = _budgets(renamed("eps", eps, "budgets", budgets, where="rk.evaluate"), space)
    autocast_dtype(torch.device("cpu"), amp)  # checks the value before any work
    seed = seed_value(seed)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(checks, ck.CheckSettings):
        settings: ck.CheckSettings | None = checks
    elif isinstance(checks, bool):
        settings = ck.CheckSettings() if checks else None
    elif checks == "fast":
        settings = ck.FAST
    else:
        raise ConfigError(f"checks must be True, False, 'fast' or a CheckSettings, got {checks!r}")
    chosen = _parse_attacks(attacks, space)
    if distributed.sampler_of(data) is not None:
        raise ConfigError(
            "data has a DistributedSampler: give every process the whole data; evaluate shares the work out "
            "itself and counts each example once"
        )
    source = _Source(data, batch_size, space)
    masker = _Mask(mask, source.length)
    if device is not None:
        try:
            model.to(torch.device(device))
        except (RuntimeError, TypeError) as exc:
            raise ConfigError(f"device {device!r} is not usable: {exc}; pass e.g. device='cpu' or 'cuda'") from None
    run = _Run(model, space, levels, main, settings, int(seed))
    show = progress and distributed.is_main()
    bar = tqdm(total=source.n_batches, desc="evaluate", unit="batch", disable=not show)
    with frozen_eval(model), autocast(run.device, amp), bar:
        batches = iter(source)
        first = next(batches, None)
        if first is None:
            raise DataError("data holds no example: pass a non-empty DataLoader or (x, y) tuple")
        x, y = run.place(*first)
        attackable = masker.batch(x, y, 0)
        run.probe(x, y)
        source.check_labels(run.n_classes)
        run.build(chosen)
        run.batch(x, y, attackable)
        bar.update()
        for batch in batches:
            x, y = run.place(*batch)
            run.batch(x, y, masker.batch(x, y, run.n))
            trim_host_memory()  # memory stays flat over streamed data of any length
            bar.update()
    masker.finish(run.n)
    return run.report(time.perf_counter() - started)


# ---------------------------------------------------------------------------- argument parsing
def _budgets(given: float | Sequence[float] | None, space: PerturbationSpace) -> tuple[list[float], float]:
    if given is None:
        raw: list[Any] = [space.budget]
    elif isinstance(given, int | float) or (isinstance(given, torch.Tensor) and given.dim() == 0):
        raw = [given]
    else:
        try:
            raw = list(given)
        except TypeError:
            raise ConfigError(f"budgets must be a number or a list of numbers, got {given!r}") from None
    if not raw:
        raise ConfigError("budgets is empty: pass e.g. budgets=[0.1, 0.3], or leave it out for the space's budget")
    values = []
    for v in raw:
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ConfigError(f"budgets must be numbers, got {v!r}") from None
        if not math.isfinite(f) or f < 0:
            raise ConfigError(f"budgets must be finite numbers >= 0, got {v!r}: pass e.g. budgets=[0.1, 0.3]")
        values.append(space.budget if math.isclose(f, space.budget, rel_tol=1e-9, abs_tol=1e-12) else f)
    budgets = sorted(set(values))
    main = space.budget if space.budget in budgets else budgets[-1]
    return budgets, main


@dataclass
class _Choice:
    """Attacks as asked: a preset to resolve once the number of classes is known, or a list."""

    preset: str | None
    items: list[tuple[str | None, AttackSpec | Attack]]


def _parse_attacks(attacks: Any, space: PerturbationSpace) -> _Choice:
    discrete = not isinstance(space, ContinuousSpace)
    if isinstance(attacks, str) and attacks in PRESETS:
        return _Choice(attacks, [])
    items = [attacks] if isinstance(attacks, str | Attack) else attacks
    try:
        items = list(items)
    except TypeError:
        raise ConfigError(f"attacks must be a preset name, an attack or a list of them, got {attacks!r}") from None
    if not items:
        raise ConfigError(f"attacks is empty: pass a preset ({', '.join(PRESETS)}) or a list of attacks")
    out: list[tuple[str | None, AttackSpec | Attack]] = []
    for item in items:
        if isinstance(item, str):
            if item not in ATTACKS:
                hint = " (a preset cannot go inside a list)" if item in PRESETS else ""
                raise ConfigError(
                    f"unknown attack {item!r}{hint}: choose a preset ({', '.join(PRESETS)}) or names from "
                    f"{', '.join(ATTACKS)}, or pass attack instances"
                )
            if discrete == (item in CONTINUOUS_ONLY):
                need = "a continuous space (e.g. rk.LinfBall)" if discrete else "a DiscreteSpace"
                raise ConfigError(f"attack {item!r} needs {need}, but space is {type(space).__name__}")
            out.append((item, ATTACKS[item]))
        elif isinstance(item, Attack):
            if item.targeted:
                raise ConfigError(
                    f"evaluate runs untargeted attacks; {item!r} is targeted: build it with targeted=False"
                )
            out.append((None, item))
        else:
            raise ConfigError(f"attacks must be names or robustkit attacks, got {item!r}")
    return _Choice(None, out)


def _label(attack: Attack) -> str:
    name = str(getattr(attack, "name", type(attack).__name__.lower()))
    loss = getattr(attack, "loss_name", "ce")
    if name == "apgd" or (isinstance(attack, PGD) and loss != "ce"):
        return f"{name}-{loss}"
    return name


def _kind(attack: Attack) -> str:
    """The attack's kind for the checks: fgsm, free (no gradient of the model) or gradient (multi-step)."""
    if isinstance(attack, FGSM):
        return "fgsm"
    if all(isinstance(member, RandomSearch | Square | Transfer | QuerySearch) for member in attack.members):
        return "free"
    return "gradient"


def _with_eot(attack: Attack, eot: int) -> Attack:
    """Average ``eot`` gradient samples per step in a (freshly cloned) gradient attack."""
    for member in attack.members:
        if _kind(member) != "free":
            member.eot = max(member.eot, eot)
    return attack


# ---------------------------------------------------------------------------- data and masks
def _split(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, tuple | list) and len(batch) >= 2:
        return batch[0], batch[1]
    raise DataError(
        f"each batch must be a tuple (x, y, ...), got {type(batch).__name__}: "
        "wrap tensors in a TensorDataset, or pass data=(x, y)"
    )


def _length(x: Any) -> int:
    try:
        return len(x)
    except TypeError:
        raise DataError(f"inputs must be a tensor or a sequence of examples, got {type(x).__name__}") from None


class _Source:
    """Batches ``(x, y)`` from a DataLoader or a tuple, with what can be validated before any work."""

    def __init__(self, data: Any, batch_size: int, space: PerturbationSpace) -> None:
        self.batch_size = batch_size
        self.space = space
        self.length: int | None = None
        self.n_batches: int | None = None
        self.tensors: tuple[Any, torch.Tensor] | None = None
        if isinstance(data, tuple):
            if len(data) < 2:
                raise DataError("data=(x, y) needs inputs and labels")
            x, y = data[0], as_labels(data[1])
            n = _length(x)
            if n != len(y):
                raise DataError(f"got {n} inputs but {len(y)} labels: pass one label per input")
            if n == 0:
                raise DataError("data holds no example: pass a non-empty (x, y) tuple")
            _check_inputs(space, x)
            self.tensors = (x, y)
            self.length, self.n_batches = n, math.ceil(n / batch_size)
        elif isinstance(data, torch.Tensor | str | bytes | dict) or not isinstance(data, Iterable):
            raise DataError(f"data must be a DataLoader of (x, y) batches or a tuple (x, y), got {type(data).__name__}")
        else:
            self.loader = data
            self.length = _loader_length(data)
            try:
                self.n_batches = len(data)  # type: ignore[arg-type]
            except TypeError:
                self.n_batches = None

    def check_labels(self, n_classes: int) -> None:
        """With tuple data, check every label against the model's classes before any attack."""
        if self.tensors is not None:
            _check_label_range(self.tensors[1], n_classes)

    def __iter__(self) -> Iterator[tuple[Any, torch.Tensor]]:
        if self.tensors is not None:
            x, y = self.tensors
            for start in range(0, len(y), self.batch_size):
                yield x[start : start + self.batch_size], y[start : start + self.batch_size]
            return
        for batch in self.loader:
            x, y = _split(batch)
            y = as_labels(y)
            if _length(x) != len(y):
                raise DataError(f"a batch has {_length(x)} inputs but {len(y)} labels: pass one label per input")
            if len(y):
                _check_inputs(self.space, x)
                yield x, y


def _loader_length(loader: Any) -> int | None:
    """Examples a DataLoader yields, when its sampler says so without iterating."""
    batch_sampler = getattr(loader, "batch_sampler", None)
    if isinstance(batch_sampler, torch.utils.data.BatchSampler) and not batch_sampler.drop_last:
        try:
            return len(batch_sampler.sampler)  # type: ignore[arg-type]
        except TypeError:
            return None
    return None


def _check_label_range(y: torch.Tensor, n_classes: int) -> None:
    if len(y) and int(y.max()) >= n_classes:
        raise DataError(
            f"labels go up to {int(y.max())} but the model outputs {n_classes} logits: labels must be "
            "class indices 0..C-1 matching the model's outputs"
        )


def _check_inputs(space: PerturbationSpace, x: Any) -> None:
    if isinstance(space, ContinuousSpace):
        if not isinstance(x, torch.Tensor):
            raise DataError(f"inputs must be a tensor for {type(space).__name__}, got {type(x).__name__}")
        space.check_inputs(x)


class _Mask:
    """Which examples may be attacked, per batch: all, a tensor in data order, or a callable."""

    def __init__(self, mask: MaskLike, length: int | None) -> None:
        self.fn: Callable[[Any, torch.Tensor], Any] | None = None
        self.tensor: torch.Tensor | None = None
        if mask is None:
            return
        if callable(mask):
            self.fn = mask
            return
        m = self._as_bool(mask, "mask")
        if length is not None and len(m) != length:
            raise DataError(f"mask has {len(m)} entries but the data has {length} examples: one bool per example")
        if not bool(m.any()):
            raise DataError("mask selects no example to attack: set True where an example may be attacked")
        self.tensor = m

    @staticmethod
    def _as_bool(mask: Any, what: str) -> torch.Tensor:
        try:
            m = torch.as_tensor(mask)
        except (TypeError, ValueError, RuntimeError):
            raise DataError(f"{what} must be a bool tensor (one per example), got {type(mask).__name__}") from None
        if m.dim() != 1:
            raise DataError(f"{what} must be 1-D (one bool per example), got shape {tuple(m.shape)}")
        if m.dtype != torch.bool:
            if not bool(((m == 0) | (m == 1)).all()):
                raise DataError(f"{what} must be boolean (True where an example may be attacked)")
            m = m.bool()
        return m

    def batch(self, x: Any, y: torch.Tensor, start: int) -> torch.Tensor:
        n = len(y)
        if self.tensor is not None:
            if start + n > len(self.tensor):
                raise DataError(f"mask has {len(self.tensor)} entries but the data has more examples")
            return self.tensor[start : start + n].to(y.device)
        if self.fn is not None:
            m = self._as_bool(self.fn(x, y), "mask(x, y)")
            if len(m) != n:
                raise DataError(f"mask(x, y) returned {len(m)} entries for a batch of {n}: one bool per example")
            return m.to(y.device)
        return torch.ones(n, dtype=torch.bool, device=y.device)

    def finish(self, total: int) -> None:
        if self.tensor is not None and len(self.tensor) != total:
            raise DataError(f"mask has {len(self.tensor)} entries but the data has {total} examples")


# ---------------------------------------------------------------------------- the run
@dataclass
class _Tally:
    broken: int = 0
    forward: int = 0
    backward: int = 0
    seconds: float = 0.0

    def add(self, result: AttackResult, broken: torch.Tensor, seconds: float) -> None:
        self.broken += int(broken.sum())
        self.forward += int(result.forward_passes)
        self.backward += int(result.backward_passes)
        self.seconds += seconds


class _Run:
    """State of one evaluation: attacks per budget, running counts, check measurements."""

    def __init__(
        self,
        model: nn.Module,
        space: PerturbationSpace,
        budgets: list[float],
        main: float,
        settings: ck.CheckSettings | None,
        seed: int,
    ) -> None:
        self.model, self.space, self.budgets, self.main = model, space, budgets, main
        self.settings, self.seed = settings, seed
        self.device = model_device(model)
        self.continuous = isinstance(space, ContinuousSpace)
        self.n = self.n_correct = self.n_att = self.n_att_correct = 0
        self.n_classes = 0
        self.gap = 0.0
        self.sigmoid = False
        self.random_model = False
        self.suite: dict[float, list[tuple[str, Attack, str]]] = {}
        self.cascade = False  # each attack only on the survivors of the ones before it
        self.tally: dict[float, dict[str, _Tally]] = {}
        self.worst = dict.fromkeys(budgets, 0)
        self.outcomes: dict[str, list[torch.Tensor]] = {
            k: [] for k in ("id", "label", "attackable", "clean_correct", "robust")
        }
        self.cover_budget: float | None = None
        # the checks' meters (set up by build once the suite is known)
        self.outputs = mt.OutputMeter()
        self.gradients = mt.GradientMeter(space.mask if isinstance(space, ContinuousSpace) else None)
        self.fgsm = mt.FGSMMeter(None)
        self.search = mt.SearchMeter(None, False, 0, 0)
        self.cover = mt.CoverMeter(None, None, 0)

    # ------------------------------------------------------------------ setup
    def _input(self, x: Any) -> Any:
        """What the model takes: the tensor itself, or a discrete space's encoding of the objects."""
        if isinstance(x, torch.Tensor):
            return x.to(self.device)
        if isinstance(self.space, DiscreteSpace):
            return self.space.encode(list(x), self.device)
        raise DataError(f"inputs must be tensors for {type(self.space).__name__}, got {type(x).__name__}")

    def _logits(self, inp: Any, n: int) -> tuple[Any, torch.Tensor]:
        try:
            with torch.no_grad():
                raw = in_chunks(self.model, inp) if isinstance(inp, torch.Tensor) else self.model(inp)
        except RobustkitError:
            raise
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:  # IndexError: token ids past a vocabulary
            if out_of_memory(exc):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            shape = f" of shape {tuple(inp.shape)} and dtype {inp.dtype}" if isinstance(inp, torch.Tensor) else ""
            raise DataError(f"the model cannot take these inputs{shape} ({type(exc).__name__}: {first[:300]}): "
                            "give inputs of the shape and dtype the model was built for") from exc
        logits = logits_of(raw)
        if len(logits) != n:
            raise ModelError(f"the model returned {len(logits)} rows of logits for {n} inputs: one row per input")
        if self.n_classes and logits.shape[1] != self.n_classes:
            raise ModelError(f"the model returned {logits.shape[1]} logits on one batch, {self.n_classes} on another")
        return raw, logits

    def probe(self, x: Any, y: torch.Tensor) -> None:
        """Validate the model's output against the first batch; measure randomness."""
        inp = self._input(x)
        raw, logits = self._logits(inp, len(y))
        if not bool(torch.isfinite(logits).any()):
            raise ModelError("the model returned only NaN or Inf on the first batch: check the model and inputs")
        self.n_classes = logits.shape[1]
        _check_label_range(y, self.n_classes)
        if isinstance(raw, torch.Tensor) and (raw.dim() == 1 or raw.shape[-1] == 1):
            vals = raw[torch.isfinite(raw)]
            self.sigmoid = bool(len(vals)) and bool(((vals >= 0) & (vals <= 1)).all())
        if self.settings is not None:
            self.gap = ck.determinism_gap(self.model, inp)
            self.random_model = self.gap > ck.DETERMINISM_TOL
            if self.continuous:
                assert isinstance(self.space, ContinuousSpace) and isinstance(inp, torch.Tensor)
                self.cover_budget = self.space.covering_budget(inp)

    def build(self, choice: _Choice) -> None:
        """Resolve names now that the classes are known; one attack per (name, budget)."""
        items: list[tuple[str | None, AttackSpec | Attack]]
        if choice.preset is not None:
            specs = PRESETS[choice.preset].attacks_for(self.n_classes, discrete=not self.continuous)
            items = [(s.label, s) for s in specs]
            # over a discrete space the black-box query search goes only where the gradient search failed:
            # it costs most of the suite, and the worst case per example is the same
            self.cascade = PRESETS[choice.preset].cascade or not self.continuous
        else:
            items = choice.items
        base: list[tuple[str, Attack]] = []
        for name, item in items:
            attack = item.build(self.space, self.seed) if isinstance(item, AttackSpec) else item
            base.append((name or _label(attack), attack))
            for member in attack.members:
                if member.loss_name == "dlr" and self.n_classes < 3:
                    raise ConfigError(
                        f"attack {name or _label(attack)!r} uses the DLR loss, which needs 3+ classes, but the model "
                        "has 2: use 'apgd-margin' or 'apgd-ce'"
                    )
        labels = _unique([label for label, _ in base])
        eot = self.settings.eot if self.settings is not None and self.random_model else 0
        for e in self.budgets:
            sub = self.space.with_budget(e)
            suite = []
            for label, (_, attack) in zip(labels, base, strict=True):
                a = attack.with_space(sub)
                suite.append((label, _with_eot(a, eot) if eot else a, _kind(attack)))
            self.suite[e] = suite
            self.tally[e] = {label: _Tally() for label in labels}
        kinds = {kind for _, _, kind in self.suite[self.main]}
        if self.settings is None or not self.continuous:
            return
        s, main_space = self.settings, self.space.with_budget(self.main)
        if "gradient" in kinds and "fgsm" not in kinds:
            self.fgsm = mt.FGSMMeter(FGSM(main_space, seed=_random.derive(self.seed, 1), eot=max(1, eot)))
        listed_free = "free" in kinds
        search = None
        if kinds & {"gradient", "fgsm"} and not listed_free:
            search = RandomSearch(main_space, queries=s.search_queries, seed=_random.derive(self.seed, 2))
        self.search = mt.SearchMeter(search, listed_free, s.search_examples, s.search_queries)
        if self.cover_budget is not None:
            cover = PGD(self.space.with_budget(self.cover_budget), steps=s.cover_steps, loss="margin",
                        seed=_random.derive(self.seed, 3), eot=max(1, eot))
            self.cover = mt.CoverMeter(cover, self.cover_budget, s.cover_examples)

    # ------------------------------------------------------------------ per batch
    def place(self, x: Any, y: torch.Tensor) -> tuple[Any, torch.Tensor]:
        """A batch on the model's device (tensors; a discrete space's objects stay as they are)."""
        return (x.to(self.device) if isinstance(x, torch.Tensor) else x), y.to(self.device)

    def batch(self, x: Any, y: torch.Tensor, attackable: torch.Tensor) -> None:
        """Clean predictions, every attack at every budget, and the checks' measurements on one batch.

        Under DDP this process takes only its slice of the batch; ``self.n`` still counts the whole.
        """
        if self.n:
            _check_label_range(y, self.n_classes)
        whole = len(y)
        lo, hi = distributed.shard(whole)
        x, y, attackable = x[lo:hi], y[lo:hi], attackable[lo:hi]
        b = len(y)
        ids = torch.arange(self.n + lo, self.n + hi, device=self.device)
        inp = self._input(x) if b else None
        if inp is not None:
            _, logits = self._logits(inp, b)
        else:
            logits = torch.zeros(0, self.n_classes, device=self.device)
        finite = torch.isfinite(logits).all(dim=1)
        correct = (logits.argmax(dim=1) == y) & finite
        targets = attackable & correct
        self.n += whole
        self.n_correct += int(correct.sum())
        self.n_att += int(attackable.sum())
        self.n_att_correct += int(targets.sum())
        for e in self.budgets:
            broken = torch.zeros(b, dtype=torch.bool, device=self.device)
            by_gradient = broken.clone()
            by_free = broken.clone()
            for label, attack, kind in self.suite[e]:
                todo = targets & ~broken if self.cascade else targets
                if not bool(todo.any()):
                    if self.cascade:  # its row counts what the attacks before it broke
                        self.tally[e][label].broken += int(broken.sum())
                    continue
                started = time.perf_counter()
                result = attack(self.model, x, y, mask=todo, ids=ids)
                success = result.success.to(self.device) & todo
                self._sync()
                broken |= success
                self.tally[e][label].add(result, broken if self.cascade else success, time.perf_counter() - started)
                if kind == "free":
                    by_free |= success
                else:
                    by_gradient |= success
            if self.settings is not None and e == self.main:  # on every process: it counts across them
                self._main_budget_checks(x, y, ids, targets, broken, by_gradient, by_free)
            self.worst[e] += int(broken.sum())
            if e == self.main:
                for key, value in (("id", ids), ("label", y), ("attackable", attackable), ("clean_correct", correct),
                                   ("robust", correct & ~broken)):
                    self.outcomes[key].append(value.cpu())
        if self.settings is not None:
            self._batch_checks(x, inp, y, ids, attackable, correct, logits)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _main_budget_checks(
        self,
        x: Any,
        y: torch.Tensor,
        ids: torch.Tensor,
        targets: torch.Tensor,
        broken: torch.Tensor,
        by_gradient: torch.Tensor,
        by_free: torch.Tensor,
    ) -> None:
        """FGSM for check (b) and the random search of check (e); their successes join the worst case."""
        by_fgsm = self.fgsm.update(self.model, x, y, ids, targets)
        broken |= by_fgsm
        by_gradient |= by_fgsm
        broken |= self.search.update(self.model, x, y, ids, targets & ~by_gradient, by_free)

    def _batch_checks(
        self,
        x: Any,
        inp: Any,
        y: torch.Tensor,
        ids: torch.Tensor,
        attackable: torch.Tensor,
        correct: torch.Tensor,
        logits: torch.Tensor,
    ) -> None:
        """Gradients (d), outputs (f) and the covering budget (c) on this batch."""
        self.outputs.update(logits)
        idx = attackable.nonzero().squeeze(1)
        if len(idx) and isinstance(inp, torch.Tensor):
            self.gradients.update(self.model, inp[idx], y[idx])
        self.cover.update(self.model, x, y, ids, idx, correct)

    # ------------------------------------------------------------------ the report
    def _entry(self, broken: int, forward: int, backward: int, seconds: float) -> dict[str, Any]:
        return {
            "robust_accuracy": (self.n_correct - broken) / self.n,
            "attack_success_rate": broken / self.n_att_correct if self.n_att_correct else 0.0,
            "forward_passes": forward,
            "backward_passes": backward,
            "seconds": seconds,
            "robust_accuracy_attackable": (self.n_att_correct - broken) / self.n_att,
        }

    def _checks(self, per_budget: list[dict[str, Any]]) -> list[ck.Check]:
        assert self.settings is not None
        s = self.settings
        main = self.tally[self.main]
        suite = self.suite[self.main]
        multi = [main[label].broken for label, _, kind in suite if kind == "gradient"]
        listed_fgsm = [main[label].broken for label, _, kind in suite if kind == "fgsm"]
        gradient_attacks = any(kind != "free" for _, _, kind in suite)
        worst = [p["attacks"][WORST]["robust_accuracy"] for p in per_budget]
        return [
            self.outputs.check(self.sigmoid),
            ck.determinism_check(self.gap, s.eot),
            self.gradients.check(self.continuous, s.max_zero_gradients),
            self.fgsm.check(self.continuous, listed_fgsm, multi, self.n_att_correct, s.fgsm_tolerance),
            self.search.check(self.continuous, gradient_attacks, s.search_tolerance),
            self.cover.check(self.continuous, s.cover_max_accuracy),
            ck.monotone_check(self.budgets, worst, self.n),
        ]

    def _sum_over_processes(self) -> None:
        """Under DDP: add up every process's counts in one call (``n`` and the meters' taken counts are global)."""
        if not distributed.is_distributed():
            return
        tallies = [t for e in self.budgets for t in self.tally[e].values()]
        meters: list[mt.Meter] = [self.outputs, self.gradients, self.fgsm, self.search, self.cover]
        local = [self.n_correct, self.n_att, self.n_att_correct]
        local += [v for m in meters for v in m.local]
        local += [self.worst[e] for e in self.budgets]
        local += [v for t in tallies for v in (t.broken, t.forward, t.backward)]
        summed = distributed.all_sum(torch.tensor(local, dtype=torch.long)).tolist()
        self.n_correct, self.n_att, self.n_att_correct = summed[:3]
        rest = summed[3:]
        for m in meters:
            m.local, rest = rest[: len(m.fields)], rest[len(m.fields):]
        for e in self.budgets:
            self.worst[e] = rest.pop(0)
        seconds = distributed.all_max(torch.tensor([t.seconds for t in tallies], dtype=torch.float64)).tolist()
        for t, wall in zip(tallies, seconds, strict=True):
            t.broken, t.forward, t.backward = rest.pop(0), rest.pop(0), rest.pop(0)
            t.seconds = wall

    def _outcomes(self) -> dict[str, torch.Tensor]:
        """Per-example outcomes of the whole data in data order (gathered from every process)."""
        local = {k: torch.cat(v) for k, v in self.outcomes.items()}
        if not distributed.is_distributed():
            return {k: v for k, v in local.items() if k != "id"}
        order = torch.argsort(distributed.gather_rows(local.pop("id")))
        return {k: distributed.gather_rows(v)[order] for k, v in local.items()}

    def _attack_settings(self) -> dict[str, dict[str, Any]]:
        """Each attack's settings at the main budget; in a cascade, also the attacks whose survivors it ran on
        (its row counts what they broke too)."""
        labels = [label for label, _, _ in self.suite[self.main]]
        return {label: {**attack.config(), **({"runs_after": ", ".join(labels[:i])} if self.cascade and i else {})}
                for i, (label, attack, _) in enumerate(self.suite[self.main])}

    def report(self, seconds: float) -> RobustnessReport:
        self._sum_over_processes()
        if self.n_att == 0:
            raise DataError("the mask selected no example to attack: set True where an example may be attacked")
        per_budget: list[dict[str, Any]] = []
        for e in self.budgets:
            entries: dict[str, dict[str, Any]] = {}
            for label, tally in self.tally[e].items():
                entries[label] = self._entry(tally.broken, tally.forward, tally.backward, tally.seconds)
            tallies = list(self.tally[e].values())
            entries[WORST] = self._entry(
                self.worst[e],
                sum(t.forward for t in tallies),
                sum(t.backward for t in tallies),
                sum(t.seconds for t in tallies),
            )
            per_budget.append({"budget": e, "attacks": entries})
        main: dict[str, dict[str, Any]] = per_budget[self.budgets.index(self.main)]["attacks"]
        checks = self._checks(per_budget) if self.settings is not None else []
        clean_att = self.n_att_correct / self.n_att
        outcomes = self._outcomes()
        headline = Headline.from_outcomes(outcomes, self.n_classes)
        verdict = judge(checks, self.main, outcomes, headline)
        return RobustnessReport(
            clean_accuracy=self.n_correct / self.n,
            robust_accuracy={label: entry["robust_accuracy"] for label, entry in main.items()},
            per_budget=per_budget,
            checks=checks,
            verdict=verdict,
            attacks=self._attack_settings(),
            threat={"space": self.space.name, "budget": self.main},
            n_examples=self.n,
            n_attackable=self.n_att,
            clean_accuracy_attackable=clean_att,
            seconds=seconds,
            headline=headline,
            outcomes=outcomes,
        )


def _unique(labels: list[str]) -> list[str]:
    """Labels made unique by numbering repeats: ["pgd", "pgd"] -> ["pgd", "pgd-2"]."""
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label}-{seen[label]}")
    return out
