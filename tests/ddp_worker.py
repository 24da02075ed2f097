"""One training + evaluation run on the toy problem, alone or as one process of ``torchrun``.

``python tests/ddp_worker.py OUT [--method M] [--epochs N] [--n-train N] [--resume]`` trains a small MLP (no batch
norm, so a process's shard statistics cannot differ from the whole batch's) with a global batch of
32 on 251 examples (an odd count: a 2-process sampler pads one copy), validates on 90, then
evaluates on 103 examples with the checks in batches of 40. Rank 0 writes ``OUT/weights.pt``
(state dict), ``OUT/history.json`` and ``OUT/report.json``. ``--stream`` trains from a CSV read in
chunks of 12 rows (21 chunks: a 2-process run drops the last, incomplete round). ``ROBUSTKIT_KILL_AT=EPOCH:STEP`` makes
rank 1 (or the only process) kill itself with SIGKILL at that step, for resume tests.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch.utils.data import DataLoader, TensorDataset

import robustkit as rk
from robustkit import distributed
from robustkit.streaming import TableStream


class _KillAt(rk.Callback):
    def __init__(self, epoch: int, step: int) -> None:
        self.epoch, self.step, self.seen = epoch, step, 0

    def on_step_end(self, trainer: Any, loss: float) -> None:
        self.seen += 1
        last = distributed.rank() == distributed.world_size() - 1
        if trainer.epoch == self.epoch and self.seen >= self.step and last:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_epoch_start(self, trainer: Any) -> None:
        self.seen = 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--method", default="pgd")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--n-train", type=int, default=251)
    parser.add_argument("--plain-loader", action="store_true", help="a loader without a DistributedSampler")
    parser.add_argument("--stream", action="store_true", help="train from a CSV streamed in chunks of 12 rows")
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = distributed.setup("cpu")
    n = args.n_train
    x, y = rk.datasets.robust_nonrobust(n + 90 + 103, seed=3)
    train, val, test = (x[:n], y[:n]), (x[n : n + 90], y[n : n + 90]), (x[n + 90 :], y[n + 90 :])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    space = rk.LinfBall(eps=rk.datasets.TOY_EPS, bounds=rk.datasets.TOY_BOUNDS)
    callbacks = []
    if "ROBUSTKIT_KILL_AT" in os.environ:
        epoch, step = (int(v) for v in os.environ["ROBUSTKIT_KILL_AT"].split(":"))
        callbacks.append(_KillAt(epoch, step))
    checkpoints = args.out / "checkpoints"
    trainer = rk.AdversarialTrainer(
        model, space, method=rk.methods.get(args.method, steps=3) if args.method in ("pgd", "trades") else args.method,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), seed=5, device=device,
        checkpoint_dir=checkpoints, callbacks=callbacks, progress=False,
    )
    if args.plain_loader:
        data = DataLoader(TensorDataset(*train), batch_size=16)
    elif args.stream:
        table = args.out / "train.csv"
        with distributed.main_first():
            if distributed.is_main():
                args.out.mkdir(parents=True, exist_ok=True)
                pd.DataFrame({**{f"f{i}": train[0][:, i].numpy() for i in range(x.shape[1])},
                              "y": train[1].numpy()}).to_csv(table, index=False)

        def to_batch(frame: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.tensor(frame.iloc[:, :-1].to_numpy(), dtype=torch.float32), torch.tensor(frame["y"].to_numpy())

        data = DataLoader(TableStream(table, to_batch, batch_rows=12, shard=True), batch_size=None)
    else:
        data = distributed.loader(TensorDataset(*train), batch_size=32, seed=7)
    history = trainer.fit(data, epochs=args.epochs, val_loader=val, resume=checkpoints if args.resume else None)
    report = rk.evaluate(model, test, space, attacks="quick", batch_size=40, seed=1)
    if distributed.is_main():
        args.out.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), args.out / "weights.pt")
        history.drop(columns=[c for c in history.columns if c.endswith("_seconds")]).to_json(
            args.out / "history.json", orient="records"
        )
        summary = report.to_json()
        summary["outcomes"] = {k: v.tolist() for k, v in report.outcomes.items()}
        (args.out / "report.json").write_text(json.dumps(summary))
    distributed.teardown()
    # gloo's threads can still abort the interpreter's exit ("terminate called without an active
    # exception", seen in CI); the work is done and written, so leave without running C++ destructors
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
