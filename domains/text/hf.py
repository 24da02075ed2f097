"""Hugging Face sequence classifiers as text-domain models, loaded only from local safetensors.

:func:`load_hf` reads a local folder (``config.json``, ``model.safetensors`` and the tokenizer files)
with ``use_safetensors=True``, ``trust_remote_code=False`` and ``local_files_only=True``. It refuses,
before transformers reads any weights: a folder whose weights are only pickles (``pytorch_model.bin``,
``*.pt``: convert them once, in a trusted environment, with
``model.save_pretrained(dir, safe_serialization=True)``) and a folder asking for custom code
(``auto_map`` in ``config.json`` or ``tokenizer_config.json``).

:class:`HFTextClassifier` wraps the model with the input convention of
:class:`~domains.text.model.TextCNN`: a float tensor ``(N, L, 1 + D)`` with token ids in channel 0
(0 is padding) and an offset to the token embeddings in channels ``1..D``, ``D`` the size of the
model's input embeddings. The ids are the text's tokens only; the wrapper adds the model's special
tokens (``[CLS] ... [SEP]``, ``<s> ... </s>``) itself, so the obfuscation search and its HotFlip
scores see the text's own tokens, as with the built-in model. The forward pass builds
``inputs_embeds = E[ids] + scale * offset`` (``scale``: mean row norm of ``E``, detached) and an
attention mask for the batch's own longest text (dynamic padding, never padding to a maximum length),
so :class:`~domains.text.model.TokenL2Ball`, the shared attacks and the trainer work unchanged.

In the text domain, ``options: {model: "hf:DIR"}`` in a run's YAML config fine-tunes the model in
``DIR`` (a new 2-label head if it has none; ham 0, spam 1) and tokenizes the data with its tokenizer;
set ``lr`` too (e.g. ``3.0e-5``: the domain's default suits the small CNN). The run saves each model
with ``save_pretrained`` (safetensors, config, tokenizer files) plus ``model.json``; ``robustkit
evaluate text --model RUN`` loads it back the same safe way (pass the run's ``--config`` so the data
is tokenized for it), and so does a plain folder holding a trained 2-label classifier.

Limits: token id 0 must be a special token (it marks padding in the packed input); models that pool
the last token need a tokenizer with ``padding_side = "left"``.

Example:
    >>> from domains.text.hf import load_hf
    >>> load_hf("no/such/folder")
    Traceback (most recent call last):
    ...
    robustkit.errors.ModelError: Hugging Face model folder no/such/folder does not exist
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from tokenizers import Tokenizer
from torch import nn

from robustkit.errors import ConfigError, ModelError

from .model import MAX_TOKENS

__all__ = ["HFTextClassifier", "check_folder", "is_hf_folder", "load_hf", "save_hf"]

#: weight files that are pickles (loading them can run code)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
_SAFE_LOAD: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": False, "local_files_only": True}

log = logging.getLogger("robustkit")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path} is not readable JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ModelError(f"{path} holds {type(value).__name__}, not a JSON object")
    return value


def check_folder(path: str | Path) -> Path:
    """``path`` if it is a Hugging Face model folder that loads without pickles or custom code.

    Reads only ``config.json`` and ``tokenizer_config.json`` (as JSON) and lists the folder's files.

    Example:
        >>> check_folder("no/such/folder")
        Traceback (most recent call last):
        ...
        robustkit.errors.ModelError: Hugging Face model folder no/such/folder does not exist
    """
    folder = Path(path)
    if not folder.exists():
        raise ModelError(f"Hugging Face model folder {folder} does not exist")
    if not folder.is_dir():
        raise ModelError(f"{folder} is not a folder: a Hugging Face model is a folder with config.json and weights")
    if not (folder / "config.json").is_file():
        raise ModelError(
            f"{folder} has no config.json: not a Hugging Face model folder "
            "(save one with model.save_pretrained(dir) and tokenizer.save_pretrained(dir))"
        )
    for name in ("config.json", "tokenizer_config.json"):
        if (folder / name).is_file() and "auto_map" in _read_json(folder / name):
            raise ModelError(
                f"{folder / name} asks for custom code (auto_map): robustkit never runs code from a model "
                "folder (trust_remote_code=False); use a model whose architecture transformers ships"
            )
    if not any((folder / name).is_file() for name in SAFE_WEIGHTS):
        pickles = sorted(p.name for p in folder.iterdir() if p.name.endswith(PICKLE_SUFFIXES))
        if pickles:
            raise ModelError(
                f"{folder} holds only pickled weights ({', '.join(pickles)}), which can run code when loaded: "
                "convert them to safetensors once, in an environment you trust, with "
                "AutoModelForSequenceClassification.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)"
            )
        raise ModelError(f"{folder} has no model.safetensors: save the model with save_pretrained(dir)")
    index = folder / "model.safetensors.index.json"
    if index.is_file() and not (folder / "model.safetensors").is_file():
        shards = _read_json(index).get("weight_map")
        if not isinstance(shards, dict) or not shards:
            raise ModelError(f"{index} has no weight_map: it does not say which files hold the weights")
        wrong = sorted({str(f) for f in shards.values()
                        if not isinstance(f, str) or not f.endswith(".safetensors") or Path(f).name != f
                        or not (folder / f).is_file()})
        if wrong:
            raise ModelError(
                f"{index} maps weights to {', '.join(wrong[:3])}: every shard must be a .safetensors file in "
                f"{folder} (pickled .bin shards can run code when loaded, and are never read)"
            )
    return folder


def is_hf_folder(path: str | Path) -> bool:
    """Whether ``path`` looks like a Hugging Face model folder (a ``config.json`` and no ``model.json``
    of robustkit's own models, or a ``model.json`` whose spec says ``kind: hf``)."""
    folder = Path(path)
    meta = folder / "model.json"
    if meta.is_file():
        try:
            spec = json.loads(meta.read_text(encoding="utf-8")).get("spec", {})
        except (OSError, ValueError, AttributeError):
            return False
        return isinstance(spec, dict) and spec.get("kind") == "hf"
    return (folder / "config.json").is_file()


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence transformers' own progress bars (loading, writing shards) and its load reports (a coloured table
    on every load), then restore both: :func:`load_hf` says what matters once, in plain text."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if enabled:
            hf_logging.enable_progress_bar()


