"""Hugging Face ``Trainer`` integration (:mod:`domains.text.hf_trainer`) and the Hugging Face command line.

A tiny BERT (2 layers, hidden size 48, dropout off so clean and adversarial losses compare) is built
from a config with a WordPiece vocabulary trained here: nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import robustkit as rk
from domains.text import TextOptions
from domains.text.data import demo_corpus
from tests.tiny_bert import save_tiny_bert

transformers = pytest.importorskip("transformers")
#: transformers.Trainer needs accelerate; the command-line tests here do not
needs_accelerate = pytest.mark.skipif(
    importlib.util.find_spec("accelerate") is None, reason="transformers.Trainer needs accelerate"
)

from domains.text.hf_trainer import (  # noqa: E402
    AdversarialArguments,
    AdversarialHFTrainer,
    AdversarialStep,
    EmbeddingView,
)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT (hidden size 48, not the CNN's 32; no dropout) and its fast tokenizer, as safetensors."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), hidden_size=48, hidden_dropout_prob=0.0,
                          attention_probs_dropout_prob=0.0)


def tokenized(folder: Path, n: int = 48) -> tuple[Any, Any, list[dict[str, Any]]]:
    """The model, its tokenizer and ``n`` demo messages tokenized without padding (as after ``map``)."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        str(folder), local_files_only=True, use_safetensors=True
    )
    texts, labels = demo_corpus(n, seed=1)
    rows = [{**tokenizer(t, truncation=True, max_length=64), "labels": y} for t, y in zip(texts, labels, strict=True)]
    return model, tokenizer, rows


def make_trainer(folder: Path, out: Path, adversarial: AdversarialArguments, steps: int = 3) -> AdversarialHFTrainer:
    model, tokenizer, rows = tokenized(folder)
    args = transformers.TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=16, max_steps=steps, learning_rate=1e-3,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True,
    )
    return AdversarialHFTrainer(
        model=model, args=args, train_dataset=rows, data_collator=transformers.DataCollatorWithPadding(tokenizer),
        adversarial=adversarial,
    )


def test_view_packs_a_padded_batch_exactly(tiny_bert: Path) -> None:
    model, tokenizer, rows = tokenized(tiny_bert, 6)
    model.eval()
    batch = transformers.DataCollatorWithPadding(tokenizer)(rows)
    batch["token_type_ids"][0, 1] = 1  # token types travel through the packed input too
    view = EmbeddingView(model)
    x = view.pack(batch)
    assert x.shape == (*batch["input_ids"].shape, 49) and bool((x[..., 1:] == 0).all())
    with torch.no_grad():
        expected = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        assert torch.allclose(view(x), expected, atol=1e-5)
        assert torch.allclose(view(x[[4, 1]]), expected[[4, 1]], atol=1e-5)  # rows keep their own masks


@needs_accelerate
def test_pgd_batch_is_harder_within_budget_and_training_changes_weights(tiny_bert: Path, tmp_path: Path) -> None:
    trainer = make_trainer(tiny_bert, tmp_path, AdversarialArguments(eps=0.5, steps=3))
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    step = trainer.last_adversarial
    assert isinstance(step, AdversarialStep) and step.clean_loss is not None
    assert float(loss.detach()) == pytest.approx(step.adversarial_loss)
    assert step.adversarial_loss > step.clean_loss + 1e-4  # the same batch, moved, costs more
    assert step.within_budget and 0 < step.max_offset <= 0.5 + 1e-5 and step.attacked == len(batch["labels"])
    assert all(p.requires_grad for p in trainer.model.parameters()) and trainer.model.training  # left as found

    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert trainer.state.global_step == 3
    assert any(not torch.equal(v, trainer.model.state_dict()[k]) for k, v in before.items())
    logged = [r for r in trainer.state.log_history if "adversarial_loss" in r]
    assert len(logged) == 3 and all(r["adversarial_loss"] >= r["clean_loss"] for r in logged)
    with torch.no_grad():  # evaluation stays clean: the stock loss
        trainer.model.eval()
        assert float(trainer.compute_loss(trainer.model, dict(batch))) == pytest.approx(
            float(trainer.model(**batch).loss), abs=1e-6
        )


