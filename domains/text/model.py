"""The built-in text model, its tokenizer and the embedding-space threat used for training.

Model input (the tensor the shared trainer and the attacks move): a float tensor ``(N, L, 1 + D)``.
Channel 0 holds the token ids (as floats; 0 is padding), channels ``1..D`` an offset added to the
token embeddings, zero for a clean input::

    embedding = E[ids] + scale * offset        scale = mean row norm of E (detached)

so the embedding table trains as usual while an attack moves the embeddings, and ``offset`` is in
units of the typical embedding norm (a radius of 0.5 means half an average token vector, as the
normalised perturbations of Miyato et al.). :class:`TokenL2Ball` limits each token's offset to an L2
ball and its mask freezes the id channel; offsets at padding positions do nothing (the model masks
padding), so batches are padded only to their own longest text.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordPiece
from torch import nn

from robustkit import _random
from robustkit.spaces import ContinuousSpace

__all__ = ["PAD", "UNK", "ChunkEncoder", "TextCNN", "TokenHead", "TokenL2Ball", "TokenModel", "encode_ids",
           "train_tokenizer"]

PAD, UNK = "[PAD]", "[UNK]"
#: longest text in tokens; longer texts are truncated (and counted)
MAX_TOKENS = 128


def train_tokenizer(texts: Sequence[str], vocab_size: int = 2000, min_frequency: int = 2) -> Tokenizer:
    """A WordPiece tokenizer (lower-cased, split on whitespace and punctuation) built from ``texts``.

    The vocabulary is every character seen ``min_frequency`` times (as a word start and as a ``##``
    continuation), then the most frequent words (ties in alphabetical order) up to ``vocab_size``, so a
    rare or obfuscated word falls back to its characters. It is a pure function of the texts: the same
    corpus gives the same ids in every process (the ``tokenizers`` WordPiece trainer breaks ties in
    hash order, which changes from run to run). No Unicode folding: homoglyphs and zero-width
    characters reach the model as they are (the defensive normaliser is a separate option).

    Example:
        >>> tok = train_tokenizer(["win a prize now", "win cash now", "see you at lunch"], min_frequency=1)
        >>> tok.encode("WIN now").tokens
        ['win', 'now']
    """
    tok = Tokenizer(WordPiece({PAD: 0, UNK: 1}, unk_token=UNK, max_input_chars_per_word=50))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words: Counter[str] = Counter()
    for text in texts:
        words.update(w for w, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(text)))
    chars: Counter[str] = Counter()
    for word, count in words.items():
        chars.update({c: count for c in word})

    def ranked(counts: Counter[str]) -> list[str]:
        return [k for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= min_frequency]

    pieces = [piece for c in ranked(chars) for piece in (c, f"##{c}")]
    vocab = {PAD: 0, UNK: 1}
    for piece in pieces + ranked(words):
        if len(vocab) >= max(vocab_size, 2 + len(pieces)):
            break
        vocab.setdefault(piece, len(vocab))
    tok.model = WordPiece(vocab, unk_token=UNK, max_input_chars_per_word=50)
    tok.enable_truncation(MAX_TOKENS)
    return tok


def encode_ids(tokenizer: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text (at least one id: an all-unknown text gives ``[UNK]``)."""
    unk = tokenizer.token_to_id(UNK) or 0
    return [enc.ids or [unk] for enc in tokenizer.encode_batch(list(texts))]


#: normalisers that map each character on its own (they never join characters across a space)
_CHARACTER_NORMALIZERS = frozenset({"Lowercase", "BertNormalizer", "NFC", "NFD", "NFKC", "NFKD", "StripAccents"})
#: pre-tokenizers that split at every space and drop it
_SPACE_SPLITTERS = frozenset({"BertPreTokenizer", "Whitespace", "WhitespaceSplit"})


def _character_wise(normalizer: dict[str, Any] | None) -> bool:
    if normalizer is None:
        return True
    if normalizer.get("type") == "Sequence":
        return all(_character_wise(n) for n in normalizer.get("normalizers", []))
    return normalizer.get("type") in _CHARACTER_NORMALIZERS


