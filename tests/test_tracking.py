"""Run feedback and experiment tracking: the per-epoch line, ``--report-to tensorboard|mlflow`` read back
with those tools' own readers (skipped where the ``tracking`` extra is not installed), checkpoint pruning."""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

import robustkit as rk
from robustkit.cli import main
from robustkit.datasets import TOY_BOUNDS, TOY_EPS, robust_nonrobust

# a small digits run: the figures come from the same loop as a full one
SMALL = {"options": {"max_train": 160, "max_val": 40, "max_test": 30}, "budgets": [0.15]}


def _harden(tmp_path: Path, report_to: str, *extra: str) -> Path:
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump(SMALL), encoding="utf-8")
    run = tmp_path / "run"
    args = ["harden", "images", "--data", "digits", "--epochs", "2", "--report-to", report_to, "--config",
            str(config), "--preset", "quick", "--threads", "1", "--quiet", "--out", str(run), *extra]
    assert main(args) == 0
    return run


def test_epoch_line_reports_each_epoch_and_the_time_left() -> None:
    x, y = robust_nonrobust(128, seed=0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(130, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    out = io.StringIO()
    trainer = rk.AdversarialTrainer(model, rk.LinfBall(eps=TOY_EPS, bounds=TOY_BOUNDS), method="fgsm-mix",
                                    progress=False, callbacks=[rk.callbacks.EpochLog("toy", stream=out)])
    history = trainer.fit([(x[:64], y[:64]), (x[64:], y[64:])], epochs=3, val_loader=(x[:32], y[:32]))
    lines = out.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == ["toy epoch 1/3", "toy epoch 2/3", "toy epoch 3/3"]
    for line, row in zip(lines, history.itertuples(), strict=True):
        assert f"loss {row.train_loss:.4f}" in line and f"robust {row.val_robust_accuracy:.1%}" in line
    assert "left" in lines[0] and lines[-1].endswith("done)")


@pytest.mark.parametrize(("hardened", "left"), [
    (rk.methods.PGDTraining(steps=4), "about 2 min 26 s"),  # 20 s + 3 epochs x (2 s + 8 s x 5 passes)
    (rk.methods.Free(replays=4), "about 54 s"),  # 20 s + 1 epoch of 4 replays x (2 s + 8 s x 4)
    (None, "at least 50 s"),  # a domain's own method: counted at the standard model's speed
])
def test_the_standard_models_lines_give_the_runs_training_time_left(monkeypatch, hardened, left) -> None:
    clock = iter([0.0, 10.0])  # the fit starts, then its first epoch ends 10 s later: 8 s training, 2 s validation
    monkeypatch.setattr(rk.callbacks.time, "monotonic", lambda: next(clock))
    run = rk.callbacks.RunClock(["standard", hardened], epochs=3)
    out = io.StringIO()
    standard = rk.callbacks.EpochLog("standard model", then="then the hardened model", stream=out, clock=run)
    trainer = type("Trainer", (), {"total_epochs": 3, "epoch": 1, "control": rk.training.TrainerControl()})()
    standard.on_fit_start(trainer)
    standard.on_epoch_end(trainer, {"epoch": 1, "train_loss": 0.5, "train_seconds": 8.0, "val_seconds": 2.0})
    assert out.getvalue() == ("standard model epoch 1/3: loss 0.5000 (10.0 s; about 20 s left, then the hardened "
                              f"model; {left} of training left in all)\n")
    last = rk.callbacks.EpochLog("hardened model", stream=out, clock=run, phase=1)
    assert "in all" not in last.line({"epoch": 1, "train_loss": 0.5}, total=3, left=5.0)


def test_missing_tracking_library_is_refused_before_anything_is_written(tmp_path, monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(rk.ConfigError, match=r"robustkit\[tracking\]"):
        rk.callbacks.tracker("mlflow", tmp_path)
    assert main(["harden", "images", "--report-to", "mlflow", "--out", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run").exists()


def test_tensorboard_run_reads_back(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = _harden(tmp_path, "tensorboard")
    history = pd.read_csv(run / "history.csv")
    metrics = json.loads((run / "metrics.json").read_text())
    for model in ("standard", "hardened"):
        events = EventAccumulator(str(run / "tensorboard" / model), size_guidance={"tensors": 0})
        events.Reload()
        rows = history[history["model"] == model]
        for tag, column in [("train/loss", "train_loss"), ("val/clean_accuracy", "val_clean_accuracy"),
                            ("val/robust_accuracy", "val_robust_accuracy")]:
            scalars = events.Scalars(tag)
            assert [s.step for s in scalars] == [1, 2]
            assert [s.value for s in scalars] == pytest.approx(list(rows[column]), rel=1e-6)
        final = events.Scalars("test/robust_accuracy")[-1].value
        assert final == pytest.approx(metrics["models"][model]["robust_accuracy"]["worst"], rel=1e-6)
    root = EventAccumulator(str(run / "tensorboard"), size_guidance={"tensors": 0})  # the run's own files
    root.Reload()
    assert {"report.md/text_summary", "config.yaml/text_summary"} <= set(root.Tags()["tensors"])
    # the saved models replace the checkpoints
    assert not any((run / "checkpoints").glob("*/latest"))


def test_mlflow_run_reads_back(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchstore://here")  # refused before anything is written
    assert main(["harden", "images", "--report-to", "mlflow", "--out", str(tmp_path / "refused")]) == 2
    assert not (tmp_path / "refused").exists()
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "digits")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3.x keeps the file: store behind this switch
    run = _harden(tmp_path, "mlflow", "--keep-checkpoints")
    client = MlflowClient(tracking_uri=uri)
    (found,) = client.search_runs([client.get_experiment_by_name("digits").experiment_id])
    assert found.info.status == "FINISHED" and found.data.params["method"] == "pgd"
    history = pd.read_csv(run / "history.csv")
    metrics = json.loads((run / "metrics.json").read_text())
    for model in ("standard", "hardened"):
        rows = history[history["model"] == model]
        loss = client.get_metric_history(found.info.run_id, f"{model}/train/loss")
        assert sorted(m.step for m in loss) == [1, 2]
        assert [m.value for m in sorted(loss, key=lambda m: m.step)] == pytest.approx(list(rows["train_loss"]))
        robust = found.data.metrics[f"{model}/test/robust_accuracy"]
        assert robust == pytest.approx(metrics["models"][model]["robust_accuracy"]["worst"])
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert artifacts >= {"report.html", "report.md", "metrics.json", "config.yaml", "history.csv"}
    assert (run / "checkpoints" / "hardened" / "latest").is_file()  # --keep-checkpoints


def test_estimators_print_epoch_lines_only_when_verbose(capsys) -> None:
    from domains.tabular import RobustTabularClassifier
    from domains.tabular.synthetic import card_schema, generate
    from domains.text import RobustSpamClassifier
    from domains.text.data import demo_corpus

    texts, labels = demo_corpus(120, seed=0)
    df = generate(300, seed=0, fraud_rate=0.2)
    X, y = df.drop(columns="is_fraud"), df["is_fraud"]
    estimators = [(lambda **kw: RobustSpamClassifier(method="standard", epochs=2, **kw), (texts, labels)),
                  (lambda **kw: RobustTabularClassifier(card_schema(), method="fgsm-mix", epochs=2, **kw), (X, y))]
    for make, data in estimators:
        make().fit(*data)
        assert "epoch" not in capsys.readouterr().err  # quiet by default
        clf = make(verbose=True).fit(*data)
        lines = [line for line in capsys.readouterr().err.splitlines() if " epoch " in line]
        name = type(clf).__name__
        assert [line.split(":")[0] for line in lines] == [f"{name} epoch 1/2", f"{name} epoch 2/2"]
        with pytest.raises(rk.ConfigError, match="verbose"):
            make(verbose=-1).fit(*data)