@needs_accelerate
def test_freelb_and_attack_labels(tiny_bert: Path, tmp_path: Path) -> None:
    settings = AdversarialArguments(method="freelb", eps=0.3, steps=2, attack_labels=[1], adv_weight=0.5)
    trainer = make_trainer(tiny_bert, tmp_path, settings, steps=2)
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()
    trainer.compute_loss(trainer.model, dict(batch)).backward()
    step = trainer.last_adversarial
    assert step is not None and step.within_budget and step.max_offset <= 0.3 + 1e-5
    assert step.attacked == int((batch["labels"] == 1).sum()) > 0
    assert trainer.model.get_input_embeddings().weight.grad is not None
    trainer.model.zero_grad()
    trainer.train()
    assert trainer.state.global_step == 2


@needs_accelerate
def test_bad_settings_and_batches_are_refused(tiny_bert: Path, tmp_path: Path) -> None:
    for bad in ({"method": "fgsm"}, {"eps": 0}, {"steps": 0}, {"adv_weight": 2.0}):
        with pytest.raises(rk.ConfigError):
            AdversarialArguments(**bad)
    trainer = make_trainer(tiny_bert, tmp_path, AdversarialArguments())
    batch = dict(next(iter(trainer.get_train_dataloader())))
    trainer.model.train()
    with pytest.raises(rk.DataError, match="position_ids"):
        trainer.compute_loss(trainer.model, {**batch, "position_ids": batch["input_ids"] * 0})
    with pytest.raises(rk.DataError, match="integer class labels"):
        trainer.compute_loss(trainer.model, {**batch, "labels": batch["labels"].float()})


