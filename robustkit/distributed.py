"""Running under ``torchrun``: who am I, my share of the work, and sums over every process.

robustkit uses PyTorch's own engine: :class:`~torch.nn.parallel.DistributedDataParallel` for
training and ``torch.distributed`` collectives for evaluation. Nothing here starts processes;
``torchrun --nproc_per_node=N`` (or ``accelerate launch``) does, and :func:`setup` joins the group
they describe (backend ``gloo`` on CPU, ``nccl`` on CUDA). Outside a launcher every function
answers for a single process, so the same code runs unchanged on a laptop.

How work is shared, so that N processes give the single-process numbers:

- **Training**: each process reads its own shard through a
  :class:`~torch.utils.data.distributed.DistributedSampler` (see :func:`loader`); its k-th example
  of an epoch is example ``k * N + rank`` of the global order, which keys the example's random
  streams. The sampler's padding (copies of early examples so every shard has equal length) is
  given weight 0, and every loss is divided by the global batch's weight, so DDP's gradient average
  equals the single-process gradient.
- **Evaluation**: every process reads the whole data; each batch is cut into N contiguous slices
  and a process attacks its own slice. Counts are summed over processes at the end, so every
  example is counted once with the random streams of its position in the data.

Example:
    >>> from robustkit import distributed
    >>> distributed.world_size(), distributed.rank(), distributed.is_main()
    (1, 0, True)
    >>> distributed.shard(10)
    (0, 10)
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset, default_collate
from torch.utils.data.distributed import DistributedSampler

from robustkit.errors import ConfigError

__all__ = [
    "all_sum",
    "barrier",
    "check_batch_size",
    "gather_rows",
    "is_distributed",
    "is_main",
    "loader",
    "rank",
    "setup",
    "shard",
    "sharded",
    "teardown",
    "world_size",
    "wrap",
]


def is_distributed() -> bool:
    """Is this process one of several in an initialised ``torch.distributed`` group?"""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes (1 outside a launcher)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank (0 outside a launcher)."""
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    """Is this the process that writes files and logs (rank 0)?"""
    return rank() == 0


def launched() -> bool:
    """Was this process started by a launcher for more than one process (``WORLD_SIZE`` > 1)?"""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def is_main_by_environment() -> bool:
    """Will this process be rank 0 (``RANK`` unset or 0)? Answers before the group is joined."""
    return os.environ.get("RANK", "0") == "0"


def setup(device: str | torch.device | None = None, timeout_s: float = 1800.0) -> torch.device:
    """Join the process group a launcher describes and return this process's device.

    Under ``torchrun``/``accelerate launch`` (``WORLD_SIZE`` > 1) it initialises the default group
    once: ``nccl`` when the device is CUDA, else ``gloo``; on CUDA each process takes GPU
    ``LOCAL_RANK``. Without a launcher it only resolves ``device`` (default: CUDA if available).

    Example:
        >>> setup("cpu")
        device(type='cpu')
    """
    try:
        wanted = torch.device(device) if device is not None else None
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r} ({exc})") from None
    cuda = torch.cuda.is_available() if wanted is None else wanted.type == "cuda"
    if not launched():
        return wanted or torch.device("cuda" if cuda else "cpu")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(chosen)
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s),
            device_id=chosen if cuda else None,
        )
    return chosen


def shard(n: int) -> tuple[int, int]:
    """The contiguous slice ``[start, stop)`` of ``n`` items that this process handles.

    Slices differ in length by at most one; with more processes than items some are empty.
    """
    size, r = world_size(), rank()
    base, extra = divmod(n, size)
    start = r * base + min(r, extra)
    return start, start + base + (1 if r < extra else 0)


def _collective_device(t: torch.Tensor) -> torch.device:
    return t.device if dist.get_backend() != "gloo" else torch.device("cpu")


def _all_reduce(values: torch.Tensor, op: Any) -> torch.Tensor:
    if not is_distributed():
        return values
    out = values.detach().to(_collective_device(values)).clone()
    dist.all_reduce(out, op=op)
    return out.to(values.device)


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """``values`` summed over every process (a copy; ``values`` itself outside a launcher)."""
    return _all_reduce(values, dist.ReduceOp.SUM)


def all_max(values: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum of ``values`` over every process."""
    return _all_reduce(values, dist.ReduceOp.MAX)


def gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """Every process's ``rows`` (first dimension may differ between processes), concatenated by rank."""
    if not is_distributed():
        return rows
    device = _collective_device(rows)
    local = rows.to(device)
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([len(local)], dtype=torch.long, device=device))
    longest = int(max(int(s) for s in sizes))
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=device)
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s)] for p, s in zip(parts, sizes, strict=True)]).to(rows.device)


