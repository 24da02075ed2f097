"""Model helpers: logits from any module, decision thresholds, and leaving a model as it was found.

A model is any ``torch.nn.Module`` returning logits of shape (N, C); Hugging Face outputs are read
through their ``.logits``. Binary tasks decided at an operating threshold wrap the model with
:class:`ThresholdModel`, so that argmax equals the threshold decision and an attack's success means
"crossed the threshold".

Example:
    >>> import torch, robustkit as rk
    >>> net = torch.nn.Linear(3, 2)
    >>> decided = rk.ThresholdModel(net, threshold=0.9)
    >>> decided(torch.zeros(4, 3)).shape
    torch.Size([4, 2])
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

from robustkit.errors import ConfigError, ModelError

__all__ = [
    "AMP_CHOICES",
    "ThresholdModel",
    "autocast",
    "autocast_dtype",
    "channels_last_on_cpu",
    "frozen_eval",
    "in_chunks",
    "keep_heap",
    "logits_of",
    "model_device",
    "out_of_memory",
]

#: what ``amp=`` takes: None (full precision), "auto" (bf16 on CUDA where supported, else fp16; full
#: precision on CPU), "bf16" or "fp16" (on any device torch.autocast supports)
AMP_CHOICES = (None, "auto", "bf16", "fp16")


def out_of_memory(exc: BaseException) -> bool:
    """Is ``exc`` an allocation failure (CUDA, MPS or the CPU allocator)?"""
    text = str(exc).lower()
    return isinstance(exc, MemoryError | torch.OutOfMemoryError) or "out of memory" in text or (
        "can't allocate memory" in text
    )


def release_memory(device: torch.device) -> None:
    """Give freed memory back after an allocation failure (and CUDA's cache to the driver)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` (None on other C libraries)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


#: glibc's mallopt parameters, and the values attacks set: the C heap keeps up to 512 MiB of freed
#: memory for reuse, and serves allocations up to glibc's ceiling of 32 MiB from it instead of mapping
#: fresh pages for each
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
HEAP_KEPT, MMAP_FROM = 512 << 20, 32 << 20


@functools.cache
def keep_heap() -> bool:
    """Let the C heap keep freed memory for reuse (glibc only; once per process; True where it applied).

    By default glibc may hand a model's freed activations back to the system and map fresh pages for
    the next pass; a CPU forward pass of a small CNN then spends a fifth or more of its time in the
    kernel's page faults, depending on what the process allocated before (docs/benchmarks.md,
    performance findings). Attacks call this before their first pass on a CPU. Freed memory then
    stays with the process (at most ``HEAP_KEPT`` at the top of the heap) until
    :func:`trim_host_memory`, which evaluation calls after each batch.

    Example:
        >>> keep_heap() in (True, False)
        True
    """
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_FROM)) and bool(mallopt(_M_TRIM_THRESHOLD, HEAP_KEPT))


def trim_host_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc only; nothing elsewhere).

    A long evaluation allocates and frees batches of varying sizes; glibc keeps the freed pages,
    so resident memory creeps up by about 2 KB per MNIST image with nothing alive (measured, see
    docs/scaling.md). Trimming after each batch keeps it flat; it costs well under a millisecond.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def in_chunks(fn: Callable[..., Any], *tensors: torch.Tensor) -> Any:
    """``fn(*tensors)`` for a per-example ``fn``; if memory runs out, the same over halves, concatenated.

    Example:
        >>> in_chunks(lambda t: t * 2, torch.arange(4)).tolist()
        [0, 2, 4, 6]
    """
    try:
        return fn(*tensors)
    except (RuntimeError, MemoryError) as exc:
        if not out_of_memory(exc) or len(tensors[0]) <= 1:
            raise
    release_memory(tensors[0].device)
    half = (len(tensors[0]) + 1) // 2
    parts = [in_chunks(fn, *(t[:half] for t in tensors)), in_chunks(fn, *(t[half:] for t in tensors))]
    if not all(isinstance(p, torch.Tensor) for p in parts):
        raise ModelError("the model ran out of memory and its outputs are not tensors that can be joined: "
                         "use a smaller --batch-size")
    return torch.cat(parts)


def autocast_dtype(device: torch.device, amp: str | None) -> torch.dtype | None:
    """The reduced precision ``amp`` means on ``device`` (None: full precision).

    Example:
        >>> autocast_dtype(torch.device("cpu"), "auto") is None, autocast_dtype(torch.device("cpu"), "bf16")
        (True, torch.bfloat16)
    """
    if amp not in AMP_CHOICES:
        raise ConfigError(f"amp must be None, 'auto', 'bf16' or 'fp16', got {amp!r}")
    if amp is None or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float16 if amp == "fp16" else torch.bfloat16