def _disk(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def test_harden_with_model_flag_then_evaluate_without_config(tiny_bert: Path, tmp_path: Path) -> None:
    from robustkit.cli import main

    run, evaluated = tmp_path / "run", tmp_path / "eval"
    common = ["--data", "demo:60", "--preset", "quick", "--threads", "1", "--quiet"]
    args = ["harden", "text", "--model", f"hf:{tiny_bert}", "--epochs", "1", *common, "--out", str(run),
            "--keep-checkpoints"]
    assert main(args) == 0
    # what a run keeps by default (checkpoints pruned once the models are saved) against what it kept before
    kept = _disk(run)
    assert (kept - _disk(run / "checkpoints")) / kept <= 0.4
    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    assert config["options"]["model"] == f"hf:{tiny_bert}" and config["lr"] == pytest.approx(3e-5)
    assert json.loads((run / "models" / "hardened" / "model.json").read_text())["spec"]["kind"] == "hf"
    again = tmp_path / "again"  # config.yaml reproduces the run, the Hugging Face model included
    assert main(["harden", "text", "--config", str(run / "config.yaml"), "--quiet", "--out", str(again)]) == 0
    first, second = (json.loads((r / "metrics.json").read_text())["models"] for r in (run, again))
    assert all(first[m][k] == second[m][k] for m in first for k in ("clean_accuracy", "robust_accuracy"))
    # the saved model's own tokenizer encodes the data: no --config needed
    saved = str(run / "models" / "hardened")
    assert main(["evaluate", "text", "--model", saved, *common, "--out", str(evaluated)]) == 0
    assert json.loads((evaluated / "metrics.json").read_text())["threat"]["space"] == "obfuscation"


def test_default_learning_rates(tiny_bert: Path) -> None:
    from domains.text import TextDomain

    domain = TextDomain()
    assert domain.default_lr_for("demo", TextOptions()) == domain.default_lr == 3e-3
    assert domain.default_lr_for("demo", TextOptions(model=f'hf:{tiny_bert}')) == 3e-5


def _guide_script() -> str:
    """The ``train.py`` example of the text guide, as written there."""
    guide = (Path(__file__).parents[1] / "docs" / "guides" / "text.md").read_text(encoding="utf-8")
    blocks = [b.split("```", 1)[0] for b in guide.split("```python\n")[1:]]
    (script,) = [b for b in blocks if "HfArgumentParser" in b]
    return script


def test_adversarial_arguments_parse_with_training_arguments() -> None:
    parser = transformers.HfArgumentParser((transformers.TrainingArguments, AdversarialArguments))
    _, one = parser.parse_args_into_dataclasses(["--output_dir", "x", "--attack_labels", "1", "--eps", "0.2"])
    assert one == AdversarialArguments(eps=0.2, attack_labels=[1])
    _, two = parser.parse_args_into_dataclasses(["--output_dir", "x", "--attack_labels", "0", "1",
                                                 "--method", "freelb", "--step_size", "0.05"])
    assert two.attack_labels == [0, 1] and two.method == "freelb" and two.step_size == 0.05
    with pytest.raises(SystemExit):  # argparse refuses an unknown method before the dataclass is built
        parser.parse_args_into_dataclasses(["--output_dir", "x", "--method", "fgsm"])


@needs_accelerate
def test_text_guide_script_reports_robust_recall(tiny_bert: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from domains.text.hf_trainer import robust_spam_recall

    script = _guide_script().replace('"models/minilm"', repr(str(tiny_bert)))
    argv = ["train.py", "--output_dir", str(tmp_path), "--max_steps", "2", "--eps", "0.1", "--attack_labels", "1",
            "--report_to", "none", "--use_cpu", "--disable_tqdm", "true", "--save_strategy", "no",
            "--per_device_eval_batch_size", "64"]
    monkeypatch.setattr("sys.argv", argv)
    scope: dict[str, Any] = {}
    exec(compile(script, "train.py", "exec"), scope)
    trainer, metrics = scope["trainer"], scope["metrics"]
    assert trainer.adversarial.attack_labels == [1]
    # the figures the loggers saw are those evaluate() returned, and are the search's own
    logged = [h for h in trainer.state.log_history if "eval_loss" in h][-1]
    assert logged["eval_robust_spam_recall"] == metrics["eval_robust_spam_recall"]
    spam = [t for t, y in zip(scope["texts"][:50], scope["labels"][:50], strict=True) if y == 1][:32]
    direct = robust_spam_recall(trainer.model, scope["tokenizer"], spam, 3)
    assert metrics["eval_spam_recall"] == pytest.approx(direct["spam_recall"], abs=1e-4)
    assert metrics["eval_robust_spam_recall"] == pytest.approx(direct["robust_spam_recall"], abs=1e-4)
    assert 0 <= metrics["eval_robust_spam_recall"] <= metrics["eval_spam_recall"] <= 1
    printed = capsys.readouterr().out.split()[-2:]
    assert [float(v) for v in printed] == [metrics["eval_spam_recall"], metrics["eval_robust_spam_recall"]]
    # a model that barely flags the spam (its bias moved to the lower quartile of the spam margins): the
    # search must turn some of it
    model = trainer.model
    with torch.no_grad():
        inputs = scope["tokenizer"](spam, return_tensors="pt", padding=True)
        logits = model(**inputs).logits
        model.classifier.bias[1] -= float((logits[:, 1] - logits[:, 0]).quantile(0.25))
    again = trainer.evaluate()
    assert again["eval_spam_recall"] > 0.5 and again["eval_robust_spam_recall"] < again["eval_spam_recall"]


def test_loading_a_bare_encoder_twice_reports_its_new_head_once_in_plain_text(tiny_bert, tmp_path, capfd, caplog):
    from domains.text.hf import load_hf

    bare = tmp_path / "bare"
    transformers.AutoModelForSequenceClassification.from_pretrained(str(tiny_bert)).bert.save_pretrained(str(bare))
    transformers.AutoTokenizer.from_pretrained(str(tiny_bert)).save_pretrained(str(bare))
    capfd.readouterr()
    with caplog.at_level("INFO", logger="robustkit"):
        for _ in range(2):  # harden loads the folder once per model
            load_hf(bare, num_labels=2)
    printed = "".join(capfd.readouterr())
    assert "LOAD REPORT" not in printed and "\x1b[" not in printed
    (line,) = [r.getMessage() for r in caplog.records if "newly initialised" in r.getMessage()]
    assert "classifier.bias, classifier.weight" in line and "\x1b[" not in line
