"""A tiny randomly initialised BERT and its WordPiece tokenizer, built offline, for the Hugging Face tests."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
import transformers
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordPiece
from tokenizers.trainers import WordPieceTrainer

from domains.text.data import demo_corpus


def save_tiny_bert(folder: Path, **config: Any) -> Path:
    """Write a 2-layer BERT (hidden size 32 unless ``config`` overrides) and a BertTokenizerFast to ``folder``."""
    texts, _ = demo_corpus(80, seed=0)
    wordpiece = Tokenizer(WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    wordpiece.train_from_iterator(texts, WordPieceTrainer(vocab_size=400, special_tokens=specials, show_progress=False))
    vocab = sorted(wordpiece.get_vocab().items(), key=lambda kv: kv[1])
    (folder / "vocab.txt").write_text("".join(f"{token}\n" for token, _ in vocab), encoding="utf-8")
    fast = transformers.BertTokenizerFast
    key = "vocab" if "vocab" in inspect.signature(fast.__init__).parameters else "vocab_file"
    tokenizer = fast(**{key: str(folder / "vocab.txt")})
    settings = {"vocab_size": len(vocab), "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                "intermediate_size": 64, "max_position_embeddings": 64, "num_labels": 2, **config}
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(transformers.BertConfig(**settings))
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return folder
