"""``robustkit harden tabular --model-type``: a tree run directory like the neural one, its headline at the
operating threshold, valid adversarial rows, a reloadable model, and an optional library refused up front."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from domains.tabular import TabularDomain, TreeModel
from domains.tabular.space import encode
from robustkit.cli import main

OPTIONS = {"n_rows": 600, "fraud_rate": 0.15, "queries": 30}


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text("options:\n" + "".join(f"  {k}: {v}\n" for k, v in OPTIONS.items()), encoding="utf-8")
    return path


def test_hgb_run_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("skops")
    out = tmp_path / "run"
    assert main(["harden", "tabular", "--config", str(_config(tmp_path)), "--model-type", "hgb", "--rounds", "1",
                 "--out", str(out), "--quiet"]) == 0
    assert "standard   recall" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    domain = TabularDomain()
    data = domain.load_data("synthetic", 0, domain.parse_options(OPTIONS))
    schema, test = data.raw["schema"], data.raw["frames"]["test"]
    fraud = test[schema.target].to_numpy() == 1
    for name in ("standard", "hardened"):
        entry = metrics["models"][name]
        folder = out / "models" / name
        assert (folder / "estimator.skops").is_file() and not list(folder.glob("*.safetensors"))
        model, meta = domain.load_model(folder)
        assert isinstance(model, TreeModel) and model.fitted is not None
        # the headline is fraud recall at the saved operating threshold, clean and under the worst attack
        scores = np.exp(model(encode(schema, test[schema.names])).double().numpy())[:, 1]
        lead = entry["headline"]
        assert lead["measure"] == "recall"
        assert lead["clean"] == pytest.approx(float((scores[fraud] >= meta["threshold"]).mean()))
        by_attack = entry["domain_metrics"]["recall_attacked_by_attack"]
        assert set(entry["robust_accuracy"]) == {"trees", "transfer (upper bound)", "search", "worst"}
        assert lead["attacked"] <= min(by_attack.values()) <= lead["clean"]
        # every attacked fraud row written is valid under the schema against its own original row
        for examples in (out / "examples", out / "examples" / "standard"):
            rows = pd.read_csv(examples / "examples.csv", index_col="index")
            adversarial = rows[schema.names].astype(test[schema.names].dtypes.to_dict())
            assert len(rows) == fraud.sum()
            assert schema.validate(adversarial, test.loc[rows.index, schema.names]).all()
            changed = pd.read_csv(examples / "changes.csv")
            assert set(changed["row"]) <= set(rows.index[rows["fooled"] | (rows["cost"] > 0)])
    # the run names what trained the trees (augmentation rounds), not the MLP's method, epochs or preset
    assert metrics["method"] == "augmentation"
    assert metrics["models"]["hardened"]["training"] == {"method": "augmentation", "model_type": "hgb", "rounds": 1}
    assert metrics["models"]["standard"]["training"] == {"method": "standard", "model_type": "hgb", "rounds": 0}
    assert "augmentation (model_type hgb, rounds 1)" in (out / "report.md").read_text(encoding="utf-8")
    standard = metrics["models"]["standard"]["headline"]
    assert standard["attacked"] < standard["clean"]  # the attacks find evasions: the checks above bite
    rows = pd.read_csv(out / "examples" / "standard" / "examples.csv", index_col="index")
    assert rows["fooled"].sum() == round((standard["clean"] - standard["attacked"]) * fraud.sum())


def test_missing_library_refused_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "xgboost", None)  # not installed, whether or not it is here
    out = tmp_path / "run"
    assert main(["harden", "tabular", "--model-type", "xgboost", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--model-type xgboost needs the xgboost package" in err and 'pip install -e ".[trees]"' in err
    assert not out.exists()