class ChunkEncoder:
    """Token ids of texts, as :func:`encode_ids` gives them, from a cache of the ids of their space-separated
    chunks where the tokenizer allows it.

    A search encodes hundreds of variants of each text that differ in one word; with a tokenizer that
    normalises character by character and splits at spaces (the built-in one, BERT's), a text's ids are
    its chunks' ids one after another, truncated as the tokenizer truncates, so only new chunks are
    tokenized. Any other tokenizer (byte-level BPE, SentencePiece, a post-processor) encodes whole texts.

    Example:
        >>> tok = train_tokenizer(["win a prize now", "win cash now"], min_frequency=1)
        >>> encoder = ChunkEncoder(tok)
        >>> encoder.cached, encoder(["WIN a prize", ""]) == encode_ids(tok, ["WIN a prize", ""])
        (True, True)
    """

    #: chunks kept before the cache starts again
    capacity = 100_000

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        spec = json.loads(tokenizer.to_str())
        pre, truncation = spec.get("pre_tokenizer"), spec.get("truncation")
        self.cached = (
            _character_wise(spec.get("normalizer"))
            and pre is not None and pre.get("type") in _SPACE_SPLITTERS
            and spec.get("post_processor") is None and spec.get("padding") is None
            and (truncation is None or truncation.get("direction", "Right") == "Right")
        )
        self.max_length = None if truncation is None else int(truncation["max_length"])
        self.unk = tokenizer.token_to_id(UNK) or 0
        self._chunks: dict[str, list[int]] = {}

    def __call__(self, texts: Sequence[str]) -> list[list[int]]:
        if not self.cached:
            return encode_ids(self.tokenizer, texts)
        split = [text.split(" ") for text in texts]
        missing = list(dict.fromkeys(c for chunks in split for c in chunks if c not in self._chunks))
        if len(self._chunks) + len(missing) > self.capacity:
            self._chunks.clear()
            missing = list(dict.fromkeys(c for chunks in split for c in chunks))
        for chunk, enc in zip(missing, self.tokenizer.encode_batch(missing, add_special_tokens=False), strict=True):
            self._chunks[chunk] = enc.ids
        out = []
        for chunks in split:
            ids = [i for c in chunks for i in self._chunks[c]]
            out.append(ids[: self.max_length] if self.max_length is not None else ids)
        return [ids or [self.unk] for ids in out]


