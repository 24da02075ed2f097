"""The text spam domain: spam filters hardened against the obfuscations spammers use.

* Data: ``demo`` (a generated spam/ham corpus, see :mod:`domains.text.data`; ``demo:N`` for N
  messages), ``sms:PATH`` (the UCI SMS Spam Collection; plain ``sms`` reads
  ``$ROBUSTKIT_DATA/sms_spam_collection/SMSSpamCollection``), and ``csv:PATH``, ``tsv:PATH``,
  ``json:PATH`` (array or JSON lines), ``parquet:PATH`` with options ``text_column`` (default ``text``),
  ``label_column`` (default ``label``, or ``--target``) and ``label_names`` (default ``[ham, spam]``;
  0/1 always work). Files are deduplicated before a stratified 60/20/20 split (the run's dataset note
  says how many repeats were dropped); empty texts are dropped with a counted warning; an unknown label
  or bytes that are not UTF-8 are a :class:`~robustkit.errors.DataError`; texts longer than the
  model reads are truncated with a counted warning.
* Model: a WordPiece tokenizer trained on the training texts and a small embeddings + CNN classifier
  whose input is ``(N, L, 1 + D)``: token ids and an embedding offset (:mod:`domains.text.model`).
  ``--model hf:DIR`` (option ``model: hf:DIR``) fine-tunes a local Hugging Face classifier instead, with
  its own tokenizer, through the same input (:mod:`domains.text.hf`: safetensors only, no custom code;
  learning rate 3e-5 unless ``--lr``). To add adversarial training to your own ``transformers.Trainer``
  script instead, see :mod:`domains.text.hf_trainer`.
* Training threat: a per-token L2 ball on the embeddings (option ``embedding_eps``, default 0.1 of
  the mean embedding norm). A training device only: never reported as robustness.
* Evaluation threat: :class:`~domains.text.obfuscation.ObfuscationSpace` over real strings; the budget
  is the number of edited words; only spam is attacked, towards ham. Option ``attack_tricks`` limits
  the tricks (e.g. ``[leet, insert, swap, delete]``: an attacker adapting to the normaliser); option
  ``max_edited_share`` (in (0, 1]) also caps the edits at that share of each text's words, at least one.
* Hardening (default ``--method discrete``): spam obfuscated against the current model every epoch, as
  training data; measured on the demo corpus it keeps 100% spam recall under attack where the
  embedding-ball ``pgd`` keeps 81% (``robustkit harden text``, seed 0).
* Defence: option ``normalise: true`` puts :func:`~domains.text.normalise.normalise` (homoglyphs,
  invisible characters and separator tricks undone) in front of the model for every text it reads, in
  training, evaluation and attacks; the model's spec records it. ``--method random-edits`` is the
  control of ``discrete`` (:mod:`domains.text.adversarial`).

Example:
    >>> from domains.text import TextDomain, TextOptions
    >>> data = TextDomain().load_data("demo:200", seed=0, options=TextOptions())
    >>> len(data.train), len(data.val), len(data.test)
    (120, 40, 40)
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from tokenizers import Tokenizer
from torch import nn
from torch.utils.data import DataLoader, Dataset

from robustkit import ConfigError, ContinuousSpace, DataError, DatasetInfo, DiscreteSearch, Domain, DomainData
from robustkit.domain import Assessment, Examples
from robustkit.evaluation.binary import threshold_at_fpr
from robustkit.models import ThresholdModel, frozen_eval, logits_of, model_device
from robustkit.rendering import render
from robustkit.spaces import PerturbationSpace
from robustkit.training.methods import Method

from . import hf
from .adversarial import METHODS as TRAINING_METHODS
from .adversarial import make_method
from .data import TextSource, read_source, stratified_split, truncation_note
from .model import MAX_TOKENS, TextCNN, TokenHead, TokenL2Ball, TokenModel, encode_ids, pad_inputs, train_tokenizer
from .normalise import normalise, normalise_aligned
from .obfuscation import ObfuscationSpace, edit_cost, fold, words
from .options import TextOptions

__all__ = ["ObfuscationSpace", "RobustSpamClassifier", "TextCNN", "TextDataset", "TextDomain", "TextOptions",
           "TokenL2Ball"]


def __getattr__(name: str) -> Any:
    """``RobustSpamClassifier`` is imported on first use: it is built on :class:`TextDomain`, defined here."""
    if name == "RobustSpamClassifier":
        from .estimator import RobustSpamClassifier

        return RobustSpamClassifier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

#: default learning rate for fine-tuning a pretrained Hugging Face model (the usual BERT fine-tuning rate)
HF_LR = 3e-5
#: key of the trained tokenizer (JSON) in a text model's spec, in memory only: saved as tokenizer.json
TOKENIZER_KEY = "tokenizer"


class TextDataset(Dataset[Any]):
    """Texts and labels of one split. ``as_text``: items are (string, label), else (token ids, label);
    with ``weights`` (per-example loss weights, scikit-learn's ``sample_weight``) each item ends with its weight."""

    def __init__(
        self,
        texts: Sequence[str],
        labels: Sequence[int],
        tokenizer: Tokenizer,
        dim: int,
        as_text: bool = False,
        normaliser: Callable[[str], str] | None = None,
        weights: Sequence[float] | None = None,
    ) -> None:
        self.texts, self.labels = list(texts), list(labels)
        self.weights = None if weights is None else list(weights)
        self.tokenizer, self.dim, self.as_text = tokenizer, dim, as_text
        seen = self.texts if normaliser is None else [normaliser(t) for t in self.texts]  # what the model reads
        self.ids = encode_ids(tokenizer, seen)
        self.truncated = sum(len(e.overflowing) > 0 for e in tokenizer.encode_batch(seen))

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        item = (self.texts[i] if self.as_text else self.ids[i]), self.labels[i]
        return item if self.weights is None else (*item, self.weights[i])

    def collate(self, items: list[tuple[Any, ...]]) -> tuple[Any, ...]:
        """Strings stay strings; token ids are padded to the batch's longest text (dynamic padding)."""
        xs, ys = [i[0] for i in items], torch.tensor([i[1] for i in items], dtype=torch.long)
        batch = (list(xs) if self.as_text else pad_inputs(xs, self.dim)), ys
        return batch if self.weights is None else (*batch, torch.tensor([i[2] for i in items], dtype=torch.float32))

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return pad_inputs(self.ids, self.dim), torch.tensor(self.labels, dtype=torch.long)


#: options of table files (csv, tsv, json, parquet), which the demo and SMS data do not read
FILE_OPTIONS = ("text_column", "label_column", "label_names", "target")
#: texts of each class a file needs at least, so that the 60/20/20 split gives every part both classes
MIN_PER_CLASS = 5

#: default budget on the built-in demo corpus, whose generated spam is long
DEMO_BUDGET = 6.0


class TextDomain(Domain[TextOptions]):
    """Spam (class 1) versus ham; spam is attacked with obfuscations towards ham."""

    name = "text"
    default_data = "demo"
    #: edited words of the obfuscation attack (the demo corpus: DEMO_BUDGET)
    default_budget = 3.0
    default_method = "discrete"
    default_epochs = 6
    default_batch_size = 32
    default_lr = 3e-3
    #: the domain's own training methods (``--method discrete``): see :meth:`training_method`
    methods = tuple(TRAINING_METHODS)
    Options = TextOptions

    #: class names in files and reports
    class_names: ClassVar[list[str]] = ["ham", "spam"]

    # ----------------------------------------------------------------- data
    def load_data(self, spec: str, seed: int, options: TextOptions) -> DomainData:
        kind = spec.partition(":")[0]
        wrong = [k for k in FILE_OPTIONS if k in options.given and kind in ("demo", "sms")]
        if wrong:
            raise ConfigError(f"options.{wrong[0]} applies to csv, tsv, json and parquet files, not {spec!r}")
        source = read_source(spec, seed, options)
        if len(set(source.labels)) < 2:
            raise DataError(f"{spec}: the data holds only one class; spam and ham are both needed")
        counts = [source.labels.count(c) for c in (0, 1)]
        if min(counts) < MIN_PER_CLASS:
            raise DataError(
                f"{spec}: too few texts ({counts[0]} ham and {counts[1]} spam after removing repeats): the "
                f"train/validation/test split needs at least {MIN_PER_CLASS} of each"
            )
        return self.data_from(source, seed, options)

    def parse_options(self, values: Any) -> TextOptions:
        if isinstance(values, dict) and "positive_label" in values:
            raise ConfigError("text data names both classes: set options.label_names to [HAM, SPAM] (e.g. "
                              "[ok, junk]) instead of --positive-label")
        return super().parse_options(values)

    def data_from(
        self, source: TextSource, seed: int, options: TextOptions, fractions: tuple[float, float] = (0.6, 0.2),
        sample_weight: Sequence[float] | None = None,
    ) -> DomainData:
        """Split ``source`` (stratified by ``fractions`` for train and validation, the rest for test),
        train the tokenizer on the training texts (or take a Hugging Face model's) and build the datasets;
        ``sample_weight`` (one per text) weights the training texts' loss.

        ``raw`` holds the tokenizer, the embedding size and the options: everything later calls need
        about the data (the domain itself keeps nothing)."""
        dim = options.dim
        texts, labels, name, sha = source.texts, source.labels, source.name, source.sha256
        notes = list(source.notes)
        tr, va, te = stratified_split(labels, seed, fractions)
        folder = options.hf_folder()
        read = normalise if options.normalise else _as_is
        if folder is not None:  # a Hugging Face model: its own tokenizer and embedding size
            tokenizer, dim = hf.tokenizer_and_dim(folder)
        else:
            vocab = options.vocab_size or source.vocab_size
            tokenizer = train_tokenizer([read(texts[i]) for i in tr], vocab_size=vocab)

        def part(idx: list[int], as_text: bool = False, weighted: bool = False) -> TextDataset:
            texts_, labels_ = [texts[i] for i in idx], [labels[i] for i in idx]
            weights = [float(sample_weight[i]) for i in idx] if weighted and sample_weight is not None else None
            return TextDataset(texts_, labels_, tokenizer, dim, as_text, normaliser=read, weights=weights)

        train, val, test = part(tr, weighted=True), part(va), part(te, as_text=True)
        limit = (tokenizer.truncation or {}).get("max_length", MAX_TOKENS)
        truncated = truncation_note(train.truncated + val.truncated + test.truncated, limit)
        notes += [truncated] if truncated else []
        split = f"{len(tr)}/{len(va)}/{len(te)} stratified with seed {seed}; {'; '.join(notes)}"
        info = DatasetInfo(name, sha, split, n_classes=2, class_names=list(self.class_names))
        raw = {"tokenizer": tokenizer, "dim": dim, "target_fpr": options.target_fpr, "options": options}
        return DomainData(train, val, test, info, raw)

    def default_budget_for(self, spec: str, options: TextOptions | None = None) -> float:
        """6 edited words on the built-in demo corpus (its spam is long and repeats its cues: at 3 words a
        standard filter keeps almost all of it), else ``default_budget`` (3: an SMS is short)."""
        return DEMO_BUDGET if spec.split(":")[0] == "demo" else self.default_budget

    def default_lr_for(self, spec: str, options: TextOptions | None = None) -> float:
        """3e-5 for fine-tuning a Hugging Face model (``model: hf:DIR``), else ``default_lr`` (the CNN's)."""
        return HF_LR if options is not None and options.hf_folder() is not None else self.default_lr

    def loader(self, dataset: Dataset[Any], batch_size: int, shuffle: bool) -> DataLoader[Any]:
        collate = dataset.collate if isinstance(dataset, TextDataset) else None
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate)

    # ----------------------------------------------------------------- model
    def model_spec(self, data: DomainData, options: TextOptions) -> dict[str, Any]:
        source = options.hf_folder()
        # a model trained on normalised text says so: evaluate and attack normalise for it too
        extra = {"normalise": True} if options.normalise else {}
        if source is not None:
            return {"kind": "hf", "path": str(source.resolve()), "dim": data.raw["dim"], "classes": 2, **extra}
        tokenizer: Tokenizer = data.raw["tokenizer"]
        return {
            "vocab_size": tokenizer.get_vocab_size(),
            "dim": data.raw["dim"],
            "channels": options.channels,
            "kernel": 3,
            "classes": 2,
            **extra,
            # the vocabulary is part of the model: save_model writes it as tokenizer.json, not into model.json
            TOKENIZER_KEY: tokenizer.to_str(),
        }

    def model_arguments(self, data: DomainData) -> dict[str, Any]:
        raise ConfigError(
            "text takes your own model as a local Hugging Face folder (--model hf:DIR), not --model-factory"
        )

    def build_model(self, spec: dict[str, Any], head: nn.Module | None = None) -> nn.Module:
        """The model ``spec`` describes: the built-in :class:`TextCNN`, a Hugging Face model, or with
        ``head`` the spec's embedding table in front of it (:class:`~domains.text.model.TokenHead`)."""
        if spec.get("kind") == "hf":  # fine-tune the pretrained model, with a 2-label head
            pretrained = hf.load_hf(str(spec.get("path", "")), num_labels=int(spec.get("classes", 2)))
            pretrained.normalise = bool(spec.get("normalise", False))
            return pretrained
        try:
            vocab, dim = int(spec["vocab_size"]), int(spec["dim"])
            model: TokenModel = TokenHead(vocab, dim, head) if head is not None else TextCNN(
                vocab, dim, int(spec.get("channels", 64)), int(spec.get("kernel", 3)), int(spec.get("classes", 2)))
        except (KeyError, TypeError, ValueError) as exc:
            shown = {k: v for k, v in spec.items() if k != TOKENIZER_KEY}
            raise ConfigError(f"text model spec {shown!r} is incomplete or invalid ({exc})") from None
        if spec.get(TOKENIZER_KEY):
            model.tokenizer = Tokenizer.from_str(spec[TOKENIZER_KEY])
        model.normalise = bool(spec.get("normalise", False))
        return model

    # ----------------------------------------------------------------- threat model
    def space(self, budget: float, data: DomainData) -> ContinuousSpace:
        eps = _options_of(data).embedding_eps
        return TokenL2Ball(eps=eps, dim=int(data.raw["dim"]))

    def eval_space(self, budget: float, data: DomainData, model: nn.Module | None = None) -> PerturbationSpace:
        """The obfuscation space over real strings, bound to ``model`` when given: its own tokenizer,
        embedding size and table (HotFlip scores) and its normaliser (option ``normalise``, else what the
        model's spec says), so every attack on one model, the first included, searches the same way."""
        options = _options_of(data)
        core = model.model if isinstance(model, ThresholdModel) else model
        tokenizer = getattr(core, "tokenizer", None)
        table = getattr(getattr(core, "embedding", None), "weight", None)
        on = options.normalise if "normalise" in options.given else bool(getattr(core, "normalise", False))
        return ObfuscationSpace(
            tokenizer if isinstance(tokenizer, Tokenizer) else data.raw["tokenizer"],
            int(getattr(core, "dim", data.raw["dim"])), budget,
            embedding=table if isinstance(table, torch.Tensor) else None, tricks=options.attack_tricks,
            normaliser=normalise_aligned if on else None, max_share=options.max_edited_share,
        )

    def training_method(self, name: str, data: DomainData, budget: float) -> Method:
        """``discrete`` (adversarial training on obfuscated spam searched against the current model, see
        :mod:`domains.text.adversarial`) or ``random-edits`` (the control: random edits, same budget)."""
        space = self.eval_space(budget, data)
        assert isinstance(space, ObfuscationSpace)
        return make_method(name, data.train, space)  # type: ignore[arg-type]

    def eval_budgets(self, budget: float) -> list[float]:
        return sorted({float(max(1, round(budget * f))) for f in (1 / 3, 2 / 3, 1.0)} | {float(budget)})

    def attackable(self, x: Any, y: torch.Tensor) -> torch.Tensor | None:
        return y == 1

    # ----------------------------------------------------------------- decision rule
    def choose_threshold(self, model: nn.Module, data: DomainData) -> float | None:
        x, y = data.val.tensors()  # type: ignore[attr-defined]
        return threshold_at_fpr(_spam_scores(model, x)[y == 0], data.raw.get("target_fpr", 0.01))

    # ----------------------------------------------------------------- metrics and examples
    def assess(self, model: nn.Module, data: DomainData, report: Any) -> Assessment:
        return Assessment(self._edit_figures(model, data, report))

    def _edit_figures(self, model: nn.Module, data: DomainData, report: Any) -> dict[str, Any]:
        """Words edited by the evaluated search where it succeeded.

        The search is re-run with the report's settings on the spam the model detects on clean input
        (spam it already misses needs no edit and is not an attack's success), each text with the
        random stream of its test position, so the successes are those of the evaluation.
        """
        test: TextDataset = data.test  # type: ignore[assignment]
        space = self.eval_space(float(report.threat.get("budget", self.default_budget)), data, model)
        assert isinstance(space, ObfuscationSpace)
        spam = [t for t, label in zip(test.texts, test.labels, strict=True) if label == 1]
        if not spam:
            return {"words_edited_share": 0.0, "words_edited": 0.0}
        detected = ((report.outcomes["label"] == 1) & report.outcomes["clean_correct"]).nonzero().squeeze(1)
        settings: dict[str, Any] = next((c for c in report.attacks.values() if "candidates_per_step" in c), {})
        search = DiscreteSearch(space, candidates_per_step=int(settings.get("candidates_per_step", 8)),
                                max_steps=settings.get("max_steps"), restarts=int(settings.get("restarts", 1)),
                                random_share=float(settings.get("random_share", 0.0)),
                                seed=int(settings.get("seed", 0)))
        texts = [test.texts[int(i)] for i in detected]
        adv: list[str] = []
        orig: list[str] = []
        if texts:
            with frozen_eval(model):
                result = search(model, texts, torch.ones(len(texts), dtype=torch.long), ids=detected)
            won = result.success.tolist()
            adv = [a for a, w in zip(result.x_adv, won, strict=True) if w]
            orig = [t for t, w in zip(texts, won, strict=True) if w]
        shares = space.edited_share(adv, orig)
        counts = [edit_cost(o_, a) for a, o_ in zip(adv, orig, strict=True)]
        return {
            "words_edited_share": sum(shares) / len(shares) if shares else 0.0,
            "words_edited": sum(counts) / len(counts) if counts else 0.0,
            "words_per_text": sum(len(words(s)) for s in spam) / len(spam),
        }

    def write_examples(self, directory: Path, examples: Examples, data: DomainData) -> list[Path]:
        directory.mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(len(examples)):
            orig, adv = examples.x[i], examples.x_adv[i]
            rows.append(
                {
                    "label": self.class_names[int(examples.y[i])],
                    "pred_clean": self.class_names[int(examples.pred_clean[i])],
                    "pred_adversarial": self.class_names[int(examples.pred_adv[i])],
                    "success": bool(examples.success[i]),
                    "words_edited": edit_cost(orig, adv),
                    "original": orig,
                    "adversarial": adv,
                }
            )
        csv_path = directory / "examples.csv"
        with csv_path.open("w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["original", "adversarial"])
            writer.writeheader()
            writer.writerows(rows)
        html_path = directory / "examples.html"
        html_path.write_text(render("examples_page.html.j2", __name__, rows=_with_words(rows)), encoding="utf-8")
        return [csv_path, html_path]

    def examples_html(self, directory: Path) -> str:
        """Up to 20 of the texts the attack edited, original and adversarial, edited words highlighted."""
        path = directory / "examples.csv"
        if not path.is_file():
            return ""
        with path.open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        edited = [r for r in rows if r["original"] != r["adversarial"]]
        return render("examples.html.j2", __name__, n_edited=len(edited), n_rows=len(rows),
                      rows=_with_words(edited[:20]))

    # ----------------------------------------------------------------- persistence
    def save_model(
        self, model: nn.Module, directory: Path, spec: dict[str, Any], threshold: float | None = None
    ) -> None:
        if isinstance(model, hf.HFTextClassifier):  # save_pretrained (safetensors) + tokenizer files + model.json
            hf.save_hf(model, directory, {"domain": self.name, "spec": spec, "threshold": threshold})
            return
        tokenizer = getattr(model, "tokenizer", None)
        if not isinstance(tokenizer, Tokenizer):
            raise ConfigError("the text model has no tokenizer to save with it")
        super().save_model(model, directory, {k: v for k, v in spec.items() if k != TOKENIZER_KEY}, threshold)
        tokenizer.save(str(directory / "tokenizer.json"))

    def load_model(self, directory: str | Path, factory: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
        path = Path(directory)
        for sub in ("hardened", "evaluated"):
            if (path / "models" / sub / "model.json").is_file():
                path = path / "models" / sub
                break
        if hf.is_hf_folder(path):  # a fine-tuned Hugging Face model, or a plain Hugging Face folder
            pretrained, meta = hf.load_saved(path, self.name)
            pretrained.normalise = bool(meta.get("spec", {}).get("normalise", False))
            return pretrained, meta
        model, meta = super().load_model(directory, factory)
        tok_file = path / "tokenizer.json"
        if not tok_file.is_file():
            raise ConfigError(f"{path} has no tokenizer.json: a text model needs the tokenizer it was trained with")
        try:
            tokenizer = Tokenizer.from_file(str(tok_file))
        except Exception as exc:  # the tokenizers library raises bare Exceptions for files it cannot read
            raise ConfigError(f"{tok_file} is not a tokenizer file the tokenizers library can read "
                              f"({_first_line(exc)}): save the model again") from None
        if tokenizer.get_vocab_size() != int(meta["spec"]["vocab_size"]):
            raise ConfigError(
                f"the tokenizer in {path} has {tokenizer.get_vocab_size()} tokens but the model "
                f"{meta['spec']['vocab_size']}: they do not belong together"
            )
        model.tokenizer = tokenizer  # type: ignore[assignment]
        return model, meta


def _options_of(data: DomainData) -> TextOptions:
    """The options the data was read with (:meth:`TextDomain.data_from` keeps them in ``raw``)."""
    options = data.raw.get("options")
    return options if isinstance(options, TextOptions) else TextOptions()


def _as_is(text: str) -> str:
    return text


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


def _spam_scores(model: nn.Module, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """P(spam) of token-id rows ``x`` (on the CPU) from a model on any device, returned on the CPU."""
    device = model_device(model)
    with frozen_eval(model), torch.no_grad():
        parts = [torch.softmax(logits_of(model(x[i : i + batch].to(device))), dim=1)[:, 1].cpu()
                 for i in range(0, len(x), batch)]
    return torch.cat(parts) if parts else torch.zeros(0)


def _with_words(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Example rows with the adversarial text's words for ``pairs.html.j2``: each word's pieces around
    invisible characters, and its folded form where the original does not have it (an edit, marked)."""
    out = []
    for r in rows:
        original = set(words(r["original"]))
        edits = [{"pieces": w.split("\u200b"), "folded": None if w in original or not w else fold(w)}
                 for w in r["adversarial"].split(" ")]
        out.append({**r, "words": edits})
    return out