#: folders whose new classification head was already reported (a run loads the same folder for each model)
_REPORTED: set[tuple[str, tuple[str, ...]]] = set()


def _content_tokenizer(hf_tokenizer: Any, max_tokens: int) -> tuple[Tokenizer, list[int], list[int]]:
    """A ``tokenizers.Tokenizer`` giving a text's own tokens (no special tokens, no padding, truncated
    so that the whole sequence fits ``max_tokens``) and the special-token prefix and suffix."""
    tok = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())
    tok.no_padding()
    tok.no_truncation()
    probe = "a b 1"
    full, plain = tok.encode(probe).ids, tok.encode(probe, add_special_tokens=False).ids
    start = next((i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain), None)
    if not plain or start is None:
        raise ModelError("the tokenizer's special tokens are not a fixed prefix and suffix of the text's tokens")
    prefix, suffix = full[:start], full[start + len(plain) :]
    tok.post_processor = None
    room = max_tokens - len(prefix) - len(suffix)
    if room < 1:
        raise ModelError(f"a sequence of {max_tokens} tokens leaves no room for text after the special tokens")
    tok.enable_truncation(room)
    special = set(getattr(hf_tokenizer, "all_special_ids", []) or [])
    if 0 not in special and 0 not in prefix + suffix:
        raise ModelError(
            f"token id 0 of this tokenizer is the ordinary token {tok.id_to_token(0)!r}, but robustkit's packed "
            "text inputs use id 0 for padding: use a model whose id 0 is a special token ([PAD], <s>, <unk>)"
        )
    return tok, prefix, suffix