def pad_inputs(ids: Sequence[Sequence[int]], dim: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The model input ``(N, L, 1 + dim)`` for lists of token ids: ids in channel 0, zero offsets."""
    lengths = torch.tensor([len(seq) for seq in ids], dtype=torch.long)
    length = max(1, int(lengths.max()) if len(ids) else 1)
    x = torch.zeros(len(ids), length, 1 + dim)
    # one copy of every id at once: a tensor per row cost more than the model's forward pass in the searches
    filled = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)
    x[..., 0][filled] = torch.tensor([i for seq in ids for i in seq], dtype=torch.float32)
    return x.to(device)


class TokenModel(nn.Module):
    """What every model on the ``(N, L, 1 + D)`` input shares: the embedding table (HotFlip scores read
    it), the offset added to it and the padding mask, the tokenizer and the normaliser flag."""

    def __init__(self, vocab_size: int, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=0)
        #: the tokenizer the model was trained with (attached by the domain; saved as tokenizer.json)
        self.tokenizer: Tokenizer | None = None
        #: whether the model reads normalised text (its spec's ``normalise``): its attacks normalise too
        self.normalise = False

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings (offset added, zero at padding) and padding mask ``(N, L, 1)`` of an input ``(N, L, 1 + D)``."""
        if x.dim() != 3 or x.shape[-1] != self.dim + 1:
            raise ValueError(f"{type(self).__name__} takes (N, L, {self.dim + 1}) inputs, got {tuple(x.shape)}")
        ids = x[..., 0].round().long().clamp(0, self.embedding.num_embeddings - 1)
        mask = (ids != 0).unsqueeze(-1).to(x.dtype)
        scale = self.embedding.weight.detach().norm(dim=1).mean()
        return (self.embedding(ids) + scale * x[..., 1:]) * mask, mask


class TextCNN(TokenModel):
    """Token embeddings, a 1-D convolution with masked max pooling, and a linear layer to 2 logits."""

    def __init__(self, vocab_size: int, dim: int = 32, channels: int = 64, kernel: int = 3, classes: int = 2):
        super().__init__(vocab_size, dim)
        self.conv = nn.Conv1d(dim, channels, kernel, padding=kernel // 2)
        self.out = nn.Linear(channels + dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        emb, mask = self.embed(x)
        # max over the tokens in the convolution's own (N, C, L) layout: a transposed copy costs more
        h = torch.relu(self.conv(emb.transpose(1, 2))).masked_fill(mask.transpose(1, 2) == 0, -1e4).amax(dim=2)
        mean = emb.sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
        return self.out(torch.cat([h, mean], dim=1))


class TokenHead(TokenModel):
    """The trained embedding table in front of a user's ``head``: ``head(embeddings, mask)`` takes the
    embeddings ``(N, L, D)`` (zero at padding) and a bool mask ``(N, L)`` (True at tokens) and returns
    ``(N, 2)`` logits (ham, spam). Attacks move the embeddings, as they do for :class:`TextCNN`."""

    def __init__(self, vocab_size: int, dim: int, head: nn.Module) -> None:
        super().__init__(vocab_size, dim)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        emb, mask = self.embed(x)
        out: torch.Tensor = self.head(emb, mask[..., 0] > 0)
        return out


class TokenL2Ball(ContinuousSpace):
    """Each token's embedding offset within L2 radius ``eps``; the id channel never moves.

    ``norm`` is the largest per-token offset norm, so ``contains`` checks every token. The radius is
    in units of the model's mean embedding norm (see the module docstring).
    """

    name = "embedding-l2"

    def __init__(self, eps: float, dim: int) -> None:
        mask = torch.ones(1, 1 + dim, dtype=torch.bool)
        mask[0, 0] = False
        super().__init__(eps, mask=mask)
        self.dim = dim

    @staticmethod
    def _token_norm(t: torch.Tensor) -> torch.Tensor:
        return t.norm(dim=-1, keepdim=True)

    def _project_delta(self, delta: torch.Tensor) -> torch.Tensor:
        return delta * torch.clamp(self.eps / self._token_norm(delta).clamp_min(1e-12), max=1.0)

    def _direction(self, grad: torch.Tensor) -> torch.Tensor:
        return grad / self._token_norm(grad).clamp_min(1e-12)

    def _sphere_sample(self, shape: tuple[int, ...], seed: int, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        g = self._apply_mask(_random.normal(seed, ids, shape, dtype))
        return g / self._token_norm(g).clamp_min(1e-12) * self.eps

    def _ball_sample(self, shape: tuple[int, ...], seed: int, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        direction = self._sphere_sample(shape, seed, ids, dtype)
        u = _random.uniform(_random.derive(seed, 1), ids, (*shape[:-1], 1), torch.float64)
        return direction * (u ** (1.0 / max(1, self.dim))).to(dtype)

    def norm(self, delta: torch.Tensor) -> torch.Tensor:
        if delta.dim() < 3 or delta.shape[1] == 0:
            return delta.flatten(1).norm(dim=1) if delta.dim() >= 2 else delta.abs()
        return delta.norm(dim=-1).amax(dim=-1)

    def default_step_size(self, steps: int) -> float:
        return self.eps if steps <= 1 else 2.5 * self.eps / steps

    def covering_budget(self, x: torch.Tensor) -> float | None:
        return None

    def __repr__(self) -> str:
        return f"TokenL2Ball(eps={self.eps:g}, dim={self.dim})"