def autocast(device: torch.device, amp: str | None) -> AbstractContextManager[Any]:
    """``torch.autocast`` at the precision ``amp`` means on ``device``, or nothing at full precision.

    Inputs, perturbations and projections stay in float32 under autocast (only matrix products and
    convolutions run in reduced precision), so adversarial examples stay inside their space.
    """
    dtype = autocast_dtype(device, amp)
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def logits_of(output: Any) -> torch.Tensor:
    """The logits tensor of a model output: a tensor, an object with ``.logits``, or a tuple's first item."""
    if isinstance(output, torch.Tensor):
        logits = output
    elif hasattr(output, "logits"):
        logits = output.logits
    elif isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        logits = output[0]
    else:
        raise ModelError(
            f"the model returned {type(output).__name__}, not logits: return a (N, C) tensor "
            "or an object with a .logits attribute"
        )
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        what = f"a {logits.dtype} tensor" if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ModelError(f"the model returned {what} as logits: logits are floating-point scores, one per class "
                         "(a model returning class indices or booleans cannot be attacked)")
    if logits.dim() == 1:
        logits = logits.unsqueeze(1)
    if logits.dim() != 2 or logits.shape[1] == 0:
        raise ModelError(f"the model returned logits of shape {tuple(logits.shape)}: expected (N, C), one per class")
    if logits.shape[1] == 1:
        logits = torch.cat([torch.zeros_like(logits), logits], dim=1)
    return logits


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a module without either)."""
    for t in model.parameters():
        return t.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


@contextmanager
def frozen_eval(model: nn.Module, train: bool = False) -> Iterator[nn.Module]:
    """Run attacks with parameters frozen and the model in eval mode (``train=True`` keeps train mode).

    On exit the model's train/eval mode of every submodule and every ``requires_grad`` flag are
    restored exactly as found, so no gradient accumulates in parameters during an attack.
    """
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.train(train)
        for p, _ in flags:
            p.requires_grad_(False)
        yield model
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in flags:
            p.requires_grad_(flag)


@contextmanager
def channels_last_on_cpu(model: nn.Module, probe: Any) -> Iterator[bool]:
    """Hold a convolutional model's 4-D weights in channels-last layout on a CPU, for an attack's passes.

    oneDNN's convolutions run faster in that layout on a CPU; an attack's many forward and backward
    passes of a small CNN take about a third less time. Nothing changes where the layout cannot apply:
    another device, inputs that are not 4-D tensors, a model without 4-D weights, or one whose forward
    pass on ``probe`` (an example or two, run in eval mode without gradients) fails in that layout,
    such as a ``.view`` after a convolution. On exit every weight is the tensor it was on entry. Yields
    whether the layout was changed. Results may differ from the default layout in the last float
    bits, so callers re-check successes outside this context.
    """
    weights = [p for p in model.parameters() if p.dim() == 4 and p.device.type == "cpu"]
    usable = (isinstance(probe, torch.Tensor) and probe.dim() == 4 and probe.device.type == "cpu" and bool(weights)
              and not model.training and all(p.is_contiguous() for p in weights))
    originals = [p.data for p in weights] if usable else []
    try:
        for p, t in zip(weights, originals, strict=False):
            p.data = t.contiguous(memory_format=torch.channels_last)
        if usable:
            try:
                with torch.no_grad():
                    model(probe)
            except Exception:  # any failure in this layout: keep the model's own
                for p, t in zip(weights, originals, strict=True):
                    p.data = t
                originals, usable = [], False
        yield usable
    finally:
        for p, t in zip(weights, originals, strict=False):
            p.data = t


class ThresholdModel(nn.Module):
    """Wrap a binary classifier so that argmax of its logits equals ``P(class 1) >= threshold``.

    The wrapped model returns two logits (or one, taken as the class-1 logit against 0). The
    wrapper subtracts ``log(t / (1 - t))`` from the class-1 logit; the log-odds of the decision are
    then shifted by exactly the threshold's, so attacks judged by argmax are judged at the threshold.
    """

    def __init__(self, model: nn.Module | Callable[..., Any], threshold: float) -> None:
        super().__init__()
        if not 0.0 < float(threshold) < 1.0:
            raise ConfigError(f"threshold must lie strictly between 0 and 1, got {threshold!r}")
        self.model = model
        self.threshold = float(threshold)
        self.offset = math.log(self.threshold / (1.0 - self.threshold))

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        logits = logits_of(self.model(*args, **kwargs))
        if logits.shape[1] != 2:
            raise ModelError(f"ThresholdModel needs a binary model, got {logits.shape[1]} logits")
        shift = torch.tensor([0.0, self.offset], dtype=logits.dtype, device=logits.device)
        return logits - shift
