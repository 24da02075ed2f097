"""Streamed CSV / Parquet data: the same numbers as in memory, one chunk held at a time."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

import robustkit as rk
from robustkit.streaming import TableStream

FEATURES = [f"f{i}" for i in range(6)]


def _frame(n: int = 230) -> pd.DataFrame:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, len(FEATURES), generator=g)
    y = (x[:, 0] + x[:, 1] > 1.0).long()
    frame = pd.DataFrame(x.numpy(), columns=FEATURES)
    frame["label"] = y.numpy()
    return frame


def _to_batch(frame: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(frame[FEATURES].to_numpy(), dtype=torch.float32), torch.tensor(frame["label"].to_numpy())


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(len(FEATURES), 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))


@pytest.fixture(params=["csv", "parquet"])
def table(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    path = tmp_path / f"rows.{request.param}"
    frame = _frame()
    if request.param == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path


def test_chunks_cover_every_row_once_in_order(table: Path) -> None:
    batches = list(TableStream(table, _to_batch, batch_rows=64))
    assert [len(y) for _, y in batches] == [64, 64, 64, 38]
    x = torch.cat([b[0] for b in batches])
    assert torch.equal(x, _to_batch(_frame())[0])


def test_evaluate_over_a_stream_equals_in_memory(table: Path) -> None:
    space = rk.LinfBall(eps=0.1, bounds=(0.0, 1.0))
    stream = DataLoader(TableStream(table, _to_batch, batch_rows=50), batch_size=None)
    streamed = rk.evaluate(_model(), stream, space, attacks="quick", seed=3)
    in_memory = rk.evaluate(_model(), _to_batch(_frame()), space, attacks="quick", seed=3, batch_size=50)
    assert streamed.n_examples == 230
    assert streamed.robust_accuracy == in_memory.robust_accuracy
    assert streamed.clean_accuracy == in_memory.clean_accuracy
    assert [c.passed for c in streamed.checks] == [c.passed for c in in_memory.checks]


def test_trainer_fits_on_a_stream(table: Path) -> None:
    space = rk.LinfBall(eps=0.05, bounds=(0.0, 1.0))
    model = _model()
    trainer = rk.AdversarialTrainer(model, space, method="pgd", progress=False,
                                    optimizer=torch.optim.Adam(model.parameters(), lr=0.01))
    stream = DataLoader(TableStream(table, _to_batch, batch_rows=32), batch_size=None)
    history = trainer.fit(stream, epochs=3)
    assert list(history["epoch"]) == [1, 2, 3]
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]


def test_workers_split_chunks_without_loss_or_repeat(table: Path) -> None:
    loader = DataLoader(TableStream(table, _to_batch, batch_rows=40), batch_size=None, num_workers=2)
    rows = torch.cat([x for x, _ in loader])
    assert len(rows) == 230
    assert len(torch.unique(rows, dim=0)) == 230


def test_bad_stream_arguments(tmp_path: Path) -> None:
    with pytest.raises(rk.DataError, match="not a file"):
        TableStream(tmp_path / "missing.csv", _to_batch)
    (tmp_path / "x.csv").write_text("a\n1\n")
    with pytest.raises(rk.ConfigError, match="batch_rows"):
        TableStream(tmp_path / "x.csv", _to_batch, batch_rows=0)
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(rk.DataError, match="cannot read"):
        list(TableStream(tmp_path / "bad.parquet", _to_batch))