class HFTextClassifier(nn.Module):
    """A Hugging Face sequence classifier taking robustkit's packed text input ``(N, L, 1 + D)``.

    Attributes:
        hf: the ``PreTrainedModel`` (its logits are returned).
        hf_tokenizer: its fast tokenizer (saved with the model).
        tokenizer: the ``tokenizers.Tokenizer`` the text domain encodes with (text tokens only).
        dim: ``D``, the size of the input embeddings.
    """

    def __init__(self, model: nn.Module, hf_tokenizer: Any, max_tokens: int = MAX_TOKENS) -> None:
        super().__init__()
        self.hf: Any = model  # a transformers PreTrainedModel
        self.hf_tokenizer = hf_tokenizer
        #: whether the model reads normalised text (its spec's ``normalise``): its attacks normalise too
        self.normalise = False
        limits = [max_tokens, getattr(hf_tokenizer, "model_max_length", max_tokens)]
        limits.append(getattr(getattr(model, "config", None), "max_position_embeddings", max_tokens))
        limit = min(int(v) for v in limits if isinstance(v, int | float) and v > 0)
        self.tokenizer, self.prefix, self.suffix = _content_tokenizer(hf_tokenizer, limit)
        self.dim = int(self.embedding.weight.shape[1])
        pad = getattr(hf_tokenizer, "pad_token_id", None)
        self.pad_id = int(pad) if pad is not None else 0
        self.left_padding = getattr(hf_tokenizer, "padding_side", "right") == "left"

    @property
    def embedding(self) -> nn.Embedding:
        """The model's input embeddings (the table HotFlip scores use), not a separate copy."""
        table = self.hf.get_input_embeddings()
        assert isinstance(table, nn.Embedding)
        return table

    def sequences(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Full token ids (special tokens added), the offsets at their positions, and the attention mask."""
        n, length_in = x.shape[0], x.shape[1]
        device = x.device
        if length_in == 0:
            x = x.new_zeros(n, 1, x.shape[2])
            length_in = 1
        ids = x[..., 0].round().long().clamp(0, self.embedding.num_embeddings - 1)
        pos = torch.arange(length_in, device=device)
        lengths = torch.where(ids != 0, pos + 1, 0).amax(dim=1)  # last token that is not padding
        p, s = len(self.prefix), len(self.suffix)
        totals = lengths + p + s
        width = int(totals.max()) if n else p + s
        t = torch.arange(width, device=device).unsqueeze(0)
        k = t - (width - totals).unsqueeze(1) if self.left_padding else t.expand(n, width)
        valid = (k >= 0) & (k < totals.unsqueeze(1))
        c = k - p
        in_text = valid & (c >= 0) & (c < lengths.unsqueeze(1))
        src = c.clamp(0, length_in - 1)
        full = torch.where(in_text, ids.gather(1, src), torch.full_like(src, self.pad_id))
        if p:
            prefix = torch.tensor(self.prefix, device=device)
            full = torch.where(valid & (k < p), prefix[k.clamp(0, p - 1)], full)
        if s:
            suffix = torch.tensor(self.suffix, device=device)
            after = c - lengths.unsqueeze(1)
            full = torch.where(valid & (after >= 0), suffix[after.clamp(0, s - 1)], full)
        offsets = x[..., 1:].gather(1, src.unsqueeze(-1).expand(-1, -1, x.shape[2] - 1))
        return full, offsets * in_text.unsqueeze(-1).to(x.dtype), valid.long()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.dim + 1:
            raise ValueError(
                f"this Hugging Face model takes (N, L, {self.dim + 1}) inputs, got {tuple(x.shape)}: tokenize with "
                "its own tokenizer (text option model: hf:DIR)"
            )
        ids, offsets, mask = self.sequences(x)
        table = self.embedding
        scale = table.weight.detach().norm(dim=1).mean()
        embeds = table(ids) + (scale * offsets).to(table.weight.dtype)
        out = self.hf(inputs_embeds=embeds, attention_mask=mask)
        logits: torch.Tensor = out.logits if hasattr(out, "logits") else out[0]
        return logits


def _load_error(folder: Path, exc: BaseException) -> ModelError:
    """What went wrong loading a Hugging Face folder, and what to do: a damaged file, or a broken install."""
    first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, ImportError) or "Failed to import" in first or "operator torchvision" in first:
        return ModelError(
            f"transformers cannot import its model classes ({first}): the Python environment is broken, most "
            f"often a torchvision built for another torch (this is torch {torch.__version__}); install the "
            "torchvision that matches torch, or uninstall torchvision"
        )
    return ModelError(f"cannot load the Hugging Face model in {folder}: {first}")


def load_hf(path: str | Path, num_labels: int | None = None, max_tokens: int = MAX_TOKENS) -> HFTextClassifier:
    """The sequence classifier and fast tokenizer in the local folder ``path``, wrapped.

    ``num_labels``: give the model this many labels (a new, randomly initialised head where the
    folder's has another size or none, as for a bare encoder: the start of fine-tuning); None keeps
    the folder's head, and a folder without a trained head is refused (its outputs would be noise).

    Example (a folder written by ``save_pretrained``; tests/test_text_hf.py builds a tiny one)::

        from domains.text.model import encode_ids, pad_inputs
        model = load_hf("models/minilm", num_labels=2)
        logits = model(pad_inputs(encode_ids(model.tokenizer, ["WIN cash now"]), model.dim))
    """
    folder = check_folder(path)
    extra: dict[str, Any] = {"output_loading_info": True}
    if num_labels is not None:
        extra.update(num_labels=num_labels, ignore_mismatched_sizes=True)
    try:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        with _quiet():
            model, info = AutoModelForSequenceClassification.from_pretrained(str(folder), **{**_SAFE_LOAD, **extra})
        tokenizer = AutoTokenizer.from_pretrained(
            str(folder), use_fast=True, trust_remote_code=False, local_files_only=True
        )
    except (OSError, ValueError, KeyError, TypeError, ImportError, RuntimeError, SafetensorError) as exc:
        raise _load_error(folder, exc) from None
    missing = sorted(info.get("missing_keys", []) or [])
    if num_labels is None and missing:
        raise ModelError(
            f"{folder} lacks trained weights for {', '.join(missing[:4])}: a bare encoder needs fine-tuning first "
            "(harden with options.model: hf:DIR)"
        )
    if missing and (str(folder), tuple(missing)) not in _REPORTED:
        _REPORTED.add((str(folder), tuple(missing)))
        log.info("%s: %s newly initialised for %d labels (fine-tuning trains them)", folder,
                 ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else ""), num_labels)
    if not getattr(tokenizer, "is_fast", False) or not hasattr(tokenizer, "backend_tokenizer"):
        raise ModelError(f"{folder} has no fast tokenizer (tokenizer.json): save one with tokenizer.save_pretrained")
    return HFTextClassifier(model.float(), tokenizer, max_tokens)


def tokenizer_and_dim(path: str | Path, max_tokens: int = MAX_TOKENS) -> tuple[Tokenizer, int]:
    """The domain tokenizer and embedding size of the model in ``path`` without reading its weights."""
    folder = check_folder(path)
    try:
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=False, local_files_only=True)
        with torch.device("meta"):
            skeleton = AutoModelForSequenceClassification.from_config(config, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(
            str(folder), use_fast=True, trust_remote_code=False, local_files_only=True
        )
    except (OSError, ValueError, KeyError, TypeError, ImportError, RuntimeError) as exc:
        raise _load_error(folder, exc) from None
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"{folder} has no fast tokenizer (tokenizer.json): save one with tokenizer.save_pretrained")
    wrapped = HFTextClassifier(skeleton, tokenizer, max_tokens)
    return wrapped.tokenizer, wrapped.dim


def save_hf(model: HFTextClassifier, directory: Path, meta: dict[str, Any]) -> None:
    """Write the model (safetensors + config), its tokenizer files and robustkit's ``model.json``."""
    directory.mkdir(parents=True, exist_ok=True)
    save = model.hf.save_pretrained
    safe = {"safe_serialization": True} if "safe_serialization" in inspect.signature(save).parameters else {}
    with _quiet():
        save(str(directory), **safe)
    model.hf_tokenizer.save_pretrained(str(directory))
    if not any((directory / name).is_file() for name in SAFE_WEIGHTS):
        raise ModelError(f"transformers did not write safetensors weights into {directory}")
    (directory / "model.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")


def load_saved(directory: Path, domain: str) -> tuple[HFTextClassifier, dict[str, Any]]:
    """A model written by :func:`save_hf` (or a plain Hugging Face folder: no threshold) and its metadata."""
    meta: dict[str, Any] = {"domain": domain, "spec": {"kind": "hf", "path": str(directory)}, "threshold": None}
    if (directory / "model.json").is_file():
        meta = _read_json(directory / "model.json")
        if meta.get("domain") != domain:
            raise ConfigError(f"{directory} holds a {meta.get('domain')!r} model, not a {domain!r} one")
    model = load_hf(directory)
    labels = getattr(model.hf.config, "num_labels", None)
    if labels != 2:
        raise ModelError(f"the model in {directory} has {labels} labels: the text domain needs 2 (ham 0, spam 1)")
    meta.setdefault("spec", {}).update(kind="hf", dim=model.dim, classes=2)
    return model, meta
