"""Data larger than memory: CSV and Parquet files read chunk by chunk as batches.

:class:`TableStream` is a :class:`~torch.utils.data.IterableDataset` that reads ``batch_rows`` rows
at a time (pandas' chunked CSV reader, pyarrow's Parquet batches) and turns each chunk into one
batch with your function, so memory holds one chunk whatever the file's size. Give it to a
``DataLoader(stream, batch_size=None)``; :func:`robustkit.evaluate` and
:class:`~robustkit.AdversarialTrainer` take that loader as they take any other. Evaluation memory
stays flat as the data grows (it keeps a few bytes of outcome per example).

Hugging Face ``datasets`` streaming works the same way: ``load_dataset(..., streaming=True)``
gives an iterable dataset; map it to ``(x, y)`` batches and wrap it in a DataLoader.

Under ``torchrun``, ``shard=True`` (for training) gives chunk *i* to process *i* mod N and drops a
last incomplete round of chunks, so every process takes the same number of steps; evaluation
needs ``shard=False`` (every process reads everything and evaluate shares each batch out).

Example:
    >>> import pandas as pd, torch, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "rows.csv")
    >>> pd.DataFrame({"a": range(10), "label": [0, 1] * 5}).to_csv(path, index=False)
    >>> def to_batch(frame):
    ...     return torch.tensor(frame[["a"]].to_numpy(), dtype=torch.float32), torch.tensor(frame["label"].to_numpy())
    >>> [len(y) for _, y in TableStream(path, to_batch, batch_rows=4)]
    [4, 4, 2]
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
from torch.utils.data import IterableDataset, get_worker_info

from robustkit import distributed
from robustkit.errors import ConfigError, DataError

__all__ = ["TableStream"]

log = logging.getLogger("robustkit")

BatchFn = Callable[[pd.DataFrame], Any]


class TableStream(IterableDataset[Any]):
    """Batches made by ``to_batch(chunk)`` from a CSV or Parquet file read ``batch_rows`` rows at a time.

    Args:
        path: a ``.csv`` (optionally ``.gz``/``.zip``/...: pandas decompresses) or ``.parquet`` file.
        to_batch: turns a DataFrame chunk into a batch, e.g. ``(x, y)`` tensors.
        batch_rows: rows per chunk, so per batch (under ``shard=True``: per process).
        columns: read only these columns (default all).
        shard: give each ``torchrun`` process its own chunks (training), see the module notes.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        to_batch: BatchFn,
        *,
        batch_rows: int = 1024,
        columns: list[str] | None = None,
        shard: bool = False,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path} is not a file: give the path of a CSV or Parquet file")
        self.parquet = self.path.suffix.lower() in (".parquet", ".pq")
        if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
            raise ConfigError(f"batch_rows must be a positive integer, got {batch_rows!r}")
        if not callable(to_batch):
            raise ConfigError("to_batch must be a function DataFrame -> batch, e.g. returning (x, y) tensors")
        self.to_batch, self.batch_rows, self.columns, self.shard = to_batch, batch_rows, columns, shard

    def _chunks(self) -> Iterator[pd.DataFrame]:
        try:
            if self.parquet:
                import pyarrow.parquet as pq

                for record_batch in pq.ParquetFile(self.path).iter_batches(self.batch_rows, columns=self.columns):
                    yield record_batch.to_pandas()
            else:
                with pd.read_csv(self.path, chunksize=self.batch_rows, usecols=self.columns) as reader:
                    yield from reader
        except (ValueError, OSError) as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            raise DataError(f"cannot read {self.path} as {'Parquet' if self.parquet else 'CSV'}: {exc}") from None

    def __iter__(self) -> Iterator[Any]:
        worker = get_worker_info()
        parts, part = (worker.num_workers, worker.id) if worker is not None else (1, 0)
        if self.shard:  # processes first, then a process's DataLoader workers
            parts, part = parts * distributed.world_size(), distributed.rank() * parts + part
        if parts == 1:
            for chunk in self._chunks():
                yield self.to_batch(chunk)
            return
        pending: list[pd.DataFrame] = []  # one round: chunk i goes to part i mod parts
        for chunk in self._chunks():
            pending.append(chunk)
            if len(pending) == parts:
                yield self.to_batch(pending[part])
                pending = []
        if pending and self.shard:
            dropped = sum(len(c) for c in pending)
            if part == 0:
                log.warning("%s: the last %d rows (an incomplete round of %d processes) were left out so that "
                            "every process takes the same number of steps", self.path.name, dropped, parts)
        elif len(pending) > part:
            yield self.to_batch(pending[part])

    def __repr__(self) -> str:
        return f"TableStream({str(self.path)!r}, batch_rows={self.batch_rows}, shard={self.shard})"