def prefix_and_total(count: int) -> tuple[int, int]:
    """How many items the lower ranks hold, and how many all ranks hold, given this rank's ``count``."""
    if not is_distributed():
        return 0, count
    counts = gather_rows(torch.tensor([count], dtype=torch.long))
    return int(counts[: rank()].sum()), int(counts.sum())


def teardown(wait: bool = True) -> None:
    """Leave the process group at the end of a ``torchrun`` script (nothing outside a launcher).

    With ``wait`` every process first waits for the others. A process that exits without leaving
    can abort at exit (``terminate called without an active exception``) while gloo's threads run.
    """
    if dist.is_available() and dist.is_initialized():
        if wait and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every process gets here (nothing outside a launcher)."""
    if is_distributed():
        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Run the block on rank 0 first (say, to create a folder or a cache), then on the others."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in :class:`~torch.nn.parallel.DistributedDataParallel` when distributed, else itself.

    The wrapper shares the model's parameters; attacks use the bare model (their backward passes
    must not trigger gradient synchronisation), the training loss uses the wrapper.
    """
    if not is_distributed():
        return model
    if device.type != "cuda":
        return nn.parallel.DistributedDataParallel(model)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return nn.parallel.DistributedDataParallel(model, device_ids=[index])


def sampler_of(data: Any) -> DistributedSampler[Any] | None:
    """The :class:`DistributedSampler` behind a DataLoader, if it has one."""
    sampler = getattr(data, "sampler", None)
    return sampler if isinstance(sampler, DistributedSampler) else None


class _Rows(Dataset[tuple[torch.Tensor, ...]]):
    """A TensorDataset's tensors fetched a batch at a time: one indexing per tensor, not one call per example."""

    def __init__(self, tensors: tuple[torch.Tensor, ...]) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        return tuple(t[index] for t in self.tensors)

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        rows = torch.as_tensor(indices, dtype=torch.long)
        return tuple(t[rows] for t in self.tensors)


def _whole(batch: Any) -> Any:
    """The collate function of :class:`_Rows`: its batches come whole."""
    return batch


def check_batch_size(batch_size: int) -> None:
    """Refuse a global batch that the processes cannot share equally.

    Example:
        >>> check_batch_size(128)
    """
    size = world_size()
    if batch_size < size or batch_size % size:
        raise ConfigError(
            f"the global batch size {batch_size} must be a multiple of the number of processes ({size}): "
            f"pick e.g. {max(size, batch_size - batch_size % size)}"
        )


def sharded(data: DataLoader[Any], *, shuffle: bool, seed: int) -> DataLoader[Any]:
    """``data`` (a DataLoader over a map-style dataset) re-cut so that each process loads its shard.

    Its ``batch_size`` is the **global** batch: each of N processes loads ``batch_size // N``, so
    the optimizer sees the same batches whatever N. The order is a :class:`DistributedSampler`'s
    (also for one process), seeded by ``seed`` and the epoch (the trainer calls ``set_epoch``), so
    it does not depend on the number of processes or on where a resumed run stopped. The collate
    function, workers and memory pinning are kept. A :class:`~torch.utils.data.TensorDataset` with the
    default collate function is fetched a batch at a time (the same batches, without one Python call
    per example: that call dominated GPU training steps of small models).
    """
    size, batch_size = world_size(), data.batch_size
    if batch_size is None or isinstance(data.dataset, torch.utils.data.IterableDataset):
        raise ConfigError("only a DataLoader over a map-style dataset with a batch_size can be sharded; shard an "
                          "iterable dataset by process yourself (e.g. datasets.distributed.split_dataset_by_node)")
    check_batch_size(batch_size)
    dataset, collate = data.dataset, data.collate_fn
    if isinstance(dataset, TensorDataset) and collate is default_collate:
        dataset, collate = _Rows(dataset.tensors), _whole
    sampler: DistributedSampler[Any] = DistributedSampler(
        dataset,
        num_replicas=size, rank=rank(), shuffle=shuffle, seed=seed,
    )
    return DataLoader(
        dataset, batch_size=batch_size // size, sampler=sampler, collate_fn=collate,
        num_workers=data.num_workers, pin_memory=data.pin_memory, drop_last=data.drop_last,
    )


def loader(
    dataset: Dataset[Any] | Sequence[Any],
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    **options: Any,
) -> DataLoader[Any]:
    """A training DataLoader giving each process its shard of every global batch of ``batch_size``.

    ``options`` go to :class:`~torch.utils.data.DataLoader` (``collate_fn``, ``num_workers``, ...);
    see :func:`sharded` for the order.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> data = loader(TensorDataset(torch.arange(10.0)), batch_size=4, seed=0)
        >>> [len(b[0]) for b in data]
        [4, 4, 2]
    """
    return sharded(DataLoader(dataset, batch_size=batch_size, **options), shuffle=shuffle, seed=seed)  # type: ignore[arg-type]
